//! The model profiler: runs a loaded model with its raw engine (tract or ONNX Runtime), on this
//! machine, for a grid of batch sizes and instance counts (threads running the model side by
//! side; with ONNX Runtime each has its share of the cores), and recommends
//! the batching settings that give the most samples a second. Batching is chosen by measurement:
//! on a CPU, a convolutional network can be slower per sample at batch 32 than at batch 1.
//! Instances are chosen for serving: a model whose batch runs are cheaper than waking a thread
//! gets one instance, since a second one would only add threads beside the HTTP threads.

use crate::config::BatchingConfig;
use crate::onnx::{Backend, OnnxModel};
use crate::onnxruntime::OnnxRuntimeSettings;
use anyhow::Context;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::time::{Duration, Instant};

/// Load-time profiling: a version whose `model.toml` has no `[batching]` is profiled when it
/// loads, before it reports ready, and serves with the recommended batch size and instances.
/// The worker's `[batching]` settings bound the grid (`max_batch_size`, `instances`) and give
/// every other batching value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProfileSettings {
    /// Profile at load.
    pub at_load: bool,
    /// How long each cell of the grid runs, in milliseconds.
    pub cell_ms: u64,
    /// A batch size whose one-instance runs take at most this long, in microseconds, is served
    /// with one instance (see [`Grid::one_instance_us`]); 0 turns this off. Unset: the value of
    /// `[batching] inline_max_us`, which was this bound's name before it had its own.
    pub one_instance_max_us: Option<u64>,
}

impl Default for ProfileSettings {
    fn default() -> Self {
        ProfileSettings {
            at_load: true,
            cell_ms: 25,
            one_instance_max_us: None,
        }
    }
}

impl ProfileSettings {
    /// Refuses settings that cannot work, naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.cell_ms == 0 {
            anyhow::bail!("profile.cell_ms must be at least 1");
        }
        Ok(())
    }

    /// The load-time grid: batch sizes 1, 2, 4, ... up to `bounds.max_batch_size` (and it),
    /// 1 to `bounds.instances` instances.
    pub fn grid(&self, bounds: &BatchingConfig) -> Grid {
        let mut batch_sizes: Vec<usize> = std::iter::successors(Some(1usize), |b| Some(b * 2))
            .take_while(|b| *b <= bounds.max_batch_size)
            .collect();
        if batch_sizes.last() != Some(&bounds.max_batch_size) {
            batch_sizes.push(bounds.max_batch_size);
        }
        Grid {
            batch_sizes,
            instances: (1..=bounds.instances).collect(),
            duration: Duration::from_millis(self.cell_ms),
            min_runs: 3,
            one_instance_us: self.one_instance_max_us.unwrap_or(bounds.inline_max_us),
        }
    }
}

/// What to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    /// Batch sizes in rows; a model without a batch dimension runs its declared shape only.
    pub batch_sizes: Vec<usize>,
    /// Instance counts.
    pub instances: Vec<usize>,
    /// How long each cell runs, after one warm-up run per instance.
    pub duration: Duration,
    /// Model runs each cell makes at least, however long they take.
    pub min_runs: u64,
    /// A batch size whose one-instance runs take at most this long (median, in µs) is
    /// recommended with one instance: a request then waits less for the run in progress than
    /// a second runner thread takes to wake, and the cores stay with the HTTP threads
    /// ([`ProfileSettings::one_instance_max_us`]); 0 leaves the instances to throughput alone.
    pub one_instance_us: u64,
}

impl Grid {
    /// Batch sizes 1, 2, 4, ... up to `max_batch`, and 1 to `cores` instances (capped at 8).
    pub fn standard(max_batch: usize, duration: Duration) -> Grid {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let batch_sizes = std::iter::successors(Some(1usize), |b| Some(b * 2))
            .take_while(|b| *b <= max_batch.max(1))
            .collect();
        Grid {
            batch_sizes,
            instances: (1..=cores.min(8)).collect(),
            duration,
            min_runs: 3,
            one_instance_us: ProfileSettings::default()
                .grid(&BatchingConfig::default())
                .one_instance_us,
        }
    }
}

/// One cell of the grid.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    /// Rows per model run.
    pub batch_size: usize,
    /// Threads running the model at once.
    pub instances: usize,
    /// Model runs made, all instances together.
    pub runs: u64,
    /// Rows (samples) a second, all instances together.
    pub samples_per_second: f64,
    /// Time of one model run, in microseconds: median.
    pub run_p50_us: f64,
    /// Time of one model run, in microseconds: 99th percentile.
    pub run_p99_us: f64,
}

/// The settings a profile recommends.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    /// `max_batch_size` for `[batching]`: 1 when batching does not pay on this machine.
    pub max_batch_size: usize,
    /// `instances` for `[batching]`.
    pub instances: usize,
    /// The samples a second of the cell it comes from.
    pub samples_per_second: f64,
    /// The best samples a second of the grid.
    pub best_samples_per_second: f64,
    /// Whether the instances are one because the runs are cheap (see
    /// [`Grid::one_instance_us`]), where throughput alone asked for more.
    pub cheap_runs: bool,
}

impl Recommendation {
    /// `defaults` with the recommended batch size and instances.
    pub fn apply(&self, defaults: &BatchingConfig) -> BatchingConfig {
        BatchingConfig {
            max_batch_size: self.max_batch_size,
            instances: self.instances,
            preferred_batch_sizes: defaults
                .preferred_batch_sizes
                .iter()
                .copied()
                .filter(|p| *p <= self.max_batch_size)
                .collect(),
            ..defaults.clone()
        }
    }
}

/// A whole profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    /// Whether the model has a batch dimension (else only its declared shape was run).
    pub batched: bool,
    /// Every cell, by instances then batch size.
    pub cells: Vec<Cell>,
    /// What to configure.
    pub recommended: Recommendation,
}

/// Cells within this share of the best throughput count as good as the best; among them the
/// smallest batch, then the fewest instances, wins (less latency and memory for the same work).
const GOOD_ENOUGH: f64 = 0.95;

/// The recommendation from measured cells: the smallest batch, then the fewest instances,
/// within [`GOOD_ENOUGH`] of the best throughput; then one instance at that batch size if its
/// runs take at most `one_instance_us` (see [`Grid::one_instance_us`]).
fn recommend(cells: &[Cell], one_instance_us: u64) -> Option<Recommendation> {
    let best = cells
        .iter()
        .map(|c| c.samples_per_second)
        .fold(0.0, f64::max);
    let fastest = cells
        .iter()
        .filter(|c| c.samples_per_second >= GOOD_ENOUGH * best)
        .min_by_key(|c| (c.batch_size, c.instances))?;
    let cheap = cells.iter().find(|c| {
        c.instances == 1
            && c.batch_size == fastest.batch_size
            && c.run_p50_us <= one_instance_us as f64
    });
    let chosen = cheap.unwrap_or(fastest);
    Some(Recommendation {
        max_batch_size: chosen.batch_size,
        instances: chosen.instances,
        samples_per_second: chosen.samples_per_second,
        best_samples_per_second: best,
        cheap_runs: chosen.instances < fastest.instances,
    })
}

/// Runs `model` over `grid`.
pub fn profile(model: &OnnxModel, grid: &Grid) -> anyhow::Result<Profile> {
    let batched = model.signature.batched;
    let batch_sizes = if batched {
        grid.batch_sizes.clone()
    } else {
        vec![1]
    };
    anyhow::ensure!(
        !batch_sizes.is_empty() && !grid.instances.is_empty(),
        "a profile needs at least one batch size and one instance count"
    );
    let mut cells = Vec::new();
    for &instances in &grid.instances {
        for &batch_size in &batch_sizes {
            cells.push(measure(model, batch_size, instances, grid)?);
        }
    }
    let recommended =
        recommend(&cells, grid.one_instance_us).expect("the best cell is good enough");
    Ok(Profile {
        batched,
        cells,
        recommended,
    })
}

/// One cell: `instances` threads each run batches of `rows` until the cell's time is up. Each
/// thread makes one run first, untimed: the first run at a shape, and the first on a thread, pay
/// for lazy initialisation, which would count against small batches (whose cells hold few
/// runs) and make large ones look better than they are. The clock starts when every thread is
/// warm.
pub fn measure(
    model: &OnnxModel,
    rows: usize,
    instances: usize,
    grid: &Grid,
) -> anyhow::Result<Cell> {
    model.set_instances(instances)?;
    let inputs = model.sample_inputs(rows)?;
    let context = || format!("profiling run with {rows} row(s) on {instances} instance(s)");
    let warm = std::sync::Barrier::new(instances + 1);
    let (started, per_thread) = std::thread::scope(|s| {
        let threads: Vec<_> = (0..instances)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<Histogram<u64>> {
                    let warm_up = model.run(inputs.clone());
                    // Every thread reaches the barrier, whatever its warm-up did.
                    warm.wait();
                    warm_up?;
                    let deadline = Instant::now() + grid.duration;
                    let mut h = Histogram::<u64>::new(3).expect("valid histogram");
                    let mut runs = 0u64;
                    while runs < grid.min_runs.div_ceil(instances as u64)
                        || Instant::now() < deadline
                    {
                        let t = Instant::now();
                        model.run(inputs.clone())?;
                        h.record(t.elapsed().as_nanos().max(1) as u64)?;
                        runs += 1;
                    }
                    Ok(h)
                })
            })
            .collect();
        warm.wait();
        let started = Instant::now();
        let per_thread: Vec<anyhow::Result<Histogram<u64>>> = threads
            .into_iter()
            .map(|t| t.join().expect("a profiling thread panicked"))
            .collect();
        (started, per_thread)
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut all = Histogram::<u64>::new(3).expect("valid histogram");
    for h in per_thread {
        all.add(h.with_context(context)?)?;
    }
    let runs = all.len();
    Ok(Cell {
        batch_size: rows,
        instances,
        runs,
        samples_per_second: (runs * rows as u64) as f64 / elapsed,
        run_p50_us: all.value_at_quantile(0.5) as f64 / 1000.0,
        run_p99_us: all.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

/// Arguments of `vatic-worker profile`.
#[derive(Debug, clap::Args)]
pub struct ProfileArgs {
    /// The ONNX model file
    pub model: std::path::PathBuf,
    /// A model.toml with signature overrides (its [batching] section is ignored here)
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Batch sizes to run [default: 1, 2, 4, ... up to --max-batch]
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub batch_sizes: Vec<usize>,
    /// The largest batch size of the default grid
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub max_batch: usize,
    /// Instance counts to run [default: 1 to the number of cores, at most 8]
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub instances: Vec<usize>,
    /// How long each cell of the grid runs
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s", value_name = "TIME")]
    pub duration: Duration,
    /// The engine to run the model in
    #[arg(long, value_enum, default_value = "tract")]
    pub engine: ProfileEngine,
    /// ONNX Runtime's library, for `--engine onnxruntime` [default: ORT_DYLIB_PATH, else the
    /// loader's search path]
    #[arg(long, value_name = "FILE")]
    pub onnxruntime_library: Option<std::path::PathBuf>,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

/// The engines `vatic-worker profile` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProfileEngine {
    /// tract
    Tract,
    /// ONNX Runtime, each instance a session with its share of the cores
    Onnxruntime,
}

/// Runs `vatic-worker profile`: loads the model as the worker would, profiles it and prints
/// each cell and the recommended `[batching]` settings.
pub fn run_cli(args: &ProfileArgs) -> anyhow::Result<()> {
    let mut grid = Grid::standard(args.max_batch, args.duration);
    if !args.batch_sizes.is_empty() {
        grid.batch_sizes = args.batch_sizes.clone();
    }
    if !args.instances.is_empty() {
        grid.instances = args.instances.clone();
    }
    if grid.batch_sizes.contains(&0) || grid.instances.contains(&0) || args.max_batch == 0 {
        anyhow::bail!("batch sizes and instance counts must be at least 1");
    }
    if args.duration.is_zero() {
        anyhow::bail!("--duration must be more than 0");
    }
    let overrides = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            crate::config::ModelToml::parse(&text, &path.display().to_string())?
        }
        None => None,
    };
    let backend = match args.engine {
        ProfileEngine::Tract => Backend::Tract,
        ProfileEngine::Onnxruntime => Backend::OnnxRuntime,
    };
    let onnxruntime = OnnxRuntimeSettings {
        library: args.onnxruntime_library.clone(),
        ..Default::default()
    };
    let model = OnnxModel::load_with(&args.model, overrides.as_ref(), backend, &onnxruntime)?;
    let profile = profile(&model, &grid)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &profile)?;
        writeln!(out)?;
    } else {
        print_table(
            &args.model,
            backend,
            &profile,
            grid.one_instance_us,
            &mut out,
        )?;
    }
    Ok(())
}

fn print_table(
    model: &std::path::Path,
    backend: Backend,
    p: &Profile,
    one_instance_us: u64,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    writeln!(
        out,
        "{} on {} core(s), raw {backend} engine",
        model.display(),
        cores()
    )?;
    if !p.batched {
        writeln!(
            out,
            "the model has no batch dimension: each run takes its declared shape"
        )?;
    }
    writeln!(
        out,
        "{:>9} {:>9} {:>8} {:>12} {:>12} {:>12} {:>12}",
        "instances", "batch", "runs", "samples/s", "run p50 ms", "run p99 ms", "us/sample"
    )?;
    for c in &p.cells {
        writeln!(
            out,
            "{:>9} {:>9} {:>8} {:>12.1} {:>12.3} {:>12.3} {:>12.1}",
            c.instances,
            c.batch_size,
            c.runs,
            c.samples_per_second,
            c.run_p50_us / 1000.0,
            c.run_p99_us / 1000.0,
            1e6 / c.samples_per_second.max(f64::MIN_POSITIVE),
        )?;
    }
    let r = &p.recommended;
    writeln!(
        out,
        "\nrecommended ({:.1} samples/s; the best cell does {:.1}):",
        r.samples_per_second, r.best_samples_per_second
    )?;
    if r.cheap_runs {
        writeln!(
            out,
            "one instance: at batch {} a run takes at most {} us, less than waking a second runner \
             (docs/batching.md)",
            r.max_batch_size, one_instance_us
        )?;
    }
    writeln!(
        out,
        "\n[batching]\nmax_batch_size = {}\ninstances = {}",
        r.max_batch_size, r.instances
    )?;
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_time_grid_stays_within_the_batching_bounds() {
        let bounds = BatchingConfig {
            max_batch_size: 12,
            instances: 3,
            ..BatchingConfig::default()
        };
        let grid = ProfileSettings::default().grid(&bounds);
        assert_eq!(grid.batch_sizes, [1, 2, 4, 8, 12]);
        assert_eq!(grid.instances, [1, 2, 3]);
        assert_eq!(grid.duration, Duration::from_millis(25));
        assert_eq!(grid.one_instance_us, bounds.inline_max_us);
        let own = ProfileSettings {
            one_instance_max_us: Some(40),
            ..ProfileSettings::default()
        };
        assert_eq!(own.grid(&bounds).one_instance_us, 40);
        let off = BatchingConfig {
            inline_max_us: 0,
            ..bounds
        };
        assert_eq!(
            own.grid(&off).one_instance_us,
            40,
            "its own bound, whatever inline_max_us says"
        );
    }

    fn cell(instances: usize, batch_size: usize, samples_per_second: f64, run_p50_us: f64) -> Cell {
        Cell {
            batch_size,
            instances,
            runs: 100,
            samples_per_second,
            run_p50_us,
            run_p99_us: run_p50_us * 2.0,
        }
    }

    /// A small model: runs of tens of microseconds, twice the throughput on two instances.
    fn cheap() -> Vec<Cell> {
        vec![
            cell(1, 1, 150_000.0, 6.0),
            cell(1, 32, 900_000.0, 35.0),
            cell(2, 1, 290_000.0, 7.0),
            cell(2, 32, 1_750_000.0, 36.0),
        ]
    }

    #[test]
    fn a_model_whose_runs_are_cheaper_than_a_wake_up_gets_one_instance() {
        let r = recommend(&cheap(), 100).unwrap();
        assert_eq!((r.max_batch_size, r.instances), (32, 1), "{r:?}");
        assert_eq!(r.samples_per_second, 900_000.0);
        assert_eq!(r.best_samples_per_second, 1_750_000.0);
        assert!(r.cheap_runs);
    }

    #[test]
    fn without_the_one_instance_bound_throughput_alone_decides() {
        let r = recommend(&cheap(), 0).unwrap();
        assert_eq!((r.max_batch_size, r.instances), (32, 2), "{r:?}");
        assert!(!r.cheap_runs);
        // Runs longer than the bound keep the instances throughput asks for.
        let r = recommend(&cheap(), 30).unwrap();
        assert_eq!((r.max_batch_size, r.instances), (32, 2), "{r:?}");
    }

    #[test]
    fn a_compute_heavy_model_keeps_its_instances() {
        // A convolutional network: 10 ms a run, slower per sample in larger batches.
        let cells = [
            cell(1, 1, 105.0, 9_400.0),
            cell(1, 8, 65.0, 123_000.0),
            cell(2, 1, 189.0, 10_000.0),
            cell(2, 8, 110.0, 145_000.0),
        ];
        let r = recommend(&cells, 100).unwrap();
        assert_eq!((r.max_batch_size, r.instances), (1, 2), "{r:?}");
        assert_eq!(r.samples_per_second, 189.0);
    }

    #[test]
    fn the_table_says_when_cheap_runs_chose_one_instance() {
        let table = |bound: u64| {
            let p = Profile {
                batched: true,
                cells: cheap(),
                recommended: recommend(&cheap(), bound).unwrap(),
            };
            let mut out = Vec::new();
            print_table(
                std::path::Path::new("m.onnx"),
                Backend::Tract,
                &p,
                bound,
                &mut out,
            )
            .unwrap();
            String::from_utf8(out).unwrap()
        };
        let cheap_text = table(100);
        assert!(
            cheap_text.contains("one instance: at batch 32 a run takes at most 100 us"),
            "{cheap_text}"
        );
        assert!(
            cheap_text.ends_with("max_batch_size = 32\ninstances = 1\n"),
            "{cheap_text}"
        );
        let plain = table(0);
        assert!(!plain.contains("one instance:"), "{plain}");
        assert!(plain.ends_with("instances = 2\n"), "{plain}");
    }

    #[test]
    fn no_cells_make_no_recommendation() {
        assert!(recommend(&[], 100).is_none());
    }

    #[test]
    fn a_zero_cell_time_is_refused_by_name() {
        let bad = ProfileSettings {
            cell_ms: 0,
            ..ProfileSettings::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "profile.cell_ms must be at least 1"
        );
        assert!(ProfileSettings::default().validate().is_ok());
    }
}
