-- Camera health changes (maskwatch.schemas.events.CameraHealthEvent), also on the camera-health topic.
-- One row per change: a replay writes the same event_id again and the engine keeps one.
CREATE TABLE IF NOT EXISTS camera_health_events
(
    schema_version UInt16,
    event_id String,
    camera_id LowCardinality(String),
    camera_name String,
    site LowCardinality(String),
    zone LowCardinality(String),
    kind LowCardinality(String),
    state LowCardinality(String),
    previous_state LowCardinality(String),
    tick_id String,
    changed_at DateTime64(3, 'UTC'),
    consecutive_failures UInt32,
    status LowCardinality(String),
    error String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(changed_at)
ORDER BY (camera_id, changed_at, event_id)
TTL toDateTime(changed_at) + INTERVAL {{ttl_days_camera_health}} DAY;
