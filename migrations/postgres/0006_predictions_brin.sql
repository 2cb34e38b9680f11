-- The prediction log is written on every request and read rarely, by time range: its two b-tree
-- indexes, the primary key (id, at) and (model, at), took about half of the database's work per
-- logged prediction. They give way to one BRIN index on `at`, which costs next to nothing to
-- keep (a summary per 128 pages) and finds a time range's pages: rows are appended in time order.
-- Ids stay unique without the key: each is made once, and a replay from the spool (a batch whose
-- commit answer was lost) skips the records already stored by looking them up by time and id.
-- Builds the BRIN index over every day partition (one read of the table): on a large log, apply it
-- in a quiet hour (vaticctl migrate).
ALTER TABLE predictions DROP CONSTRAINT predictions_pkey;
DROP INDEX predictions_model_at;
CREATE INDEX predictions_at ON predictions USING brin (at);
