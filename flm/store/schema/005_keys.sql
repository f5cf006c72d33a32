-- Several keys per API (issue 11). Each holds only the SHA-256 of its secret and a prefix;
-- during a rotation's grace period the previous secret's hash too (old_hash, until
-- grace_until). Times the gateway compares (expiry, grace) are epoch seconds.
CREATE TABLE api_keys (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    api_id               INTEGER NOT NULL REFERENCES apis (id) ON DELETE CASCADE,
    name                 TEXT    NOT NULL,
    key_hash             TEXT    NOT NULL UNIQUE,
    prefix               TEXT    NOT NULL,
    old_hash             TEXT    UNIQUE,
    grace_until          REAL,
    created_at           TEXT    NOT NULL,
    expires_at           REAL,
    revoked_at           TEXT,
    last_used_at         TEXT,
    rate_limit_rpm       INTEGER,
    tpm_limit            INTEGER,
    daily_token_budget   INTEGER,
    monthly_token_budget INTEGER,
    UNIQUE (api_id, name)
);
-- Every existing API keeps its key, as its key named 'default'.
INSERT INTO api_keys (api_id, name, key_hash, prefix, created_at, last_used_at)
    SELECT id, 'default', key_hash, key_prefix, created_at, last_used_at FROM apis ORDER BY id;
-- Usage per key per UTC day (day = epoch seconds // 86400): a rollup the log flush keeps,
-- so budgets survive restarts without scanning the logs.
CREATE TABLE key_usage (
    key_id   INTEGER NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    day      INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    tokens   INTEGER NOT NULL,
    PRIMARY KEY (key_id, day)
) WITHOUT ROWID;
-- Which key made a request; logs filter by key: WHERE key_id = ? AND id < ? ORDER BY id DESC
ALTER TABLE request_logs ADD COLUMN key_id INTEGER;
ALTER TABLE request_logs ADD COLUMN key_name TEXT;
CREATE INDEX request_logs_key ON request_logs (key_id, id)
