//! `vaticctl models`: the model registry. Push a version, list and describe models, retire a
//! version, and set what the prediction log keeps of a model's requests.

use crate::client::{Client, Push};
use crate::output::{self, OutputFormat};
use crate::GlobalArgs;
use anyhow::Context;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Subcommand};
use comfy_table::Table;
use std::io::Write;
use std::path::PathBuf;
use vatic_schema::admin::{
    CacheSetting, EngineSetting, LoadState, LogMode, ModelInfo, ModelSettings, ModelVersionInfo,
    PushResponse, RetireResponse, VersionState,
};
use vatic_schema::TensorMetadata;

/// Arguments of `vaticctl models`.
#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// What to do with the registry.
    #[command(subcommand)]
    pub command: ModelsCommand,
}

/// The `vaticctl models` commands.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Upload an ONNX file as a new version of a model
    ///
    /// The file is streamed to the server, which loads it and runs it once before recording
    /// it; a file it cannot serve is refused with the reason, and nothing is stored. The first
    /// version of a model becomes stable (it answers requests that name no version); later
    /// versions are staged. A model.toml (batching and signature overrides) may go with it.
    ///
    /// Examples:
    ///   vaticctl models push fraud fraud-v7.onnx
    ///   vaticctl models push fraud fraud-v7.onnx --version 7 --config model.toml
    #[command(verbatim_doc_comment)]
    Push(PushArgs),
    /// List the models of the registry
    ///
    /// One line per model: its versions and their states, the stable version, and what the
    /// prediction log keeps of its requests.
    ///
    /// Example:
    ///   vaticctl models list
    #[command(verbatim_doc_comment)]
    List,
    /// Show a model's versions, its signature and its model.toml
    ///
    /// Lists every version with its SHA-256, size and state, who pushed it and when, and who
    /// changed its state last; then the inputs and outputs and the model.toml of the version
    /// that answers requests naming no version (or of --version N).
    ///
    /// Examples:
    ///   vaticctl models describe fraud
    ///   vaticctl models describe fraud --version 7 --output json
    #[command(verbatim_doc_comment)]
    Describe(DescribeArgs),
    /// Retire a model version: the workers unload it and it answers no more requests
    ///
    /// The version stays in the registry, for the record.
    ///
    /// Example:
    ///   vaticctl models retire fraud 6
    #[command(verbatim_doc_comment)]
    Retire(RetireArgs),
    /// Point a label of your own at a version, addressable like a version number
    ///
    /// Callers then reach the version at /v2/models/MODEL/labels/LABEL/infer and TF-Serving's
    /// /v1/models/MODEL/labels/LABEL:predict; moving the label moves them, atomically. The
    /// version must be ready on at least one worker. stable, canary and shadow are set by
    /// `vaticctl rollout`.
    ///
    /// Examples:
    ///   vaticctl models label fraud 7 --as blue
    ///   vaticctl models unlabel fraud blue
    #[command(verbatim_doc_comment)]
    Label(LabelArgs),
    /// Remove a label of your own
    ///
    /// Example:
    ///   vaticctl models unlabel fraud blue
    #[command(verbatim_doc_comment)]
    Unlabel(UnlabelArgs),
    /// Show or set what the prediction log keeps of a model's requests
    ///
    /// Without --mode or --sample-rate, prints the current settings.
    ///
    /// Examples:
    ///   vaticctl models log fraud
    ///   vaticctl models log fraud --mode full --sample-rate 0.05
    ///   vaticctl models log fraud --mode off
    #[command(verbatim_doc_comment)]
    Log(LogArgs),
    /// Show or change whether the api's response cache answers a model's repeated requests
    ///
    /// `model_toml` (the default) follows each version's model.toml (`[cache] enabled = true`);
    /// `on` and `off` apply to every version of the model.
    ///
    /// Examples:
    ///   vaticctl models cache fraud
    ///   vaticctl models cache fraud on
    #[command(verbatim_doc_comment)]
    Cache(CacheArgs),
    /// Show or change the engine that runs a model's versions
    ///
    /// `model_toml` (the default) follows each version's model.toml (`engine = ...`), else the
    /// worker's `engine` setting; `tract`, `onnxruntime` and `auto` apply to every version of the
    /// model, and the workers load its versions again with that engine (docs/engines.md).
    ///
    /// Examples:
    ///   vaticctl models engine resnet
    ///   vaticctl models engine resnet onnxruntime
    #[command(verbatim_doc_comment)]
    Engine(EngineArgs),
}

/// Arguments of `vaticctl models engine`.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Model name
    pub model: String,
    /// tract, onnxruntime, auto, or model_toml (as each version's model.toml says); shows the
    /// setting when left out
    #[arg(
        value_name = "ENGINE",
        value_parser = PossibleValuesParser::new(["tract", "onnxruntime", "auto", "model_toml"])
            .map(|s| s.parse::<EngineSetting>().expect("one of the possible values")),
    )]
    pub setting: Option<EngineSetting>,
}

/// Arguments of `vaticctl models cache`.
#[derive(Debug, Args)]
pub struct CacheArgs {
    /// Model name
    pub model: String,
    /// on, off, or model_toml (as each version's model.toml says); shows the setting when left out
    #[arg(
        value_name = "SETTING",
        value_parser = PossibleValuesParser::new(["on", "off", "model_toml"])
            .map(|s| s.parse::<CacheSetting>().expect("one of the possible values")),
    )]
    pub setting: Option<CacheSetting>,
}

/// Arguments of `vaticctl models push`. `--version` is the model version here, not vaticctl's.
#[derive(Debug, Args)]
#[command(disable_version_flag = true)]
pub struct PushArgs {
    /// Model name: letters, digits, '_', '-' and '.', starting with a letter or digit
    pub model: String,
    /// The ONNX file
    pub file: PathBuf,
    /// Version number [default: one past the newest]
    #[arg(long, value_name = "N", value_parser = version_number)]
    pub version: Option<u64>,
    /// A model.toml to record with the version (batching and signature overrides)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Arguments of `vaticctl models describe`. `--version` is the model version here.
#[derive(Debug, Args)]
#[command(disable_version_flag = true)]
pub struct DescribeArgs {
    /// Model name
    pub model: String,
    /// Show only this version
    #[arg(long, value_name = "N", value_parser = version_number)]
    pub version: Option<u64>,
}

/// Arguments of `vaticctl models retire`.
#[derive(Debug, Args)]
pub struct RetireArgs {
    /// Model name
    pub model: String,
    /// The version to retire
    #[arg(id = "model_version", value_name = "VERSION", value_parser = version_number)]
    pub version: u64,
}

/// Arguments of `vaticctl models label`.
#[derive(Debug, Args)]
pub struct LabelArgs {
    /// Model name
    pub model: String,
    /// The version the label names
    #[arg(id = "model_version", value_name = "VERSION", value_parser = version_number)]
    pub version: u64,
    /// The label: letters, digits, '_', '-' and '.', starting with a letter
    #[arg(long = "as", value_name = "LABEL")]
    pub label: String,
}

/// Arguments of `vaticctl models unlabel`.
#[derive(Debug, Args)]
pub struct UnlabelArgs {
    /// Model name
    pub model: String,
    /// The label to remove
    pub label: String,
}

/// Arguments of `vaticctl models log`.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Model name
    pub model: String,
    /// What the log keeps: nothing, the metadata of each request (time, version, status,
    /// latency), or the metadata and the inputs and outputs
    #[arg(
        long,
        value_name = "MODE",
        value_parser = PossibleValuesParser::new(["off", "metadata", "full"])
            .map(|s| s.parse::<LogMode>().expect("one of the possible values")),
    )]
    pub mode: Option<LogMode>,
    /// Share of requests logged, from 0 to 1
    #[arg(long, value_name = "F", value_parser = sample_rate)]
    pub sample_rate: Option<f64>,
}

/// A version number: 1 or more.
pub fn version_number(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(v) if v >= 1 => Ok(v),
        _ => Err(format!("'{s}' is not a version number (1, 2, ...)")),
    }
}

fn sample_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("'{s}' is not a number from 0 to 1")),
    }
}

/// Runs a `vaticctl models` command.
pub fn run(global: &GlobalArgs, args: &ModelsArgs) -> anyhow::Result<()> {
    let client = Client::new(global)?;
    let out = &mut std::io::stdout().lock();
    let format = global.output;
    match &args.command {
        ModelsCommand::Push(args) => {
            let config = args
                .config
                .as_ref()
                .map(|path| {
                    std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))
                })
                .transpose()?;
            let pushed = client.push(Push {
                model: &args.model,
                version: args.version,
                file: &args.file,
                config: config.as_deref(),
            })?;
            print_push(&pushed, format, out)
        }
        ModelsCommand::List => print_list(&client.models()?, format, out),
        ModelsCommand::Describe(args) => match args.version {
            Some(version) => {
                let version = client.model_version(&args.model, version)?;
                match format {
                    OutputFormat::Json => output::print_json(&version, out),
                    OutputFormat::Table => print_version(&version, out),
                }
            }
            None => print_model(&client.model(&args.model)?, format, out),
        },
        ModelsCommand::Retire(args) => {
            print_retired(&client.retire(&args.model, args.version)?, format, out)
        }
        ModelsCommand::Label(args) => print_labels(
            &client.set_label(&args.model, &args.label, args.version)?,
            format,
            out,
        ),
        ModelsCommand::Unlabel(args) => {
            print_labels(&client.remove_label(&args.model, &args.label)?, format, out)
        }
        ModelsCommand::Log(args) => {
            let model = if args.mode.is_none() && args.sample_rate.is_none() {
                client.model(&args.model)?
            } else {
                let settings = ModelSettings {
                    log_mode: args.mode,
                    log_sample_rate: args.sample_rate,
                    cache: None,
                    engine: None,
                };
                client.update_model(&args.model, &settings)?
            };
            print_log_settings(&model, format, out)
        }
        ModelsCommand::Cache(args) => {
            let model = match args.setting {
                None => client.model(&args.model)?,
                Some(cache) => {
                    let settings = ModelSettings {
                        log_mode: None,
                        log_sample_rate: None,
                        cache: Some(cache),
                        engine: None,
                    };
                    client.update_model(&args.model, &settings)?
                }
            };
            print_cache_setting(&model, format, out)
        }
        ModelsCommand::Engine(args) => {
            let model = match args.setting {
                None => client.model(&args.model)?,
                Some(engine) => {
                    let settings = ModelSettings {
                        log_mode: None,
                        log_sample_rate: None,
                        cache: None,
                        engine: Some(engine),
                    };
                    client.update_model(&args.model, &settings)?
                }
            };
            if format == OutputFormat::Json {
                return output::print_json(&model, out);
            }
            let mut table = output::table(["model", "engine"]);
            table.add_row([model.name.clone(), model.engine.as_str().to_string()]);
            writeln!(out, "{table}")?;
            Ok(())
        }
    }
}

fn print_cache_setting(
    model: &ModelInfo,
    format: OutputFormat,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return output::print_json(model, out);
    }
    let mut table = output::table(["model", "cache"]);
    table.add_row([model.name.clone(), model.cache.as_str().to_string()]);
    writeln!(out, "{table}")?;
    Ok(())
}

fn print_retired(
    retired: &RetireResponse,
    format: OutputFormat,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return output::print_json(retired, out);
    }
    let mut table = output::table(["model", "version", "state", "changed by", "changed at"]);
    for version in std::iter::once(&retired.version).chain(&retired.promoted) {
        table.add_row([
            version.model.clone(),
            version.version.to_string(),
            version.state.to_string(),
            version.updated_by.clone(),
            version.updated_at.clone(),
        ]);
    }
    output::align_right(&mut table, &[1]);
    writeln!(out, "{table}")?;
    if let Some(promoted) = &retired.promoted {
        writeln!(
            out,
            "version {} was stable: version {} is stable now and answers requests that name no version",
            retired.version.version, promoted.version
        )?;
    }
    Ok(())
}

fn print_labels(
    model: &ModelInfo,
    format: OutputFormat,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return output::print_json(model, out);
    }
    let mut table = output::table(["model", "label", "version"]);
    for (label, version) in &model.labels {
        table.add_row([model.name.clone(), label.clone(), version.to_string()]);
    }
    output::align_right(&mut table, &[2]);
    writeln!(out, "{table}")?;
    Ok(())
}

fn print_log_settings(
    model: &ModelInfo,
    format: OutputFormat,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return output::print_json(model, out);
    }
    let mut table = output::table(["model", "log", "sample rate"]);
    table.add_row([
        model.name.clone(),
        model.log_mode.as_str().to_string(),
        model.log_sample_rate.to_string(),
    ]);
    output::align_right(&mut table, &[2]);
    writeln!(out, "{table}")?;
    Ok(())
}

fn print_push(
    pushed: &PushResponse,
    format: OutputFormat,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return output::print_json(pushed, out);
    }
    let v = &pushed.version;
    let mut table = output::table([
        "model", "version", "state", "sha256", "size", "inputs", "outputs",
    ]);
    table.add_row([
        v.model.clone(),
        v.version.to_string(),
        v.state.to_string(),
        v.sha256.clone(),
        output::bytes(v.size),
        tensors(&v.signature.inputs),
        tensors(&v.signature.outputs),
    ]);
    output::align_right(&mut table, &[1, 4]);
    writeln!(out, "{table}")?;
    if !pushed.artifact_stored {
        writeln!(
            out,
            "The registry already held a file with this SHA-256; only the version was recorded."
        )?;
    }
    Ok(())
}

fn print_list(
    models: &[ModelInfo],
    format: OutputFormat,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return output::print_json(&models, out);
    }
    let mut table = output::table([
        "model",
        "versions",
        "stable",
        "labels",
        "log",
        "sample rate",
    ]);
    for model in models {
        let versions = model
            .versions
            .iter()
            .map(|v| format!("{} {}", v.version, v.state))
            .collect::<Vec<_>>()
            .join(", ");
        let stable = model
            .versions
            .iter()
            .rev()
            .find(|v| v.state == VersionState::Stable)
            .map_or_else(|| "-".to_string(), |v| v.version.to_string());
        table.add_row([
            model.name.clone(),
            versions,
            stable,
            labels(model),
            model.log_mode.as_str().to_string(),
            model.log_sample_rate.to_string(),
        ]);
    }
    output::align_right(&mut table, &[2, 5]);
    writeln!(out, "{table}")?;
    Ok(())
}

/// `canary=8 (10%), stable=7, blue=6`: every label but none for a model without labels.
fn labels(model: &ModelInfo) -> String {
    let list: Vec<String> = model
        .labels
        .iter()
        .map(|(label, version)| match (label.as_str(), model.canary()) {
            ("canary", Some((_, weight))) => format!("canary={version} ({weight}%)"),
            _ => format!("{label}={version}"),
        })
        .collect();
    if list.is_empty() {
        "-".into()
    } else {
        list.join(", ")
    }
}

/// A model's versions, then the signature and model.toml of the version that answers requests
/// naming no version (else the newest).
fn print_model(
    model: &ModelInfo,
    format: OutputFormat,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return output::print_json(model, out);
    }
    writeln!(out, "model: {}", model.name)?;
    writeln!(
        out,
        "prediction log: {}, sample rate {}",
        model.log_mode.as_str(),
        model.log_sample_rate
    )?;
    writeln!(
        out,
        "response cache: {}, engine: {}",
        model.cache.as_str(),
        model.engine.as_str()
    )?;
    writeln!(out, "labels: {}", labels(model))?;
    writeln!(out, "{}", versions_table(&model.versions))?;
    let shown = model.default_version().or(model.versions.last());
    if let Some(version) = shown {
        print_details(version, out)?;
    }
    Ok(())
}

/// One version: its line of the versions table, its signature and its model.toml.
fn print_version(version: &ModelVersionInfo, out: &mut impl Write) -> anyhow::Result<()> {
    writeln!(out, "model: {}", version.model)?;
    writeln!(out, "{}", versions_table(std::slice::from_ref(version)))?;
    print_details(version, out)
}

fn versions_table(versions: &[ModelVersionInfo]) -> Table {
    let mut table = output::table([
        "version",
        "state",
        "sha256",
        "size",
        "pushed by",
        "pushed at",
        "changed by",
        "changed at",
    ]);
    for v in versions {
        table.add_row([
            v.version.to_string(),
            v.state.to_string(),
            v.sha256.clone(),
            output::bytes(v.size),
            v.created_by.clone(),
            v.created_at.clone(),
            v.updated_by.clone(),
            v.updated_at.clone(),
        ]);
    }
    output::align_right(&mut table, &[0, 3]);
    table
}

fn print_details(version: &ModelVersionInfo, out: &mut impl Write) -> anyhow::Result<()> {
    let signature = &version.signature;
    writeln!(
        out,
        "signature of version {}{}:",
        version.version,
        if signature.batched {
            " (the first dimension is the batch)"
        } else {
            ""
        }
    )?;
    let mut table = output::table(["", "name", "datatype", "shape"]);
    let tensors = [("input", &signature.inputs), ("output", &signature.outputs)];
    for (kind, list) in tensors {
        for t in list {
            table.add_row([
                kind.to_string(),
                t.name.clone(),
                t.datatype.to_string(),
                shape(&t.shape),
            ]);
        }
    }
    writeln!(out, "{table}")?;
    if version.config.trim().is_empty() {
        writeln!(out, "model.toml of version {}: none", version.version)?;
    } else {
        writeln!(out, "model.toml of version {}:", version.version)?;
        for line in version.config.trim_end().lines() {
            writeln!(out, "  {line}")?;
        }
    }
    print_loaded(version, out)
}

/// Where a version is loaded and with which engine; with `engine = "auto"`, what each engine
/// measured at load.
fn print_loaded(version: &ModelVersionInfo, out: &mut impl Write) -> anyhow::Result<()> {
    if version.loaded.is_empty() {
        writeln!(out, "no worker reports version {}", version.version)?;
        return Ok(());
    }
    writeln!(out, "version {} on the workers:", version.version)?;
    let mut table = output::table([
        "worker",
        "heartbeat",
        "state",
        "engine",
        "engine = auto, at load",
    ]);
    for l in &version.loaded {
        let s = &l.status;
        let state = match s.state {
            LoadState::Loading => "loading".to_string(),
            LoadState::Ready => "ready".to_string(),
            LoadState::Unavailable => format!("unavailable: {}", s.reason),
        };
        let figures: Vec<String> = s
            .engines
            .iter()
            .map(|f| {
                let figure = match (&f.samples_per_second, &f.error) {
                    (Some(rate), _) => {
                        let digits = if *rate < 10.0 { 1 } else { 0 };
                        let one_row = f
                            .one_row_us
                            .map(|us| format!(", one row in {us:.0} µs"))
                            .unwrap_or_default();
                        format!("{} {rate:.digits$} rows/s{one_row}", f.engine)
                    }
                    (None, Some(error)) => format!("{} failed ({error})", f.engine),
                    (None, None) => format!("{} not measured", f.engine),
                };
                if f.chosen {
                    format!("{figure}, chosen")
                } else {
                    figure
                }
            })
            .collect();
        table.add_row([
            l.worker.clone(),
            l.heartbeat_age_secs
                .map_or_else(|| "-".into(), |age| format!("{age:.1} s ago")),
            state,
            if s.engine.is_empty() {
                "-".into()
            } else {
                s.engine.clone()
            },
            if figures.is_empty() {
                "-".into()
            } else {
                figures.join("; ")
            },
        ]);
    }
    writeln!(out, "{table}")?;
    Ok(())
}

/// `[-1, 30]`; a dynamic dimension is -1.
fn shape(dims: &[i64]) -> String {
    let dims: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

/// `input FP32 [-1, 30]; mask BOOL [-1, 30]`.
fn tensors(list: &[TensorMetadata]) -> String {
    list.iter()
        .map(|t| format!("{} {} {}", t.name, t.datatype, shape(&t.shape)))
        .collect::<Vec<_>>()
        .join("; ")
}
