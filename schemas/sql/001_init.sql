-- maskwatch initial schema. Applied by maskwatch.store.migrate() into the database named in the store URL.
-- {{ttl_days_*}} placeholders come from MASKWATCH_TTL_DAYS_<TABLE> (see maskwatch.store.TTL_DEFAULTS).
-- Replays are idempotent: every event table is a ReplacingMergeTree keyed by the event's deterministic id,
-- and partitioned by a time that is part of that event (never wall clock at insert), so a duplicate lands
-- in the same partition and merges away. Readers that must not see a duplicate before merge use FINAL.

CREATE TABLE IF NOT EXISTS cameras
(
    id String,
    name String,
    site LowCardinality(String),
    zone LowCardinality(String),
    source_url String,               -- may hold credentials: only the flow reads it
    display_url String,              -- redacted; what dashboards and listings show
    interval_s Float64,
    enabled Bool,
    rules String,                    -- JSON of RuleOverrides
    updated_at DateTime64(3, 'UTC'),
    deleted UInt8 DEFAULT 0          -- tombstone: removal is a newer row with deleted = 1
)
ENGINE = ReplacingMergeTree(updated_at, deleted)
ORDER BY id;

CREATE TABLE IF NOT EXISTS frames
(
    schema_version UInt16,
    camera_id LowCardinality(String),
    tick_id String,
    site LowCardinality(String),
    zone LowCardinality(String),
    scheduled_at DateTime64(3, 'UTC'),
    captured_at Nullable(DateTime64(3, 'UTC')),
    processed_at DateTime64(3, 'UTC'),
    status LowCardinality(String),
    width UInt32,
    height UInt32,
    faces UInt32,
    nomask_faces UInt32,
    detector_model LowCardinality(String),
    classifier_model LowCardinality(String),
    fetch_ms Float32,
    inference_ms Float32,
    snapshot_path String,
    error String
)
ENGINE = ReplacingMergeTree(processed_at)
PARTITION BY toYYYYMMDD(scheduled_at)
ORDER BY (camera_id, tick_id)
TTL toDateTime(scheduled_at) + INTERVAL {{ttl_days_frames}} DAY;

CREATE TABLE IF NOT EXISTS detections
(
    schema_version UInt16,
    camera_id LowCardinality(String),
    tick_id String,
    face_index UInt16,
    site LowCardinality(String),
    zone LowCardinality(String),
    scheduled_at DateTime64(3, 'UTC'),
    x1 Float32,
    y1 Float32,
    x2 Float32,
    y2 Float32,
    detection_score Float32,
    nomask_prob Float32,
    nomask Bool,
    detector_model LowCardinality(String),
    classifier_model LowCardinality(String)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(scheduled_at)
ORDER BY (camera_id, tick_id, face_index)
TTL toDateTime(scheduled_at) + INTERVAL {{ttl_days_detections}} DAY;

CREATE TABLE IF NOT EXISTS alerts
(
    schema_version UInt16,
    alert_id String,
    camera_id LowCardinality(String),
    site LowCardinality(String),
    zone LowCardinality(String),
    rule String,
    triggered_at DateTime64(3, 'UTC'),
    window_start DateTime64(3, 'UTC'),
    window_end DateTime64(3, 'UTC'),
    faces UInt32,
    nomask_faces UInt32,
    nomask_ratio Float32,
    tick_ids Array(String),
    snapshot_path String,
    message String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(triggered_at)
ORDER BY (camera_id, alert_id)
TTL toDateTime(triggered_at) + INTERVAL {{ttl_days_alerts}} DAY;

-- Acknowledgements are written by people (dashboard), separately from the flow's alert rows; the latest
-- row per alert wins. Join: alerts LEFT JOIN (SELECT * FROM alert_acks FINAL) USING alert_id.
CREATE TABLE IF NOT EXISTS alert_acks
(
    alert_id String,
    acknowledged Bool DEFAULT true,
    acknowledged_by String,
    acknowledged_at DateTime64(3, 'UTC'),
    note String
)
ENGINE = ReplacingMergeTree(acknowledged_at)
ORDER BY alert_id;

CREATE TABLE IF NOT EXISTS camera_health
(
    schema_version UInt16,
    camera_id LowCardinality(String),
    tick_id String,
    site LowCardinality(String),
    zone LowCardinality(String),
    scheduled_at DateTime64(3, 'UTC'),
    observed_at DateTime64(3, 'UTC'),
    status LowCardinality(String),
    latency_ms Float32,
    consecutive_failures UInt32,
    error String
)
ENGINE = ReplacingMergeTree(observed_at)
PARTITION BY toYYYYMMDD(scheduled_at)
ORDER BY (camera_id, tick_id)
TTL toDateTime(scheduled_at) + INTERVAL {{ttl_days_camera_health}} DAY;
