-- A claim takes the first unfinished chunk of the oldest job: the index of unfinished chunks
-- is in that order, so a claim is one short walk of it however many chunks a job has.
DROP INDEX batch_chunks_open;
CREATE INDEX batch_chunks_open ON batch_chunks (job, seq) WHERE state <> 'done';
