//! Loading ONNX models: the signature, read from the graph, and the engine that runs them:
//! tract (one optimisation with a symbolic batch dimension) or ONNX Runtime
//! ([`crate::onnxruntime`]); and conversion between wire tensors and the tract tensors both
//! engines take and give.

use crate::batcher::Priority;
use crate::config::ModelToml;
use crate::onnxruntime::{OnnxRuntimeSettings, OrtModel};
use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use tract_onnx::pb;
use tract_onnx::prelude::*;
use vatic_schema::{DataType, TensorData, TensorMetadata};

/// The inputs and outputs a model version accepts and produces.
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    /// Inputs in graph order.
    pub inputs: Vec<TensorMetadata>,
    /// Outputs in graph order.
    pub outputs: Vec<TensorMetadata>,
    /// Whether the first dimension of every input and output is one shared batch dimension,
    /// so rows of many requests can run together.
    pub batched: bool,
}

/// The engine that runs a model version: Triton's `backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// tract, pure Rust, always built.
    Tract,
    /// ONNX Runtime, loaded from `libonnxruntime.so` at run time.
    OnnxRuntime,
}

impl Backend {
    /// The name in `model.toml`, the Triton configuration and the statistics.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Tract => "tract",
            Backend::OnnxRuntime => "onnxruntime",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

enum Runner {
    Tract(Arc<TypedRunnableModel>),
    OnnxRuntime(OrtModel),
}

/// A model loaded once into one engine and ready to run from several threads.
pub struct OnnxModel {
    runner: Runner,
    /// What the model accepts and returns.
    pub signature: Signature,
}

fn datatype_of(elem_type: i32) -> anyhow::Result<DataType> {
    use pb::tensor_proto::DataType as P;
    let p = P::try_from(elem_type).map_err(|_| anyhow!("unknown ONNX element type {elem_type}"))?;
    Ok(match p {
        P::Bool => DataType::Bool,
        P::Uint8 => DataType::Uint8,
        P::Uint16 => DataType::Uint16,
        P::Uint32 => DataType::Uint32,
        P::Uint64 => DataType::Uint64,
        P::Int8 => DataType::Int8,
        P::Int16 => DataType::Int16,
        P::Int32 => DataType::Int32,
        P::Int64 => DataType::Int64,
        P::Float16 => DataType::Fp16,
        P::Float => DataType::Fp32,
        P::Double => DataType::Fp64,
        P::String => DataType::Bytes,
        other => bail!("ONNX element type {other:?} has no V2 datatype"),
    })
}

/// tract's datum type for a V2 datatype.
pub fn datum_type(dt: DataType) -> DatumType {
    match dt {
        DataType::Bool => DatumType::Bool,
        DataType::Uint8 => DatumType::U8,
        DataType::Uint16 => DatumType::U16,
        DataType::Uint32 => DatumType::U32,
        DataType::Uint64 => DatumType::U64,
        DataType::Int8 => DatumType::I8,
        DataType::Int16 => DatumType::I16,
        DataType::Int32 => DatumType::I32,
        DataType::Int64 => DatumType::I64,
        DataType::Fp16 => DatumType::F16,
        DataType::Fp32 => DatumType::F32,
        DataType::Fp64 => DatumType::F64,
        DataType::Bytes => DatumType::String,
    }
}

/// A declared tensor and, per axis, the dim_param naming it (if any).
struct Declared {
    meta: TensorMetadata,
    params: Vec<Option<String>>,
}

fn declared(info: &pb::ValueInfoProto) -> anyhow::Result<Declared> {
    let Some(pb::type_proto::Value::TensorType(t)) =
        info.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        bail!("'{}' is not a tensor", info.name);
    };
    let datatype = datatype_of(t.elem_type).with_context(|| format!("tensor '{}'", info.name))?;
    let dims = t
        .shape
        .as_ref()
        .map(|s| s.dim.as_slice())
        .unwrap_or_default();
    let mut shape = Vec::with_capacity(dims.len());
    let mut params = Vec::with_capacity(dims.len());
    for d in dims {
        match &d.value {
            Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if *v > 0 => {
                shape.push(*v);
                params.push(None);
            }
            Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) => {
                shape.push(-1);
                params.push(Some(p.clone()));
            }
            _ => {
                shape.push(-1);
                params.push(None);
            }
        }
    }
    Ok(Declared {
        meta: TensorMetadata {
            name: info.name.clone(),
            datatype,
            shape,
        },
        params,
    })
}

/// Replaces declared tensors by those of `model.toml`, checking every name exists in the graph.
fn apply_override(
    declared: &mut [Declared],
    replacement: &Option<Vec<TensorMetadata>>,
    what: &str,
) -> anyhow::Result<()> {
    let Some(replacement) = replacement else {
        return Ok(());
    };
    for r in replacement {
        if !declared.iter().any(|d| d.meta.name == r.name) {
            bail!(
                "model.toml names {what} '{}', which the graph does not have ({})",
                r.name,
                declared
                    .iter()
                    .map(|d| d.meta.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    for d in declared.iter_mut() {
        let Some(r) = replacement.iter().find(|r| r.name == d.meta.name) else {
            bail!(
                "model.toml lists {what}s but leaves out '{}': list every {what}",
                d.meta.name
            );
        };
        d.params = r.shape.iter().map(|_| None).collect();
        d.meta = r.clone();
    }
    Ok(())
}

/// The signature's tensors as the graph declares them, with `model.toml`'s overrides.
fn declared_tensors(
    path: &Path,
    overrides: Option<&ModelToml>,
) -> anyhow::Result<(Vec<Declared>, Vec<Declared>)> {
    let proto = tract_onnx::onnx()
        .proto_model_for_path(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| anyhow!("{} has no graph", path.display()))?;
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|i| i.name.as_str()).collect();
    let mut inputs = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(i.name.as_str()))
        .map(declared)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut outputs = graph
        .output
        .iter()
        .map(declared)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let none = ModelToml::default();
    let overrides = overrides.unwrap_or(&none);
    apply_override(&mut inputs, &overrides.inputs, "input")?;
    apply_override(&mut outputs, &overrides.outputs, "output")?;
    Ok((inputs, outputs))
}

/// The batch dimension's name: the symbol of every input's first axis, when they all share one
/// (`N` when they are all dynamic but unnamed).
fn batch_param(inputs: &[Declared]) -> Option<String> {
    let named = inputs
        .first()
        .and_then(|d| d.params.first().cloned().flatten());
    named.or_else(|| {
        let first_dynamic = inputs.iter().all(|d| d.meta.shape.first() == Some(&-1));
        (first_dynamic && !inputs.is_empty()).then(|| "N".to_string())
    })
}

impl OnnxModel {
    /// Loads, checks and optimises `path` with tract, applying `overrides` from `model.toml`.
    pub fn load(path: &Path, overrides: Option<&ModelToml>) -> anyhow::Result<OnnxModel> {
        Self::load_with(
            path,
            overrides,
            Backend::Tract,
            &OnnxRuntimeSettings::default(),
        )
    }

    /// Loads `path` into `backend`, applying `overrides` from `model.toml`; `onnxruntime` says
    /// where ONNX Runtime's library is.
    pub fn load_with(
        path: &Path,
        overrides: Option<&ModelToml>,
        backend: Backend,
        onnxruntime: &OnnxRuntimeSettings,
    ) -> anyhow::Result<OnnxModel> {
        match backend {
            Backend::Tract => Self::load_tract(path, overrides),
            Backend::OnnxRuntime => Self::load_onnxruntime(path, overrides, onnxruntime),
        }
    }

    /// ONNX Runtime: the signature as declared; batched when every input's and output's first
    /// axis is the batch dimension. When the inputs' first axes are but the outputs do not say
    /// (an output's first dimension named otherwise, as PyTorch exports name them, or no
    /// declared shape), the model is run on 1 and 2 rows to see (see
    /// [`OnnxModel::probe_batch`]).
    fn load_onnxruntime(
        path: &Path,
        overrides: Option<&ModelToml>,
        settings: &OnnxRuntimeSettings,
    ) -> anyhow::Result<OnnxModel> {
        let (inputs, outputs) = declared_tensors(path, overrides)?;
        let batch = batch_param(&inputs);
        let named = inputs
            .first()
            .and_then(|d| d.params.first().cloned().flatten());
        let rows_first =
            batch.is_some() && inputs.iter().all(|d| d.meta.shape.first() == Some(&-1));
        let declared = rows_first
            && outputs.iter().all(|d| {
                d.meta.shape.first() == Some(&-1)
                    && match (d.params.first().cloned().flatten(), &named) {
                        (Some(p), Some(n)) => &p == n,
                        _ => true,
                    }
            });
        let ort = OrtModel::load(
            path,
            inputs.iter().map(|d| d.meta.name.clone()).collect(),
            outputs.iter().map(|d| d.meta.name.clone()).collect(),
            settings,
        )?;
        let mut model = OnnxModel {
            runner: Runner::OnnxRuntime(ort),
            signature: Signature {
                inputs: inputs.into_iter().map(|d| d.meta).collect(),
                outputs: outputs.into_iter().map(|d| d.meta).collect(),
                batched: declared,
            },
        };
        if rows_first && !declared {
            model.probe_batch();
        }
        Ok(model)
    }

    /// For a model whose inputs take rows on their first axis but whose outputs do not say:
    /// runs it on 1 and 2 rows of zeros and serves it batched when every output has as many
    /// rows on its first axis; each output's first axis then reads `-1`. Output shapes the
    /// graph leaves unstated are taken from the runs, `-1` where the two differ. A run that
    /// fails leaves the model unbatched, with a warning (its warm-up runs one row again and
    /// fails there if that is what failed).
    fn probe_batch(&mut self) {
        self.signature.batched = true;
        let runs: anyhow::Result<Vec<Vec<Tensor>>> = [1, 2]
            .into_iter()
            .map(|rows| self.run(self.sample_inputs(rows)?))
            .collect();
        let runs = match runs {
            Ok(runs) => runs,
            Err(e) => {
                self.signature.batched = false;
                tracing::warn!(error = %format!("{e:#}"), "ONNX Runtime: a run on 1 or 2 rows failed, so the model serves unbatched");
                return;
            }
        };
        let batched = runs
            .iter()
            .zip([1, 2])
            .all(|(outputs, rows)| outputs.iter().all(|t| t.shape().first() == Some(&rows)));
        self.signature.batched = batched;
        for (meta, (one, two)) in self
            .signature
            .outputs
            .iter_mut()
            .zip(runs[0].iter().zip(&runs[1]))
        {
            if meta.shape.is_empty() {
                meta.shape = two
                    .shape()
                    .iter()
                    .zip(one.shape().iter().chain(std::iter::repeat(&0)))
                    .map(|(&a, &b)| if a == b { a as i64 } else { -1 })
                    .collect();
            }
            if batched {
                meta.shape[0] = -1;
            }
        }
        if !batched {
            tracing::info!("ONNX Runtime: the outputs do not keep the inputs' rows on their first axis, so the model serves unbatched");
        }
    }

    fn load_tract(path: &Path, overrides: Option<&ModelToml>) -> anyhow::Result<OnnxModel> {
        let onnx = tract_onnx::onnx();
        let (inputs, mut outputs) = declared_tensors(path, overrides)?;
        let mut model = onnx
            .model_for_path(path)
            .with_context(|| format!("parsing {}", path.display()))?;
        let batch = batch_param(&inputs).map(|p| model.symbols.sym(&p));
        for (ix, d) in inputs.iter().enumerate() {
            let dims: Vec<TDim> = d
                .meta
                .shape
                .iter()
                .zip(&d.params)
                .enumerate()
                .map(|(axis, (size, param))| match (size, param) {
                    (-1, _) if axis == 0 && batch.is_some() => {
                        TDim::Sym(batch.clone().expect("checked"))
                    }
                    (-1, Some(p)) => TDim::Sym(model.symbols.sym(p)),
                    (-1, None) => TDim::Sym(model.symbols.sym(&format!("{}_{axis}", d.meta.name))),
                    (n, _) => TDim::Val(*n),
                })
                .collect();
            let fact = InferenceFact::dt_shape(datum_type(d.meta.datatype), dims);
            model.set_input_fact(ix, fact)?;
        }
        let typed = model
            .into_optimized()
            .with_context(|| format!("optimising {}", path.display()))?;

        let batched = match &batch {
            None => false,
            Some(sym) => {
                let b = TDim::Sym(sym.clone());
                let inputs_ok = inputs.iter().all(|d| d.meta.shape.first() == Some(&-1));
                let outputs_ok = typed
                    .output_outlets()?
                    .iter()
                    .map(|o| typed.outlet_fact(*o))
                    .collect::<TractResult<Vec<_>>>()?
                    .iter()
                    .all(|f| f.shape.iter().next() == Some(&b));
                inputs_ok && outputs_ok
            }
        };
        // Shapes the graph left unstated come from tract's analysis.
        let facts: Vec<TypedFact> = typed
            .output_outlets()?
            .iter()
            .map(|o| typed.outlet_fact(*o).cloned())
            .collect::<TractResult<_>>()?;
        for (d, fact) in outputs.iter_mut().zip(&facts) {
            if d.meta.shape.is_empty() && fact.rank() > 0 {
                d.meta.shape = fact
                    .shape
                    .iter()
                    .map(|dim| dim.to_i64().unwrap_or(-1))
                    .collect();
            }
        }
        let plan = typed.into_runnable()?;
        let signature = Signature {
            inputs: inputs.into_iter().map(|d| d.meta).collect(),
            outputs: outputs.into_iter().map(|d| d.meta).collect(),
            batched,
        };
        Ok(OnnxModel {
            runner: Runner::Tract(plan),
            signature,
        })
    }

    /// The engine it runs in.
    pub fn backend(&self) -> Backend {
        match self.runner {
            Runner::Tract(_) => Backend::Tract,
            Runner::OnnxRuntime(_) => Backend::OnnxRuntime,
        }
    }

    /// Sizes the engine's threads for `instances` runs at once: ONNX Runtime's sessions get
    /// their share of the cores; tract runs each on the calling thread alone.
    pub fn set_instances(&self, instances: usize) -> anyhow::Result<()> {
        match &self.runner {
            Runner::Tract(_) => Ok(()),
            Runner::OnnxRuntime(m) => m.set_instances(instances),
        }
    }

    /// Threads one run uses: 1 for tract, the session's intra-op threads for ONNX Runtime.
    pub fn threads_per_run(&self) -> usize {
        match &self.runner {
            Runner::Tract(_) => 1,
            Runner::OnnxRuntime(m) => m.threads(),
        }
    }

    /// Inputs of `rows` batch rows (for a batched model; else the declared shape), all zeros,
    /// with every other dynamic dimension 1: for warm-up and profiling runs.
    pub fn sample_inputs(&self, rows: usize) -> anyhow::Result<TVec<TValue>> {
        let sig = &self.signature;
        sig.inputs
            .iter()
            .map(|m| {
                let shape: Vec<usize> = m
                    .shape
                    .iter()
                    .enumerate()
                    .map(|(axis, d)| match *d {
                        -1 if axis == 0 && sig.batched => rows,
                        -1 => 1,
                        d => d as usize,
                    })
                    .collect();
                Ok(Tensor::zero_dt(datum_type(m.datatype), &shape)?.into())
            })
            .collect()
    }

    /// Runs the model on inputs in signature order; returns outputs in signature order, each
    /// converted to its declared datatype.
    pub fn run(&self, inputs: TVec<TValue>) -> anyhow::Result<Vec<Tensor>> {
        self.run_at(inputs, Priority::RealTime)
    }

    /// [`OnnxModel::run`] for work of `priority`: ONNX Runtime keeps separate sessions for
    /// low-priority runs (see [`OrtModel`]).
    pub fn run_at(&self, inputs: TVec<TValue>, priority: Priority) -> anyhow::Result<Vec<Tensor>> {
        let outputs: TVec<TValue> = match &self.runner {
            Runner::Tract(plan) => plan.run(inputs)?,
            Runner::OnnxRuntime(m) => m
                .run(&inputs, priority == Priority::Low)?
                .into_iter()
                .map(TValue::from)
                .collect(),
        };
        outputs
            .into_iter()
            .zip(&self.signature.outputs)
            .map(|(value, meta)| {
                let want = datum_type(meta.datatype);
                let t = value.into_tensor();
                if t.datum_type() == want {
                    Ok(t)
                } else {
                    Ok(t.cast_to_dt(want)
                        .with_context(|| format!("output '{}' as {}", meta.name, meta.datatype))?
                        .into_owned())
                }
            })
            .collect()
    }
}

/// Stacks the data of several same-typed wire tensors along a new or existing first axis into one
/// tract tensor of `shape`: one copy from the request buffers into the batch buffer.
pub fn stack(dt: DataType, shape: &[usize], parts: &[&TensorData]) -> anyhow::Result<Tensor> {
    match dt {
        DataType::Bytes => {
            let mut strings = Vec::new();
            for part in parts {
                let TensorData::Bytes(items) = part else {
                    bail!("BYTES tensor without BYTES data")
                };
                for item in items {
                    strings.push(String::from_utf8(item.to_vec()).map_err(|_| {
                        anyhow!("BYTES elements must be UTF-8 text for this model")
                    })?);
                }
            }
            let array =
                tract_ndarray::ArrayD::from_shape_vec(tract_ndarray::IxDyn(shape), strings)?;
            Ok(array.into())
        }
        _ => {
            let mut t = Tensor::zero_dt(datum_type(dt), shape)?;
            let buf = t.as_bytes_mut();
            let mut at = 0;
            for part in parts {
                let TensorData::Fixed(bytes) = part else {
                    bail!("{dt} tensor with BYTES data")
                };
                buf.get_mut(at..at + bytes.len())
                    .ok_or_else(|| anyhow!("batch parts exceed the batch shape {shape:?}"))?
                    .copy_from_slice(bytes);
                at += bytes.len();
            }
            if at != buf.len() {
                bail!("batch parts fill {at} of {} bytes", buf.len());
            }
            Ok(t)
        }
    }
}

/// Rows `start..end` of `t` (along its first axis; the whole tensor when it has no rows) as
/// wire data.
pub fn rows(t: &Tensor, start: usize, end: usize) -> anyhow::Result<(Vec<u64>, TensorData)> {
    let mut shape: Vec<u64> = t.shape().iter().map(|d| *d as u64).collect();
    let whole = shape.is_empty() || (start == 0 && end as u64 == shape[0]);
    if !whole {
        shape[0] = (end - start) as u64;
    }
    if t.datum_type() == DatumType::String {
        let view = t.try_as_plain_ram()?;
        let all = view.as_slice::<String>()?;
        let per_row = if t.rank() == 0 {
            1
        } else {
            t.len() / t.shape()[0].max(1)
        };
        let range = if whole {
            0..all.len()
        } else {
            start * per_row..end * per_row
        };
        let items = all[range]
            .iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect();
        return Ok((shape, TensorData::Bytes(items)));
    }
    let bytes = t.as_bytes();
    if whole {
        return Ok((shape, TensorData::Fixed(Bytes::copy_from_slice(bytes))));
    }
    let row_bytes = bytes.len() / t.shape()[0].max(1);
    Ok((
        shape,
        TensorData::Fixed(Bytes::copy_from_slice(
            &bytes[start * row_bytes..end * row_bytes],
        )),
    ))
}
