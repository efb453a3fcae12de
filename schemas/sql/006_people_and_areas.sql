-- People and counting areas. A camera's counting area (CountingArea as JSON: include/exclude polygons, a
-- minimum face size) says which faces count; each face row says why it was ignored ('' = it counts) and
-- which person it was associated with across the camera's ticks. Rows written before count, with no person.
ALTER TABLE cameras ADD COLUMN IF NOT EXISTS area String DEFAULT '{}' AFTER rules;

ALTER TABLE detections
    ADD COLUMN IF NOT EXISTS ignored LowCardinality(String) DEFAULT '' AFTER classifier_model,
    ADD COLUMN IF NOT EXISTS person_id String DEFAULT '' AFTER ignored;

-- The view's columns were fixed when it was made: made again so it has the new ones.
CREATE OR REPLACE VIEW current_detections AS
SELECT * FROM detections FINAL
WHERE scheduled_at >= {since:DateTime64(3, 'UTC')} AND scheduled_at < {until:DateTime64(3, 'UTC')}
  AND (processed_at = toDateTime64(0, 3, 'UTC')
       OR (camera_id, tick_id, processed_at) IN (
           SELECT camera_id, tick_id, processed_at FROM frames FINAL
           WHERE scheduled_at >= {since:DateTime64(3, 'UTC')} AND scheduled_at < {until:DateTime64(3, 'UTC')}));
