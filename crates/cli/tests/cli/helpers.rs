use serde_json::Value;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use vatic_api::settings::ApiSettings;
use vatic_api::Application;
use vatic_testkit::TestDb;

/// The demo model's example files, relative to the workspace root (vaticctl's working folder).
pub const EXAMPLE_CSV: &str = "models/breast_cancer/example.csv";
pub const EXAMPLE_JSON: &str = "models/breast_cancer/example.json";

/// Longest a single vaticctl run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The api in standalone mode on the demo models, on 127.0.0.1:0, started once for every test
/// of this binary (the tests only read from it).
pub struct TestApp {
    pub base: String,
}

static APP: OnceLock<TestApp> = OnceLock::new();

impl TestApp {
    /// The running api, started and ready.
    pub fn get() -> &'static TestApp {
        APP.get_or_init(start)
    }

    /// Runs `vaticctl --server <api> <args>`.
    pub fn vaticctl(&self, args: &[&str]) -> Run {
        vaticctl(&self.base, args, None)
    }

    /// Runs `vaticctl --server <api> <args>` with `stdin` as standard input.
    pub fn vaticctl_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Run {
        vaticctl(&self.base, args, Some(stdin))
    }
}

fn start() -> TestApp {
    let (ready, base) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(async move {
                let mut settings = ApiSettings::standalone();
                settings.server.listen = "127.0.0.1:0".into();
                settings.engine.models_dir = vatic_testkit::root().join("models");
                settings.engine.profile.at_load = false;
                if std::env::var_os("TEST_LOG").is_some() {
                    if let Some(log) = vatic_server::telemetry::init(&settings.server.log, "test")
                        .expect("logging")
                    {
                        log.keep();
                    }
                }
                let app = Application::build(&settings).await.expect("api builds");
                app.spawn();
                let base = format!("http://{}", app.server.addr);
                let client = reqwest::Client::new();
                vatic_testkit::wait_ok(&client, &format!("{base}/v2/health/ready")).await;
                ready.send(base).expect("a test waits for the api");
                // Serve until the test binary exits.
                std::future::pending::<()>().await;
            });
        })
        .expect("api thread");
    let base = base
        .recv_timeout(Duration::from_secs(90))
        .expect("the api is ready within 90 s");
    TestApp { base }
}

/// An api of its own in standalone mode on its own database, for tests that change the
/// registry: the demo models are imported at start. Stopped when dropped, then the database is
/// dropped.
pub struct RegistryApp {
    pub base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    http: reqwest::blocking::Client,
    /// The database's URL.
    pub db_url: String,
    // Dropped after the api has stopped (fields drop after `Drop::drop`).
    db: Option<TestDb>,
    _dir: tempfile::TempDir,
}

impl RegistryApp {
    /// Migrates `db`, imports the demo models into it and serves them, ready.
    pub fn start(db: TestDb) -> RegistryApp {
        RegistryApp::start_with(db, |_| {})
    }

    /// [`RegistryApp::start`] with settings changed by `configure`.
    pub fn start_with(db: TestDb, configure: impl FnOnce(&mut ApiSettings)) -> RegistryApp {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = ApiSettings {
            import_models: true,
            upload_dir: dir.path().join("uploads"),
            fleet_refresh_ms: 200,
            ..ApiSettings::standalone()
        };
        settings.server.listen = "127.0.0.1:0".into();
        settings.engine.models_dir = vatic_testkit::root().join("models");
        settings.engine.profile.at_load = false;
        settings.server.database.url = Some(db.url.clone());
        settings.server.database.migrate = true;
        settings.registry.cache_dir = dir.path().join("cache");
        settings.registry.poll_ms = 200;
        settings.prediction_log.spool_dir = dir.path().join("spool");
        configure(&mut settings);
        let (ready, base) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("registry-api".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                runtime.block_on(async move {
                    let app = Application::build(&settings).await.expect("api builds");
                    app.spawn();
                    let base = format!("{}://{}", app.server.scheme, app.server.addr);
                    let client = match &settings.server.tls.cert {
                        Some(cert) => {
                            vatic_testkit::tls_client(cert, settings.server.tls.client_ca.is_some())
                        }
                        None => reqwest::Client::new(),
                    };
                    vatic_testkit::wait_ok(&client, &format!("{base}/v2/health/ready")).await;
                    ready.send(base).expect("a test waits for the api");
                    let _ = stopped.await;
                    app.shutdown(Duration::ZERO).await;
                });
            })
            .expect("api thread");
        let base = base
            .recv_timeout(Duration::from_secs(90))
            .expect("the api is ready within 90 s");
        RegistryApp {
            base,
            stop: Some(stop),
            thread: Some(thread),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("HTTP client"),
            db_url: db.url.clone(),
            db: Some(db),
            _dir: dir,
        }
    }

    /// Stops the api and starts it again on the same database, with settings changed by
    /// `configure` (the uploads and spool folder are new).
    pub fn restart_with(mut self, configure: impl FnOnce(&mut ApiSettings)) -> RegistryApp {
        self.stop();
        let db = self
            .db
            .take()
            .expect("the database is kept until the app is dropped");
        RegistryApp::start_with(db, configure)
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A panic in the api thread already failed the test that caused it.
            let _ = thread.join();
        }
    }

    /// Runs `vaticctl --server <api> <args>`.
    pub fn vaticctl(&self, args: &[&str]) -> Run {
        vaticctl(&self.base, args, None)
    }

    /// `GET {base}{path}`: status and JSON body (`null` when it is not JSON).
    pub fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        (r.status().as_u16(), r.json().unwrap_or(Value::Null))
    }

    /// `POST {base}{path}` with a JSON body: status and JSON body.
    pub fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        (r.status().as_u16(), r.json().unwrap_or(Value::Null))
    }

    /// Calls `call` until it answers `status`, for at most `within`; returns that answer's body.
    pub fn wait_for(
        &self,
        what: &str,
        status: u16,
        within: Duration,
        call: impl Fn() -> (u16, Value),
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (got, body) = call();
            if got == status {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{what} still answers {got} ({body}), not {status}, after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RegistryApp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a vaticctl run left: exit code and printed text.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts exit code 0 and nothing on stderr.
    pub fn assert_ok(&self) -> &Run {
        assert_eq!(self.code, Some(0), "{self:#?}");
        assert_eq!(self.stderr, "", "{self:#?}");
        self
    }

    /// Asserts what a `predictions export` that succeeded leaves: exit code 0 and one line on
    /// stderr counting the `n` records it wrote (stdout holds the records).
    pub fn assert_exported(&self, n: usize) -> &Run {
        assert_eq!(self.code, Some(0), "{self:#?}");
        assert_eq!(
            self.stderr,
            format!("{n} predictions exported\n"),
            "{self:#?}"
        );
        self
    }

    /// Asserts exit code 1, nothing on stdout, and one `error: ...` line that contains every
    /// one of `parts`.
    pub fn assert_error(&self, parts: &[&str]) {
        assert_eq!(self.code, Some(1), "{self:#?}");
        assert_eq!(self.stdout, "", "{self:#?}");
        assert!(self.stderr.starts_with("error: "), "{self:#?}");
        assert_eq!(self.stderr.lines().count(), 1, "{self:#?}");
        for part in parts {
            assert!(self.stderr.contains(part), "expected {part:?} in {self:#?}");
        }
    }

    /// Stdout as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {self:#?}"))
    }

    /// Stdout as a table: the header's cells, then each row's.
    pub fn table(&self) -> Vec<Vec<String>> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with('│'))
            .map(|l| {
                l.trim_matches('│')
                    .split('┆')
                    .map(|cell| cell.trim().to_string())
                    .collect()
            })
            .collect()
    }
}

/// Runs `vaticctl --server <server> <args>` in the workspace root, bounded by [`RUN_TIMEOUT`].
pub fn vaticctl(server: &str, args: &[&str], stdin: Option<&[u8]>) -> Run {
    vaticctl_with_env(server, args, stdin, &[])
}

/// [`vaticctl`] with `env` set; `VATIC_SERVER` and `DATABASE_URL` are unset unless `env` sets
/// them.
pub fn vaticctl_with_env(
    server: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vaticctl"))
        .arg("--server")
        .arg(server)
        .args(args)
        .current_dir(vatic_testkit::root())
        .env_remove("VATIC_SERVER")
        .env_remove("DATABASE_URL")
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vaticctl starts");
    let feed = stdin.map(|bytes| {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let bytes = bytes.to_vec();
        // Dropping the pipe at the end closes the child's standard input.
        std::thread::spawn(move || pipe.write_all(&bytes))
    });
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for vaticctl") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vaticctl {args:?} ran longer than {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if let Some(feed) = feed {
        feed.join().expect("stdin writer").expect("write stdin");
    }
    Run {
        code: status.code(),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        pipe.read_to_string(&mut text).expect("UTF-8 output");
        text
    })
}

/// The demo reference rows `rows` as CSV lines under a header.
pub fn reference_csv(rows: std::ops::Range<usize>) -> Vec<String> {
    let reference = vatic_testkit::demo_reference();
    let header = (0..30)
        .map(|i| format!("f{i}"))
        .collect::<Vec<_>>()
        .join(",");
    std::iter::once(header)
        .chain(reference.inputs[rows].iter().map(|row| {
            row.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(",")
        }))
        .collect()
}

/// Writes `lines` to a temporary `.csv` file.
pub fn csv_file(lines: &[String]) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .suffix(".csv")
        .tempfile()
        .expect("temp file");
    writeln!(file, "{}", lines.join("\n")).expect("write CSV");
    file
}
