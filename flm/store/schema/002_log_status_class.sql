-- Logs filtered by status class ('5xx') or code, newest first, without a sort:
--   WHERE api_id = ? AND status / 100 = ? [AND status = ?] AND id < ? ORDER BY id DESC
-- It replaces (api_id, status, id), which served a single code but had to sort for a class.
DROP INDEX IF EXISTS request_logs_api_status;
CREATE INDEX request_logs_api_class ON request_logs (api_id, status / 100, id);
