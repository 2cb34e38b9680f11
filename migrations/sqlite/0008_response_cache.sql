-- Whether the api's response cache keeps a model's answers: as each version's model.toml says
-- (model_toml), for every version (on), or for none (off).
ALTER TABLE models ADD COLUMN response_cache TEXT NOT NULL DEFAULT 'model_toml'
    CHECK (response_cache IN ('model_toml', 'on', 'off'));
