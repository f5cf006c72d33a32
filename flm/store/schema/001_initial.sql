-- The first schema: APIs, their request logs and per-minute performance rollups.
CREATE TABLE apis (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    name                TEXT    NOT NULL UNIQUE,
    host                TEXT    NOT NULL,
    port                INTEGER NOT NULL UNIQUE,
    model               TEXT    NOT NULL,
    status              TEXT    NOT NULL,          -- running | stopped | error
    status_reason       TEXT,
    key_hash            TEXT    NOT NULL UNIQUE,   -- sha256 hex; the key itself is never stored
    key_prefix          TEXT    NOT NULL,
    max_concurrent      INTEGER NOT NULL,
    max_queue           INTEGER NOT NULL,
    queue_timeout_s     REAL    NOT NULL,
    upstream_timeout_s  REAL    NOT NULL,
    rate_limit_rpm      INTEGER,
    priority            INTEGER NOT NULL,
    allow_unknown_model INTEGER NOT NULL,
    created_at          TEXT    NOT NULL,
    updated_at          TEXT    NOT NULL,
    last_used_at        TEXT
);
-- list with ?status= ordered by id (keyset pagination)
CREATE INDEX apis_status_id ON apis (status, id);

-- No foreign key: deleting an API removes its rows in small batches, not one long transaction.
CREATE TABLE request_logs (
    id                INTEGER PRIMARY KEY,         -- increases in the order rows are recorded
    api_id            INTEGER NOT NULL,
    created_at        REAL    NOT NULL,            -- arrival, epoch seconds
    method            TEXT    NOT NULL,
    path              TEXT    NOT NULL,
    status            INTEGER NOT NULL,
    queue_ms          REAL,
    ttfb_ms           REAL,
    upstream_ms       REAL,
    response_ms       REAL,
    bytes_in          INTEGER NOT NULL,
    bytes_out         INTEGER NOT NULL,
    model             TEXT,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    request_id        TEXT,
    error             TEXT
);
-- logs page of one API, newest first: WHERE api_id = ? AND id < ? ORDER BY id DESC
CREATE INDEX request_logs_api_id ON request_logs (api_id, id);
-- the same filtered by status: WHERE api_id = ? AND status BETWEEN ? AND ? AND id < ?
CREATE INDEX request_logs_api_status ON request_logs (api_id, status, id);
-- retention by age
CREATE INDEX request_logs_created_at ON request_logs (created_at);

CREATE TABLE performance_metrics (
    api_id            INTEGER NOT NULL,
    bucket_start      INTEGER NOT NULL,            -- epoch seconds, minute-aligned
    request_count     INTEGER NOT NULL,
    error_count       INTEGER NOT NULL,
    sum_response_ms   REAL    NOT NULL,
    p95_response_ms   REAL,
    p95_ttfb_ms       REAL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    PRIMARY KEY (api_id, bucket_start)
) WITHOUT ROWID;
