-- At most one stable version per model: the version that answers requests naming none.
CREATE UNIQUE INDEX model_versions_one_stable ON model_versions (model) WHERE state = 'stable';
