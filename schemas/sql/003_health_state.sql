-- Camera health state derived by the flow from consecutive failures (ok / degraded / down, thresholds in
-- MASKWATCH_FLOW_HEALTH_DEGRADED_AFTER / _DOWN_AFTER). Rows written before read as 'ok'.
ALTER TABLE camera_health ADD COLUMN IF NOT EXISTS state LowCardinality(String) DEFAULT 'ok' AFTER consecutive_failures;
