//! The ONNX Runtime engine, through the `ort` crate. The library (`libonnxruntime.so`) is loaded
//! when the first version asking for it loads, from `onnxruntime.library`, else the
//! `ORT_DYLIB_PATH` environment variable, else the loader's search path; without it such a
//! version fails to load, naming the setting, and tract versions are unaffected.
//!
//! Tensors stay tract tensors on both sides of a run: the batcher stacks and splits them the same
//! way for both engines. Inputs are handed to ONNX Runtime as views (no copy); outputs are copied
//! out once.

use anyhow::{anyhow, bail, Context};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, TensorElementType, TensorRef};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use tract_onnx::prelude::{DatumType, TValue, TVec, Tensor};

/// The environment variable the `ort` crate reads the library's path from.
pub const LIBRARY_ENV: &str = "ORT_DYLIB_PATH";

/// `[onnxruntime]`: where the library is and how its threads behave.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OnnxRuntimeSettings {
    /// Path of `libonnxruntime.so` (1.20 or later). Unset: `ORT_DYLIB_PATH`, else
    /// `libonnxruntime.so` on the dynamic loader's search path.
    pub library: Option<PathBuf>,
    /// Let ONNX Runtime's intra-op threads spin while they wait for work: a little less latency
    /// for a model alone on the machine, at the cost of cores the HTTP threads and other
    /// versions could use.
    pub spinning: bool,
}

impl OnnxRuntimeSettings {
    /// The library to load, and where that choice came from (for error messages).
    fn library(&self) -> (PathBuf, String) {
        if let Some(path) = &self.library {
            return (path.clone(), "onnxruntime.library".into());
        }
        match std::env::var_os(LIBRARY_ENV).filter(|v| !v.is_empty()) {
            Some(path) => (PathBuf::from(path), LIBRARY_ENV.into()),
            None => (
                PathBuf::from("libonnxruntime.so"),
                "the loader's search path (neither onnxruntime.library nor ORT_DYLIB_PATH is set)"
                    .into(),
            ),
        }
    }
}

/// The process's ONNX Runtime environment, once the library has loaded. A failed load is not
/// kept: the next version asking for the engine tries again.
static ENVIRONMENT: Mutex<Option<ort::environment::Environment>> = Mutex::new(None);

/// Loads the library (once per process) and returns the environment sessions are made in.
pub fn environment(
    settings: &OnnxRuntimeSettings,
) -> anyhow::Result<ort::environment::Environment> {
    let mut env = ENVIRONMENT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(env) = &*env {
        return Ok(env.clone());
    }
    let (path, from) = settings.library();
    let builder = ort::init_from(&path).map_err(|e| {
        anyhow!(
            "the onnxruntime engine needs libonnxruntime.so: loading {} (from {from}) failed: {e}. \
             Set onnxruntime.library (or ORT_DYLIB_PATH) to the library's path; \
             scripts/install-onnxruntime.sh installs it",
            path.display()
        )
    })?;
    let built = builder
        .with_name("vatic")
        .build()
        .map_err(|e| anyhow!("starting ONNX Runtime from {}: {e}", path.display()))?;
    tracing::info!(library = %path.display(), from = %from, "ONNX Runtime loaded");
    *env = Some(built.clone());
    Ok(built)
}

/// The cores a version's instances share: each instance's session gets `cores / instances`
/// intra-op threads (at least one), so that instances x threads never exceed the cores.
pub fn threads_per_instance(instances: usize) -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    (cores / instances.max(1)).max(1)
}

/// A model loaded into ONNX Runtime: sessions made on demand, one per model run at once, each
/// with the intra-op threads of the instance count last set.
///
/// Low-priority runs have sessions of their own, made on the first low-priority run of each
/// low-priority runner, on its thread: the session's intra-op threads inherit that thread's
/// idle scheduling class, and a real-time run never takes such a session.
pub struct OrtModel {
    environment: ort::environment::Environment,
    bytes: Vec<u8>,
    inputs: Vec<String>,
    outputs: Vec<String>,
    spinning: bool,
    /// Intra-op threads of the sessions runs use now.
    threads: AtomicUsize,
    /// Sessions not running, with the pool each belongs to.
    idle: Mutex<Vec<(Pool, Session)>>,
}

/// Which runs may take a session: those of its priority, while the instance count it was sized
/// for holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pool {
    /// Its intra-op threads.
    threads: usize,
    /// Whether it serves low-priority runs.
    low: bool,
}

impl OrtModel {
    /// Loads `path` into ONNX Runtime (checking it with one session), for inputs and outputs
    /// named `inputs` and `outputs` in the order runs give and take them.
    pub fn load(
        path: &Path,
        inputs: Vec<String>,
        outputs: Vec<String>,
        settings: &OnnxRuntimeSettings,
    ) -> anyhow::Result<OrtModel> {
        let environment = environment(settings)?;
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let model = OrtModel {
            environment,
            bytes,
            inputs,
            outputs,
            spinning: settings.spinning,
            threads: AtomicUsize::new(threads_per_instance(1)),
            idle: Mutex::new(Vec::new()),
        };
        let pool = model.pool(false);
        let session = model.session(pool.threads)?;
        let names = |outlets: &[ort::value::Outlet]| {
            outlets
                .iter()
                .map(|o| o.name().to_string())
                .collect::<Vec<_>>()
        };
        for (what, ours, theirs) in [
            ("inputs", &model.inputs, names(session.inputs())),
            ("outputs", &model.outputs, names(session.outputs())),
        ] {
            if let Some(missing) = ours.iter().find(|n| !theirs.contains(n)) {
                bail!("ONNX Runtime sees no '{missing}' among the model's {what} ({theirs:?})");
            }
        }
        model.give_back(pool, session);
        Ok(model)
    }

    /// Sizes the sessions of later runs for `instances` runs at once (see
    /// [`threads_per_instance`]) and makes that many ready for real-time runs; idle sessions
    /// of another size are dropped.
    pub fn set_instances(&self, instances: usize) -> anyhow::Result<()> {
        let threads = threads_per_instance(instances);
        self.threads.store(threads, Ordering::Relaxed);
        let pool = self.pool(false);
        let ready = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            idle.retain(|(p, _)| p.threads == threads);
            idle.iter().filter(|(p, _)| *p == pool).count()
        };
        for _ in ready..instances {
            let session = self.session(threads)?;
            self.give_back(pool, session);
        }
        Ok(())
    }

    /// The pool runs of this priority take sessions from now.
    fn pool(&self, low: bool) -> Pool {
        Pool {
            threads: self.threads.load(Ordering::Relaxed),
            low,
        }
    }

    /// Idle sessions for real-time and for low-priority runs.
    #[cfg(test)]
    fn idle_sessions(&self) -> (usize, usize) {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let low = idle.iter().filter(|(p, _)| p.low).count();
        (idle.len() - low, low)
    }

    /// Intra-op threads of each session now.
    pub fn threads(&self) -> usize {
        self.threads.load(Ordering::Relaxed)
    }

    fn session(&self, threads: usize) -> anyhow::Result<Session> {
        let err = |e: ort::Error<_>| anyhow!("ONNX Runtime session options: {e}");
        let mut builder = Session::builder(&self.environment)
            .map_err(|e| anyhow!("ONNX Runtime session: {e}"))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(err)?
            .with_intra_threads(threads)
            .map_err(err)?
            // One operator at a time: the inter-op pool is not used, its one thread is this one.
            .with_parallel_execution(false)
            .map_err(err)?
            .with_inter_threads(1)
            .map_err(err)?
            .with_intra_op_spinning(self.spinning)
            .map_err(err)?
            .with_inter_op_spinning(false)
            .map_err(err)?;
        builder
            .commit_from_memory(&self.bytes)
            .map_err(|e| anyhow!("ONNX Runtime cannot load the model: {e}"))
    }

    fn give_back(&self, pool: Pool, session: Session) {
        if pool.threads == self.threads.load(Ordering::Relaxed) {
            self.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((pool, session));
        }
    }

    /// Runs the model on inputs in signature order; returns its outputs in signature order.
    /// `low`: a low-priority run, on a session of its own (see [`OrtModel`]).
    pub fn run(&self, inputs: &TVec<TValue>, low: bool) -> anyhow::Result<Vec<Tensor>> {
        let pool = self.pool(low);
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            let found = idle.iter().rposition(|(p, _)| *p == pool);
            found.map(|i| idle.swap_remove(i).1)
        };
        let mut session = match idle {
            Some(s) => s,
            None => self.session(pool.threads)?,
        };
        let result = self.run_on(&mut session, inputs);
        self.give_back(pool, session);
        result
    }

    fn run_on(&self, session: &mut Session, inputs: &TVec<TValue>) -> anyhow::Result<Vec<Tensor>> {
        let values = inputs
            .iter()
            .zip(&self.inputs)
            .map(|(t, name)| {
                Ok((
                    name.as_str(),
                    to_ort(t).with_context(|| format!("input '{name}'"))?,
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let outputs = session
            .run(values)
            .map_err(|e| anyhow!("ONNX Runtime run: {e}"))?;
        self.outputs
            .iter()
            .map(|name| {
                let value = outputs
                    .get(name)
                    .ok_or_else(|| anyhow!("ONNX Runtime gave no output '{name}'"))?;
                from_ort(value).with_context(|| format!("output '{name}'"))
            })
            .collect()
    }
}

/// A view of a tract tensor as an ONNX Runtime input (strings are copied).
fn to_ort(t: &Tensor) -> anyhow::Result<SessionInputValue<'_>> {
    let shape: Vec<i64> = t.shape().iter().map(|d| *d as i64).collect();
    let plain = t.try_as_plain_ram()?;
    macro_rules! view {
        ($ty:ty) => {
            TensorRef::<$ty>::from_array_view((shape, plain.as_slice::<$ty>()?))?.into()
        };
    }
    Ok(match t.datum_type() {
        DatumType::F32 => view!(f32),
        DatumType::F64 => view!(f64),
        DatumType::F16 => view!(half::f16),
        DatumType::I8 => view!(i8),
        DatumType::I16 => view!(i16),
        DatumType::I32 => view!(i32),
        DatumType::I64 => view!(i64),
        DatumType::U8 => view!(u8),
        DatumType::U16 => view!(u16),
        DatumType::U32 => view!(u32),
        DatumType::U64 => view!(u64),
        DatumType::Bool => view!(bool),
        DatumType::String => {
            ort::value::Tensor::from_string_array((shape, plain.as_slice::<String>()?))?.into()
        }
        other => bail!("ONNX Runtime takes no {other:?} tensors here"),
    })
}

/// An ONNX Runtime output as a tract tensor.
fn from_ort(value: &DynValue) -> anyhow::Result<Tensor> {
    let ty = value
        .dtype()
        .tensor_type()
        .ok_or_else(|| anyhow!("it is not a tensor"))?;
    macro_rules! copy {
        ($ty:ty) => {{
            let (shape, data) = value.try_extract_tensor::<$ty>()?;
            Tensor::from_shape::<$ty>(&dims(shape), data)?
        }};
    }
    Ok(match ty {
        TensorElementType::Float32 => copy!(f32),
        TensorElementType::Float64 => copy!(f64),
        TensorElementType::Float16 => copy!(half::f16),
        TensorElementType::Int8 => copy!(i8),
        TensorElementType::Int16 => copy!(i16),
        TensorElementType::Int32 => copy!(i32),
        TensorElementType::Int64 => copy!(i64),
        TensorElementType::Uint8 => copy!(u8),
        TensorElementType::Uint16 => copy!(u16),
        TensorElementType::Uint32 => copy!(u32),
        TensorElementType::Uint64 => copy!(u64),
        TensorElementType::Bool => copy!(bool),
        TensorElementType::String => {
            let (shape, strings) = value.try_extract_strings()?;
            tract_onnx::prelude::tract_ndarray::ArrayD::from_shape_vec(
                tract_onnx::prelude::tract_ndarray::IxDyn(&dims(shape)),
                strings,
            )?
            .into()
        }
        other => bail!("ONNX Runtime gave a {other:?} tensor, which vatic does not serve"),
    })
}

fn dims(shape: &ort::value::Shape) -> Vec<usize> {
    shape.iter().map(|d| (*d).max(0) as usize).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::prelude::tvec;

    /// Real-time runs never take a session made for low-priority runs, whose threads run at the
    /// idle scheduling class; each kind keeps its own.
    #[test]
    fn low_priority_runs_have_sessions_of_their_own() {
        let fixture = vatic_testkit::fixture("cnn");
        let settings = OnnxRuntimeSettings {
            library: Some(vatic_testkit::onnxruntime_library()),
            spinning: false,
        };
        let names = |tensors: &[vatic_testkit::FixtureTensor]| {
            tensors.iter().map(|t| t.name.clone()).collect::<Vec<_>>()
        };
        let model = OrtModel::load(
            &vatic_testkit::model_dir("cnn").join("1/model.onnx"),
            names(&fixture.inputs),
            names(&fixture.outputs),
            &settings,
        )
        .unwrap();
        model.set_instances(1).unwrap();
        assert_eq!(model.idle_sessions(), (1, 0));
        let shape: Vec<usize> = fixture.inputs[0]
            .shape
            .iter()
            .map(|d| *d as usize)
            .collect();
        let inputs: TVec<TValue> = tvec![Tensor::zero::<f32>(&shape).unwrap().into()];

        let low = model.run(&inputs, true).unwrap();
        assert_eq!(model.idle_sessions(), (1, 1), "the low run made its own");
        let real_time = model.run(&inputs, false).unwrap();
        assert_eq!(
            model.idle_sessions(),
            (1, 1),
            "the real-time run took its own"
        );
        assert_eq!(low, real_time, "both kinds of session run the same model");
        model.run(&inputs, true).unwrap();
        assert_eq!(model.idle_sessions(), (1, 1), "the low session is reused");

        // Sized again for two instances: sessions of another size go, low ones included.
        model.set_instances(2).unwrap();
        let resized = threads_per_instance(2) != threads_per_instance(1);
        assert_eq!(model.idle_sessions(), (2, usize::from(!resized)));
    }
}
