-- Payloads as JSON, not JSONB: PostgreSQL still checks that each one is JSON, but keeps the text
-- as written instead of converting it, which halves the database's work per logged prediction.
-- The json operators (->, ->>, json_array_elements ...) work on these columns as before.
-- Rewrites every day partition: on a large log, apply it in a quiet hour (vaticctl migrate).
ALTER TABLE predictions
    ALTER COLUMN request TYPE JSON USING request::json,
    ALTER COLUMN response TYPE JSON USING response::json;
