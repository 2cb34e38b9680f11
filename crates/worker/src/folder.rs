//! A repository folder as a list of versions to serve.
//!
//! Layout: `<models_dir>/<model>/<version>/model.onnx`, versions being positive integers, with an
//! optional `model.toml` in the version folder or, for every version, in the model folder. Other
//! folders (a Triton repository's non-ONNX models, say) are skipped with a warning.

use crate::engine::VersionSpec;
use std::path::Path;

/// Every `<model>/<version>/model.onnx` under `dir`, by model then version. The version
/// folder's `model.toml` wins over the model folder's.
pub fn scan(dir: &Path) -> anyhow::Result<Vec<VersionSpec>> {
    let listing =
        std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("models_dir {}: {e}", dir.display()))?;
    let mut specs = Vec::new();
    let mut model_dirs: Vec<_> = listing.filter_map(|e| e.ok().map(|e| e.path())).collect();
    model_dirs.sort();
    for model_dir in model_dirs {
        let Some(name) = model_dir
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        if !model_dir.is_dir() || name.starts_with('.') {
            continue;
        }
        let mut versions = Vec::new();
        for version_dir in std::fs::read_dir(&model_dir)? {
            let version_dir = version_dir?.path();
            let Some(version) = version_dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|v| *v > 0)
            else {
                continue;
            };
            let file = version_dir.join("model.onnx");
            if !file.is_file() {
                continue;
            }
            let (config, origin) = [version_dir.join("model.toml"), model_dir.join("model.toml")]
                .into_iter()
                .find(|p| p.is_file())
                .map(|p| -> anyhow::Result<_> {
                    let text = std::fs::read_to_string(&p)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
                    Ok((text, p.display().to_string()))
                })
                .transpose()?
                .unwrap_or_else(|| {
                    (
                        String::new(),
                        version_dir.join("model.toml").display().to_string(),
                    )
                });
            versions.push(VersionSpec {
                model: name.clone(),
                version,
                file,
                config,
                origin,
                default: false,
                engine: None,
            });
        }
        if versions.is_empty() {
            tracing::warn!(model = %name, "skipped: no <version>/model.onnx inside {}", model_dir.display());
        }
        versions.sort_by_key(|v| v.version);
        specs.extend(versions);
    }
    Ok(specs)
}
