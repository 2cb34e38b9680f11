-- Rollout: operators' labels of versions, the version a rollback returns to after a promote,
-- and the history of every label and traffic change. The built-in labels stable, canary and
-- shadow follow the versions' states and are not stored here.

CREATE TABLE model_labels (
    model      TEXT NOT NULL REFERENCES models (name),
    label      TEXT NOT NULL,
    version    BIGINT NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (model, label),
    FOREIGN KEY (model, version) REFERENCES model_versions (model, version)
);

-- After a promote, the version that was stable stays loaded until previous_until so that a
-- rollback to it is instant; then it is retired.
ALTER TABLE models ADD COLUMN previous_stable BIGINT;
-- Every change of a model (a push, a retire, its settings, a rollout step) counts here, so a
-- change planned on what a model was is refused when the model changed in between.
ALTER TABLE models ADD COLUMN revision BIGINT NOT NULL DEFAULT 0;
ALTER TABLE models ADD COLUMN previous_until TEXT;

-- At most one canary and one shadow per model.
CREATE UNIQUE INDEX model_versions_one_canary ON model_versions (model) WHERE state = 'canary';
CREATE UNIQUE INDEX model_versions_one_shadow ON model_versions (model) WHERE state = 'shadow';

CREATE TABLE rollout_history (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    model   TEXT NOT NULL,
    at      TEXT NOT NULL,
    actor   TEXT NOT NULL,
    -- label, unlabel, start, set, promote, rollback, expire, ...
    action  TEXT NOT NULL,
    version BIGINT,
    -- JSON: what changed (weights, labels, the reason of a rollback).
    detail  TEXT NOT NULL
);
CREATE INDEX rollout_history_model ON rollout_history (model, id);

-- What each api replica counted of each side of a rollout (stable, canary, shadow), written every
-- few seconds; a window's figures are the sum of its rows. Kept a day.
CREATE TABLE rollout_stats (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      TEXT NOT NULL,
    replica TEXT NOT NULL,
    model   TEXT NOT NULL,
    version BIGINT NOT NULL,
    side    TEXT NOT NULL,
    -- JSON: requests, errors, latency buckets, and for a shadow the comparison.
    stats   TEXT NOT NULL
);
CREATE INDEX rollout_stats_model_at ON rollout_stats (model, at);
CREATE INDEX rollout_stats_at ON rollout_stats (at);

-- Automatic progressive rollouts: one row per model, the last one started (running or how it
-- ended). The controller steps the canary's share up while it holds up and rolls back on a breach.
CREATE TABLE rollout_plans (
    model           TEXT PRIMARY KEY REFERENCES models (name),
    version         BIGINT NOT NULL,
    -- JSON list of the canary's shares, in percent.
    steps           TEXT NOT NULL,
    -- Index into steps of the share now.
    step            INTEGER NOT NULL,
    interval_ms     BIGINT NOT NULL,
    max_error_ratio REAL NOT NULL,
    max_p99         REAL NOT NULL,
    p99_slack_ms    REAL NOT NULL,
    min_requests    BIGINT NOT NULL,
    min_agreement   REAL,
    error_floor     REAL NOT NULL,
    -- running | succeeded | rolled_back | cancelled
    state           TEXT NOT NULL,
    -- The last decision or why it ended.
    reason          TEXT NOT NULL,
    started_by      TEXT NOT NULL,
    started_at      TEXT NOT NULL,
    step_started_at TEXT NOT NULL
);

-- Leases: the api replica named `holder` runs the rollout controller until `until`.
CREATE TABLE controller_lease (
    name   TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until  TEXT NOT NULL
);

-- Requests a worker was answering at its last heartbeat (`vaticctl workers`).
ALTER TABLE workers ADD COLUMN in_flight BIGINT NOT NULL DEFAULT 0;

-- A shadow version's answer to a copy of a served request, stored beside the served record
-- (same request id) when the prediction log keeps that request.
ALTER TABLE predictions ADD COLUMN shadow BOOLEAN NOT NULL DEFAULT FALSE;
