-- Prediction log. SQLite has no partitions: retention deletes old rows.

CREATE TABLE predictions (
    id         TEXT PRIMARY KEY,
    at         TEXT NOT NULL,
    request_id TEXT NOT NULL,
    model      TEXT NOT NULL,
    version    TEXT NOT NULL,
    api_key    TEXT,
    status     INTEGER NOT NULL,
    latency_us INTEGER NOT NULL,
    request    TEXT,
    response   TEXT
);

CREATE INDEX predictions_model_at ON predictions (model, at);
CREATE INDEX predictions_at ON predictions (at);
