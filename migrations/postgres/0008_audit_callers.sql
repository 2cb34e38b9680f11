-- Who made each change, from where, and whether it was done or refused.
ALTER TABLE audit_log
    ADD COLUMN key_id      TEXT,
    ADD COLUMN key_name    TEXT,
    ADD COLUMN role        TEXT,
    ADD COLUMN remote_addr TEXT,
    ADD COLUMN request_id  TEXT,
    ADD COLUMN target      TEXT,
    ADD COLUMN outcome     TEXT NOT NULL DEFAULT 'ok';
CREATE INDEX audit_log_at ON audit_log (at);
