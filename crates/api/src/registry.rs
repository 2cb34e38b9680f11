//! Putting models into the registry: checking an uploaded file with tract before recording it,
//! and importing a repository folder (standalone start-up).

use std::path::{Path, PathBuf};
use vatic_schema::admin::{PushResponse, Signature};
use vatic_store::{NewVersion, Store, StoreError};
use vatic_worker::config::EngineChoice;
use vatic_worker::EngineSettings;

/// Why a push was refused.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The file or its settings are unusable.
    #[error("{0}")]
    Invalid(String),
    /// The registry refused or could not be reached.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A local file operation failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Model names: a letter or digit, then letters, digits, `_`, `-` or `.`; at most 128.
pub fn check_name(name: &str) -> Result<(), PushError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(PushError::Invalid(format!(
            "invalid model name '{name}': use letters, digits, '_', '-' and '.', starting with a letter or digit, at most 128 characters"
        )))
    }
}

/// Version numbers start at 1.
pub fn check_version(version: u64) -> Result<(), PushError> {
    if version == 0 {
        return Err(PushError::Invalid("version must be at least 1".into()));
    }
    Ok(())
}

/// Loads `file` into the engine the workers would serve it with (`choice`, the model's
/// registry setting, else the one `config`, a `model.toml` text, names), with `config`'s
/// overrides, and runs it once; returns its signature, or the engine's reason it cannot serve.
pub async fn inspect(
    file: &Path,
    config: &str,
    choice: Option<EngineChoice>,
    engine: &EngineSettings,
) -> Result<Signature, PushError> {
    let file = file.to_path_buf();
    let config = config.to_string();
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || {
        vatic_worker::check_model(&file, &config, "model.toml", choice, &engine)
            .map(|(model, _)| Signature {
                inputs: model.signature.inputs.clone(),
                outputs: model.signature.outputs.clone(),
                batched: model.signature.batched,
            })
            .map_err(|e| {
                // The upload's temporary name means nothing to the caller.
                let reason = format!("{e:#}").replace(&file.display().to_string(), "the file");
                PushError::Invalid(format!("the model cannot be served: {reason}"))
            })
    })
    .await
    .map_err(|e| PushError::Invalid(format!("the model check stopped: {e}")))?
}

/// A file to record as a new version.
pub struct Upload<'a> {
    /// Model name.
    pub model: &'a str,
    /// Version number, or the next free one.
    pub version: Option<u64>,
    /// The uploaded ONNX file.
    pub file: &'a Path,
    /// Its `model.toml`, empty for none.
    pub config: &'a str,
    /// Who pushes it.
    pub actor: &'a vatic_store::Actor,
}

/// Checks an upload with its engine and records it.
pub async fn push(
    store: &Store,
    upload: &Upload<'_>,
    engine: &EngineSettings,
) -> Result<PushResponse, PushError> {
    check_name(upload.model)?;
    if let Some(version) = upload.version {
        check_version(version)?;
    }
    // The model's engine setting in the registry wins over model.toml, as on the workers.
    let choice = match store.model(upload.model).await {
        Ok(m) => EngineChoice::from_setting(m.engine),
        Err(StoreError::ModelNotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let signature = inspect(upload.file, upload.config, choice, engine).await?;
    let path = upload.file.to_path_buf();
    let (sha256, size) = tokio::task::spawn_blocking(move || vatic_store::sha256_file(&path))
        .await
        .map_err(|e| PushError::Invalid(format!("hashing stopped: {e}")))??;
    let (version, artifact_stored) = store
        .push_version(&NewVersion {
            model: upload.model,
            version: upload.version,
            file: upload.file,
            sha256: &sha256,
            size,
            signature: &signature,
            config: upload.config,
            actor: upload.actor,
        })
        .await?;
    tracing::info!(model = %version.model, version = version.version, sha256 = %version.sha256, state = %version.state, actor = %upload.actor.label, "model version pushed");
    Ok(PushResponse {
        version,
        artifact_stored,
    })
}

/// Imports every `<model>/<version>/model.onnx` of `dir` that the registry does not hold yet
/// (by SHA-256, so importing twice changes nothing), keeping the folder's version numbers when
/// they are free. Returns how many versions were added. A file that fails its check is skipped
/// with an error in the log.
pub async fn import_folder(
    store: &Store,
    dir: &Path,
    engine: &EngineSettings,
) -> anyhow::Result<usize> {
    let specs = vatic_worker::folder::scan(dir)?;
    let mut added = 0;
    for spec in specs {
        let (sha256, _) = vatic_store::sha256_file(&spec.file)?;
        let existing = match store.model(&spec.model).await {
            Ok(m) => Some(m),
            Err(StoreError::ModelNotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        if existing
            .as_ref()
            .is_some_and(|m| m.versions.iter().any(|v| v.sha256 == sha256))
        {
            continue;
        }
        let free = existing
            .as_ref()
            .is_none_or(|m| m.versions.iter().all(|v| v.version != spec.version));
        let importer = vatic_store::Actor::named("import");
        let upload = Upload {
            model: &spec.model,
            version: free.then_some(spec.version),
            file: &spec.file,
            config: &spec.config,
            actor: &importer,
        };
        match push(store, &upload, engine).await {
            Ok(r) => {
                tracing::info!(model = %spec.model, version = r.version.version, from = %spec.file.display(), "model imported");
                added += 1;
            }
            Err(PushError::Invalid(reason)) => {
                tracing::error!(model = %spec.model, file = %spec.file.display(), %reason, "model not imported");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(added)
}

/// A new file name in `dir` for an upload in progress.
pub fn upload_path(dir: &Path) -> PathBuf {
    dir.join(format!("upload-{}.onnx", uuid::Uuid::new_v4()))
}
