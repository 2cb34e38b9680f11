//! Logging through `tracing`: JSON lines (or text) on stdout, and optionally JSON lines in daily
//! (or hourly) rolling files. Background threads do the writing: a request only formats its
//! lines and leaves them in memory.

mod writer;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing_appender::rolling::{Builder, Rotation};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};
use writer::WriterGuard;

/// How the process logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `json` (one JSON object per line) or `text`, on stdout.
    pub format: String,
    /// A tracing filter such as `info` or `info,vatic_server=debug`; `RUST_LOG` wins when set.
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

/// Bytes of lines held for a log writer, at most (about 80,000 access lines); past that, new
/// lines are dropped and counted (`dropped_lines`) rather than make requests wait for a stalled
/// disk or pipe.
const HELD_BYTES: usize = 32 << 20;

/// How long a log writer lets lines gather before it writes them out.
const WRITE_PERIOD: Duration = Duration::from_millis(10);

/// The drop counters of the installed writers.
static DROPPED: Mutex<Vec<Arc<AtomicU64>>> = Mutex::new(Vec::new());

/// Keeps the background log writers running. Dropping it writes out what they hold and stops
/// them, so keep it until the process ends.
pub struct LogGuard {
    _writers: Vec<WriterGuard>,
}

impl LogGuard {
    /// Leaves the writers running until the process exits, for a process that never gets to
    /// drop the guard (a test binary). Lines are written as they come, not only when the guard
    /// drops; what is still held at exit is lost.
    pub fn keep(self) {
        std::mem::forget(self);
    }
}

/// Log lines dropped so far because a writer already held as much as it may.
pub fn dropped_lines() -> u64 {
    let counters = DROPPED.lock().unwrap_or_else(|e| e.into_inner());
    counters.iter().map(|c| c.load(Ordering::Relaxed)).sum()
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
    let (out, out_guard) =
        writer::spawn(std::io::stdout(), "log-stdout", HELD_BYTES, WRITE_PERIOD)?;
    let mut counters = vec![out.dropped()];
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
            let (writer, guard) = writer::spawn(appender, "log-file", HELD_BYTES, WRITE_PERIOD)?;
            counters.push(writer.dropped());
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
        .fmt_fields(SpanFields::default())
        .with_writer(writer)
}

/// A span's fields as one JSON object, as tracing-subscriber's `JsonFields` writes them, except
/// that fields recorded after the span was made are added to the end of the object. `JsonFields`
/// parses the object and writes it again on every `record`, which cost a request served at
/// concurrency 64 about 5% of the server's CPU (the request span's `version` is recorded when
/// the path names none). A field recorded twice appears twice, and the later one is the one a
/// line shows: the JSON event formatter reads these objects into a map.
#[derive(Debug, Default)]
struct SpanFields(JsonFields);

impl<'w> FormatFields<'w> for SpanFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> std::fmt::Result {
        self.0.format_fields(writer, fields)
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        let mut added = String::new();
        self.0.format_fields(Writer::new(&mut added), fields)?;
        if current.fields.is_empty() || current.fields == "{}" {
            current.fields = added;
            return Ok(());
        }
        // Both are objects: `{"a":1,...}`, and `{}` or `{"b":2,...}`.
        let tail = added.strip_prefix('{').ok_or(std::fmt::Error)?;
        if !current.fields.ends_with('}') {
            return Err(std::fmt::Error);
        }
        if tail != "}" {
            current.fields.pop();
            current.fields.push(',');
            current.fields.push_str(tail);
        }
        Ok(())
    }
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

    #[test]
    fn host_names_become_safe_file_name_parts() {
        assert_eq!(file_safe("a1b2c3d4e5f6"), "a1b2c3d4e5f6");
        assert_eq!(file_safe("node-1.example.com"), "node-1.example.com");
        assert_eq!(file_safe("bad/name with space"), "bad_name_with_space");
        assert!(!host_name().is_empty());
    }

    /// Collects what a layer writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The `span` object of each JSON line logged by `log`.
    fn span_objects(log: impl FnOnce()) -> Vec<serde_json::Value> {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::registry().with(json_layer(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| {
                let line: serde_json::Value = serde_json::from_str(line).unwrap();
                line["span"].clone()
            })
            .collect()
    }

    #[test]
    fn fields_recorded_later_join_the_span_object() {
        let spans = span_objects(|| {
            let span = tracing::info_span!(
                "request",
                request_id = "r-1",
                model = "m",
                version = None::<&str>
            );
            span.in_scope(|| tracing::info!("before"));
            span.record("version", "3 \"quoted\"");
            span.in_scope(|| tracing::info!("after"));
            span.record("version", "4");
            span.in_scope(|| tracing::info!("again"));
            let bare = tracing::info_span!("bare", version = tracing::field::Empty);
            bare.record("version", "5");
            bare.in_scope(|| tracing::info!("bare"));
            let none = tracing::info_span!("none", version = tracing::field::Empty);
            none.record("version", None::<&str>);
            none.in_scope(|| tracing::info!("none"));
        });
        let want = [
            serde_json::json!({"name": "request", "request_id": "r-1", "model": "m"}),
            serde_json::json!({"name": "request", "request_id": "r-1", "model": "m", "version": "3 \"quoted\""}),
            serde_json::json!({"name": "request", "request_id": "r-1", "model": "m", "version": "4"}),
            serde_json::json!({"name": "bare", "version": "5"}),
            serde_json::json!({"name": "none"}),
        ];
        assert_eq!(spans, want);
    }
}
