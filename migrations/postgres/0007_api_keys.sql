-- API keys: who may call vatic, with which role, for which models. The secret is never stored:
-- only its SHA-256. `id` is the public part of the key (vk_<id>_<secret>).
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL DEFAULT '',
    role        TEXT NOT NULL CHECK (role IN ('admin', 'deployer', 'predictor', 'viewer')),
    -- JSON array of model names; NULL for every model.
    models      TEXT,
    secret_hash BYTEA NOT NULL,
    -- Requests per second and burst; NULL for the api's default.
    rate        DOUBLE PRECISION CHECK (rate > 0),
    burst       INTEGER CHECK (burst > 0),
    created_at  TIMESTAMPTZ NOT NULL,
    created_by  TEXT NOT NULL,
    expires_at  TIMESTAMPTZ,
    revoked_at  TIMESTAMPTZ
);
