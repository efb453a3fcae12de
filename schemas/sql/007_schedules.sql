-- Schedules: when alerts may be raised. A site's timezone and schedule live in `sites` (Schedule as JSON);
-- a camera's own schedule in cameras.schedule. Cameras and sites written before are always open, in UTC.
CREATE TABLE IF NOT EXISTS sites
(
    id String,
    name String,
    timezone String,                 -- IANA name, e.g. Europe/Berlin
    schedule String,                 -- JSON of Schedule
    updated_at DateTime64(3, 'UTC'),
    deleted UInt8 DEFAULT 0
)
ENGINE = ReplacingMergeTree(updated_at, deleted)
ORDER BY id;

ALTER TABLE cameras ADD COLUMN IF NOT EXISTS schedule String DEFAULT '{}' AFTER area;
