-- Which engine runs a model's versions: as each version's model.toml says, else the worker's
-- `engine` setting (model_toml), or tract, onnxruntime or auto for every version.
ALTER TABLE models ADD COLUMN engine TEXT NOT NULL DEFAULT 'model_toml'
    CHECK (engine IN ('model_toml', 'tract', 'onnxruntime', 'auto'));
