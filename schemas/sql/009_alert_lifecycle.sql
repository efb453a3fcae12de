-- Alerts have a life (maskwatch.schemas.events.AlertEvent, contract v2): each step is a row of
-- alert_events, and the alerts row of an alert is rewritten with its state (the newest row wins).
ALTER TABLE alerts
    ADD COLUMN IF NOT EXISTS status LowCardinality(String) DEFAULT 'open',
    ADD COLUMN IF NOT EXISTS people UInt32 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS severity LowCardinality(String) DEFAULT 'warning',
    ADD COLUMN IF NOT EXISTS updated_at Nullable(DateTime64(3, 'UTC'));

CREATE TABLE IF NOT EXISTS alert_events
(
    schema_version UInt16,
    event_id String,
    kind LowCardinality(String),
    alert_id String,
    at DateTime64(3, 'UTC'),
    camera_id LowCardinality(String),
    camera_name String,
    site LowCardinality(String),
    zone LowCardinality(String),
    scope LowCardinality(String),
    site_timezone LowCardinality(String),
    severity LowCardinality(String),
    rule String,                     -- JSON of RuleInfo
    window_start DateTime64(3, 'UTC'),
    window_end DateTime64(3, 'UTC'),
    people UInt32,
    nomask_faces UInt32,
    faces UInt32,
    frames UInt32,
    value Float64,
    threshold Float64,
    tick_ids Array(String),
    snapshot_url String,
    snapshot_expires_at Nullable(DateTime64(3, 'UTC')),
    acknowledged_by String,
    note String,
    message String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (alert_id, event_id)
TTL toDateTime(at) + INTERVAL {{ttl_days_alerts}} DAY;
