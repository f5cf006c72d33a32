-- Several backends (issue 12). A backend is a model server; the one named 'default' is
-- written at start from --backend*, every other one through the admin API.
CREATE TABLE backends (
    name           TEXT    PRIMARY KEY,
    url            TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    max_concurrent INTEGER NOT NULL,
    weight         INTEGER NOT NULL DEFAULT 1,
    enabled        INTEGER NOT NULL DEFAULT 1,
    created_at     TEXT    NOT NULL,
    updated_at     TEXT    NOT NULL
);
-- An API may name its backends (a JSON list of names; NULL: every one with its model)
-- and keep a user on one backend (affinity 'user').
ALTER TABLE apis ADD COLUMN backends TEXT;
ALTER TABLE apis ADD COLUMN affinity TEXT;
-- Which backend served a request, after how many attempts.
ALTER TABLE request_logs ADD COLUMN backend TEXT;
ALTER TABLE request_logs ADD COLUMN attempts INTEGER
