-- Batch jobs: a file of rows uploaded once, split into chunks that any api replica may claim
-- under a lease, run at low priority, and whose results are stored with the chunk.

CREATE TABLE batch_jobs (
    id            TEXT PRIMARY KEY,
    model         TEXT NOT NULL,
    -- The version or the label the job was submitted for (at most one); neither: the stable
    -- version, or the split, at the time each chunk runs.
    version       TEXT,
    label         TEXT,
    -- jsonl or csv.
    input_format  TEXT NOT NULL,
    output_format TEXT NOT NULL,
    -- JSON: the CSV header's column names, the model's input and output names.
    layout        TEXT NOT NULL,
    -- uploading, queued, running, succeeded, failed, cancelled.
    state         TEXT NOT NULL,
    -- The API key that submitted it; null when the api runs without keys.
    api_key       TEXT,
    rows_total    BIGINT NOT NULL DEFAULT 0,
    rows_done     BIGINT NOT NULL DEFAULT 0,
    rows_failed   BIGINT NOT NULL DEFAULT 0,
    -- rows_done when it last started (a retry starts again), for its rate.
    rows_at_start BIGINT NOT NULL DEFAULT 0,
    chunks_total  BIGINT NOT NULL DEFAULT 0,
    chunks_done   BIGINT NOT NULL DEFAULT 0,
    input_bytes   BIGINT NOT NULL DEFAULT 0,
    error         TEXT,
    created_at    TIMESTAMPTZ NOT NULL,
    -- Touched while the upload runs, so an upload whose process died is found and removed.
    updated_at    TIMESTAMPTZ NOT NULL,
    started_at    TIMESTAMPTZ,
    finished_at   TIMESTAMPTZ
);
CREATE INDEX batch_jobs_key ON batch_jobs (api_key, created_at);
CREATE INDEX batch_jobs_state ON batch_jobs (state, created_at);

CREATE TABLE batch_chunks (
    job         TEXT NOT NULL REFERENCES batch_jobs (id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,
    -- The chunk's first row (1-based, data rows only) and how many it holds.
    first_row   BIGINT NOT NULL,
    rows        BIGINT NOT NULL,
    -- The lines as uploaded.
    input       BYTEA NOT NULL,
    -- pending, running, done.
    state       TEXT NOT NULL,
    -- The claim that holds it while it runs, and until when; a lease that ran out is taken again.
    lease       TEXT,
    lease_until TIMESTAMPTZ,
    attempts    INTEGER NOT NULL DEFAULT 0,
    -- Not before this time (a chunk put back after a worker was unreachable).
    not_before  TIMESTAMPTZ,
    -- One JSON line per row, in order: its outputs or its error.
    results     BYTEA,
    failed      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (job, seq)
);
CREATE INDEX batch_chunks_open ON batch_chunks (state, job, seq) WHERE state <> 'done';
