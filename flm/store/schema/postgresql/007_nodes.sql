-- 007 on PostgreSQL: DOUBLE PRECISION epoch times (REAL is 4 bytes there), a BIGINT counter.
-- Several nodes (issue 14). One counter every config change (APIs, keys, backends) bumps
-- in its own write transaction: each node polls it and reloads the config when it moved.
CREATE TABLE config_version (
    id      INTEGER PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO config_version (id, version) VALUES (1, 0);
-- The FLM processes sharing this database: a row each, upserted at start, its last_seen
-- renewed every heartbeat; status 'gone' after a clean stop (or read as gone when
-- last_seen is older than three heartbeats). apis: a JSON list of the API ids it serves.
CREATE TABLE nodes (
    name       TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    last_seen  TEXT NOT NULL,
    seen_s     DOUBLE PRECISION NOT NULL,
    heartbeat_s DOUBLE PRECISION NOT NULL,
    status     TEXT NOT NULL,
    apis       TEXT NOT NULL
);
-- Work that runs on one node at a time (retention, checkpoints): the holder renews its
-- lease each run; another node takes it once expires_at (epoch seconds) has passed.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
-- Which node served a request (its node_name), written with the row's batch.
ALTER TABLE request_logs ADD COLUMN node TEXT;
-- Every bump wakes the other nodes at once (flm/store/listen.py); the poll is the net.
CREATE FUNCTION flm_config_changed() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_notify('flm_changes', NEW.version::text); RETURN NULL; END $$;
CREATE TRIGGER config_version_notify AFTER UPDATE ON config_version FOR EACH ROW EXECUTE FUNCTION flm_config_changed()
