-- A camera's source URL (which may hold credentials) moves to a table of its own, so that a store user
-- can read and edit the registry without being able to read a single source: the dashboard's identity
-- (maskwatch.store.identities) may SELECT cameras but not camera_sources. Written by whoever sets a
-- source (CLI, YAML import, the dashboard when an operator types a new URL); read by the flow and ticker.
CREATE TABLE IF NOT EXISTS camera_sources
(
    id String,
    source_url String,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY id;

-- Existing cameras keep their sources (rerunning this finds nothing left to copy).
INSERT INTO camera_sources (id, source_url, updated_at)
SELECT id, argMax(source_url, updated_at), max(updated_at) FROM cameras
WHERE source_url != '' AND id NOT IN (SELECT id FROM camera_sources)
GROUP BY id;

-- Then the copies in cameras are blanked, so no reader of the registry finds a credential there.
ALTER TABLE cameras UPDATE source_url = '' WHERE source_url != '' SETTINGS mutations_sync = 2;
