-- Registry: models, their versions, the artifacts they point to, traffic and the audit log.
-- Times are RFC 3339 text in UTC.

CREATE TABLE models (
    name            TEXT PRIMARY KEY,
    created_at      TEXT NOT NULL,
    -- Prediction log for this model: off | metadata | full, and the share of requests logged.
    log_mode        TEXT NOT NULL DEFAULT 'metadata' CHECK (log_mode IN ('off', 'metadata', 'full')),
    log_sample_rate REAL NOT NULL DEFAULT 1.0 CHECK (log_sample_rate >= 0 AND log_sample_rate <= 1)
);

-- Model files, content-addressed: the same bytes pushed twice are stored once.
CREATE TABLE artifacts (
    sha256     TEXT PRIMARY KEY,
    size       BIGINT NOT NULL,
    chunks     INTEGER NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE artifact_chunks (
    sha256 TEXT NOT NULL REFERENCES artifacts (sha256) ON DELETE CASCADE,
    seq    INTEGER NOT NULL,
    data   BLOB NOT NULL,
    PRIMARY KEY (sha256, seq)
);

CREATE TABLE model_versions (
    model      TEXT NOT NULL REFERENCES models (name),
    version    BIGINT NOT NULL CHECK (version > 0),
    state      TEXT NOT NULL CHECK (state IN ('staged', 'canary', 'shadow', 'stable', 'retired')),
    sha256     TEXT NOT NULL REFERENCES artifacts (sha256),
    size       BIGINT NOT NULL,
    -- The signature read from the graph (JSON: inputs, outputs, batched).
    signature  TEXT NOT NULL,
    -- The version's model.toml (batching and signature overrides); empty for none.
    config     TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (model, version)
);

-- Share of a model's traffic per version; shadow versions get a copy instead of a share.
CREATE TABLE traffic (
    model   TEXT NOT NULL,
    version BIGINT NOT NULL,
    weight  INTEGER NOT NULL CHECK (weight >= 0 AND weight <= 100),
    shadow  BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (model, version),
    FOREIGN KEY (model, version) REFERENCES model_versions (model, version)
);

CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      TEXT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    model   TEXT,
    version BIGINT,
    detail  TEXT NOT NULL
);

-- Workers publish what they serve here; api replicas route from it.
CREATE TABLE workers (
    id           TEXT PRIMARY KEY,
    address      TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL,
    -- JSON list of {model, version, state, reason}.
    loaded       TEXT NOT NULL
);
