//! Logging through `tracing`: JSON lines (or text) on stdout, and optionally JSON lines in daily
//! (or hourly) rolling files. Background threads do the writing: a request only formats its
//! lines and queues them.

use serde::{Deserialize, Serialize};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_appender::rolling::{Builder, Rotation};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How the process logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `json` (one JSON object per line) or `text`, on stdout.
    pub format: String,
    /// A tracing filter such as `info` or `info,vatic_worker=debug`; `RUST_LOG` wins when set.
    pub level: String,
    /// A folder for log files (JSON lines, whatever `format` says); none for stdout only.
    pub dir: Option<PathBuf>,
    /// When a new file starts: `daily`, `hourly` or `never`.
    pub rotation: String,
    /// Rotated files kept; older ones are deleted (0 keeps all).
    pub max_files: usize,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: "json".into(),
            level: "info".into(),
            dir: None,
            rotation: "daily".into(),
            max_files: 14,
        }
    }
}

impl LogSettings {
    /// Refuses settings that cannot work, naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !matches!(self.format.as_str(), "json" | "text") {
            anyhow::bail!("log.format must be json or text, not '{}'", self.format);
        }
        self.rotation()?;
        Ok(())
    }

    fn rotation(&self) -> anyhow::Result<Rotation> {
        Ok(match self.rotation.as_str() {
            "daily" => Rotation::DAILY,
            "hourly" => Rotation::HOURLY,
            "never" => Rotation::NEVER,
            other => anyhow::bail!("log.rotation must be daily, hourly or never, not '{other}'"),
        })
    }
}

/// Lines queued for a log writer, at most; past that, new lines are dropped and counted
/// (`dropped_lines`) rather than make requests wait for a stalled disk or pipe.
const QUEUED_LINES: usize = 128_000;

/// The drop counters of the installed writers.
static DROPPED: Mutex<Vec<ErrorCounter>> = Mutex::new(Vec::new());

/// Keeps the background log writers running. Dropping it writes out what they hold and stops
/// them, so keep it until the process ends.
pub struct LogGuard {
    _writers: Vec<WorkerGuard>,
}

impl LogGuard {
    /// Leaves the writers running until the process exits, for a process that never gets to
    /// drop the guard (a test binary). Lines are written as they come, not only when the guard
    /// drops; what is still queued at exit is lost.
    pub fn keep(self) {
        std::mem::forget(self);
    }
}

/// Log lines dropped so far because a writer's queue was full.
pub fn dropped_lines() -> u64 {
    let counters = DROPPED.lock().unwrap_or_else(|e| e.into_inner());
    counters.iter().map(|c| c.dropped_lines() as u64).sum()
}

/// A writer whose lines a thread named `thread` writes to `out`: each time it wakes, it takes
/// every line queued and writes them in one go, then flushes. Lines from all threads keep the
/// order they were logged in.
fn background<W: Write + Send + 'static>(
    out: W,
    thread: &str,
    queued_lines: usize,
) -> (NonBlocking, WorkerGuard) {
    NonBlockingBuilder::default()
        .buffered_lines_limit(queued_lines)
        .lossy(true)
        .thread_name(thread)
        .finish(BufWriter::with_capacity(64 * 1024, out))
}

/// Installs the global subscriber. Files in `settings.dir` are named `<name>.<host>.<date>.log`,
/// so replicas that share a log folder (a volume under docker compose) each write, rotate and
/// prune files of their own. Keep the returned guard until the process ends (see [`LogGuard`]).
/// A second call is ignored (tests start many servers) and returns no guard.
pub fn init(settings: &LogSettings, name: &str) -> anyhow::Result<Option<LogGuard>> {
    settings.validate()?;
    if tracing::dispatcher::has_been_set() {
        return Ok(None);
    }
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let (out, out_guard) = background(std::io::stdout(), "log-stdout", QUEUED_LINES);
    let mut counters = vec![out.error_counter()];
    let mut guards = vec![out_guard];
    let stdout = if settings.format == "text" {
        tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_writer(out)
            .boxed()
    } else {
        json_layer(out).boxed()
    };
    let file = match &settings.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("log.dir {}: {e}", dir.display()))?;
            let mut builder = Builder::new()
                .rotation(settings.rotation()?)
                .filename_prefix(format!("{name}.{}", file_safe(&host_name())))
                .filename_suffix("log");
            if settings.max_files > 0 {
                builder = builder.max_log_files(settings.max_files);
            }
            let appender = builder
                .build(dir)
                .map_err(|e| anyhow::anyhow!("log.dir {}: {e}", dir.display()))?;
            let (writer, guard) = background(appender, "log-file", QUEUED_LINES);
            counters.push(writer.error_counter());
            guards.push(guard);
            Some(json_layer(writer).boxed())
        }
        None => None,
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(stdout)
        .with(file)
        .try_init()
        .is_ok();
    if !installed {
        return Ok(None);
    }
    DROPPED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(counters);
    Ok(Some(LogGuard { _writers: guards }))
}

/// This machine's (or container's) host name: `$HOSTNAME`, else `/etc/hostname`, else
/// `localhost`.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// `name` with every character that does not belong in a file name replaced by `_`.
fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One JSON object per line: the event's fields at the top level, with the request span's
/// fields (request id, model, version) under `span`.
fn json_layer<S, W>(writer: W) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .with_writer(writer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_cannot_work_are_refused_by_name() {
        assert!(LogSettings::default().validate().is_ok());
        let bad_format = LogSettings {
            format: "xml".into(),
            ..Default::default()
        };
        assert_eq!(
            bad_format.validate().unwrap_err().to_string(),
            "log.format must be json or text, not 'xml'"
        );
        let bad_rotation = LogSettings {
            rotation: "weekly".into(),
            ..Default::default()
        };
        assert_eq!(
            bad_rotation.validate().unwrap_err().to_string(),
            "log.rotation must be daily, hourly or never, not 'weekly'"
        );
    }

    /// What the stalled sink has seen.
    #[derive(Default)]
    struct Sink {
        entered: bool,
        released: bool,
        written: Vec<u8>,
    }

    /// A sink that takes nothing until it is released, and tells when a write first reaches it.
    #[derive(Clone, Default)]
    struct Stalled {
        state: std::sync::Arc<(Mutex<Sink>, std::sync::Condvar)>,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (lock, changed) = &*self.state;
            let mut s = lock.lock().unwrap();
            s.entered = true;
            changed.notify_all();
            while !s.released {
                s = changed.wait(s).unwrap();
            }
            s.written.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_sink_never_holds_up_the_logger_and_lost_lines_are_counted() {
        let sink = Stalled::default();
        let (mut log, guard) = background(sink.clone(), "log-test", 4);
        let (lock, changed) = &*sink.state;
        log.write_all(b"line 0\n").unwrap();
        // Wait until the writer is stuck in the sink with line 0.
        let mut s = lock.lock().unwrap();
        while !s.entered {
            s = changed.wait(s).unwrap();
        }
        drop(s);
        for i in 1..=100 {
            log.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        assert_eq!(
            log.error_counter().dropped_lines(),
            96,
            "4 queued, 96 dropped"
        );
        lock.lock().unwrap().released = true;
        changed.notify_all();
        drop(guard);
        let written = String::from_utf8(lock.lock().unwrap().written.clone()).unwrap();
        assert_eq!(written, "line 0\nline 1\nline 2\nline 3\nline 4\n");
    }

    #[test]
    fn host_names_become_safe_file_name_parts() {
        assert_eq!(file_safe("a1b2c3d4e5f6"), "a1b2c3d4e5f6");
        assert_eq!(file_safe("node-1.example.com"), "node-1.example.com");
        assert_eq!(file_safe("bad/name with space"), "bad_name_with_space");
        assert!(!host_name().is_empty());
    }
}
