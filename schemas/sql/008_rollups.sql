-- Compliance rollups per camera and hour, and per camera and day, kept far longer than the raw rows, so
-- trends outlive the frames' and faces' TTL. Filled by materialised views as frames and faces are
-- inserted; the dashboard reads them for ranges longer than two days. Frames are counted by distinct tick
-- (a tick processed again is counted once); its faces, inserted again, are added again: a crash replay
-- (a few seconds of ticks) can make a rollup's face counts slightly high, never low. Estimated people are
-- distinct person ids (faces stored before people were tracked have none and are not in the estimate).
CREATE TABLE IF NOT EXISTS compliance_hourly
(
    hour DateTime('UTC'),
    site LowCardinality(String),
    zone LowCardinality(String),
    camera_id LowCardinality(String),
    frames AggregateFunction(uniqExact, String),
    faces SimpleAggregateFunction(sum, UInt64),
    nomask_faces SimpleAggregateFunction(sum, UInt64),
    nomask_people AggregateFunction(uniq, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (camera_id, hour, site, zone)
TTL hour + INTERVAL {{ttl_days_rollup_hourly}} DAY;

CREATE TABLE IF NOT EXISTS compliance_daily
(
    day Date,
    site LowCardinality(String),
    zone LowCardinality(String),
    camera_id LowCardinality(String),
    frames AggregateFunction(uniqExact, String),
    faces SimpleAggregateFunction(sum, UInt64),
    nomask_faces SimpleAggregateFunction(sum, UInt64),
    nomask_people AggregateFunction(uniq, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYear(day)
ORDER BY (camera_id, day, site, zone)
TTL day + INTERVAL {{ttl_days_rollup_daily}} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS compliance_hourly_frames TO compliance_hourly AS
SELECT toStartOfHour(scheduled_at) AS hour, site, zone, camera_id,
       uniqExactStateIf(tick_id, status = 'ok') AS frames,
       toUInt64(sum(faces)) AS faces, toUInt64(sum(nomask_faces)) AS nomask_faces
FROM frames GROUP BY hour, site, zone, camera_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS compliance_hourly_people TO compliance_hourly AS
SELECT toStartOfHour(scheduled_at) AS hour, site, zone, camera_id,
       uniqStateIf(person_id, nomask AND ignored = '' AND person_id != '') AS nomask_people
FROM detections GROUP BY hour, site, zone, camera_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS compliance_daily_frames TO compliance_daily AS
SELECT toDate(scheduled_at) AS day, site, zone, camera_id,
       uniqExactStateIf(tick_id, status = 'ok') AS frames,
       toUInt64(sum(faces)) AS faces, toUInt64(sum(nomask_faces)) AS nomask_faces
FROM frames GROUP BY day, site, zone, camera_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS compliance_daily_people TO compliance_daily AS
SELECT toDate(scheduled_at) AS day, site, zone, camera_id,
       uniqStateIf(person_id, nomask AND ignored = '' AND person_id != '') AS nomask_people
FROM detections GROUP BY day, site, zone, camera_id;

-- What the store held before the views existed (rows inserted while this runs may be counted twice).
INSERT INTO compliance_hourly (hour, site, zone, camera_id, frames, faces, nomask_faces)
SELECT toStartOfHour(scheduled_at) AS hour, site, zone, camera_id, uniqExactStateIf(tick_id, status = 'ok'),
       toUInt64(sum(faces)), toUInt64(sum(nomask_faces))
FROM frames FINAL WHERE processed_at < now64(3) - INTERVAL 1 SECOND GROUP BY hour, site, zone, camera_id;

INSERT INTO compliance_daily (day, site, zone, camera_id, frames, faces, nomask_faces)
SELECT toDate(scheduled_at) AS day, site, zone, camera_id, uniqExactStateIf(tick_id, status = 'ok'),
       toUInt64(sum(faces)), toUInt64(sum(nomask_faces))
FROM frames FINAL WHERE processed_at < now64(3) - INTERVAL 1 SECOND GROUP BY day, site, zone, camera_id;
