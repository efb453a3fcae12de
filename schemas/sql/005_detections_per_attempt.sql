-- A tick processed again (a replay after a crash, a live camera fetched anew) gets a new frame row, which
-- replaces the old one (frames FINAL keeps the newest processed_at), and its own faces, which may differ
-- in number. Each detection row now carries the processed_at of the frame row it belongs to, as part of
-- its key, so one attempt's faces never mix with another's. Rows written before carry 1970-01-01 and are
-- read as they were.
ALTER TABLE detections
    ADD COLUMN IF NOT EXISTS processed_at DateTime64(3, 'UTC') AFTER scheduled_at,
    MODIFY ORDER BY (camera_id, tick_id, face_index, processed_at);

-- The faces of each frame's current row, in [since, until) of scheduled_at: what the dashboard and the
-- checks read, and what an analyst should query instead of `detections FINAL`.
--   SELECT count() FROM current_detections(since = '2026-01-01 00:00:00', until = '2026-02-01 00:00:00')
CREATE VIEW IF NOT EXISTS current_detections AS
SELECT * FROM detections FINAL
WHERE scheduled_at >= {since:DateTime64(3, 'UTC')} AND scheduled_at < {until:DateTime64(3, 'UTC')}
  AND (processed_at = toDateTime64(0, 3, 'UTC')
       OR (camera_id, tick_id, processed_at) IN (
           SELECT camera_id, tick_id, processed_at FROM frames FINAL
           WHERE scheduled_at >= {since:DateTime64(3, 'UTC')} AND scheduled_at < {until:DateTime64(3, 'UTC')}));
