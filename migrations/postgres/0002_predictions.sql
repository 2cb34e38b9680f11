-- Prediction log, partitioned by day (partitions are created by the writer as days come and
-- dropped by retention). The primary key makes replays idempotent.

CREATE TABLE predictions (
    id         UUID NOT NULL,
    at         TIMESTAMPTZ NOT NULL,
    request_id TEXT NOT NULL,
    model      TEXT NOT NULL,
    version    TEXT NOT NULL,
    api_key    TEXT,
    status     SMALLINT NOT NULL,
    latency_us BIGINT NOT NULL,
    request    JSONB,
    response   JSONB,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);

CREATE INDEX predictions_model_at ON predictions (model, at);
