use serde_json::Value;
use std::io::{BufRead, BufReader, Lines};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vatic_api::settings::{ApiSettings, Mode};
use vatic_api::Application;
use vatic_testkit::TestDb;

/// An api started on 127.0.0.1:0 for one test.
pub struct TestApi {
    pub base: String,
    pub client: reqwest::Client,
    pub app: Application,
    _repo: Option<tempfile::TempDir>,
}

impl TestApi {
    /// Standalone over the repository's own `models/` folder.
    pub async fn standalone() -> TestApi {
        Self::start(
            standalone_settings(vatic_testkit::root().join("models")),
            None,
        )
        .await
    }

    pub async fn start(settings: ApiSettings, repo: Option<tempfile::TempDir>) -> TestApi {
        Self::start_until(settings, repo, "/v2/health/ready").await
    }

    /// Starts an api and waits until it answers 200 at `probe` (`/v2/health/live` for one
    /// that cannot be ready, such as a cluster api with no worker).
    pub async fn start_until(
        settings: ApiSettings,
        repo: Option<tempfile::TempDir>,
        probe: &str,
    ) -> TestApi {
        if std::env::var_os("TEST_LOG").is_some() {
            if let Some(log) =
                vatic_server::telemetry::init(&Default::default(), "test").expect("logging")
            {
                log.keep();
            }
        }
        let app = Application::build(&settings).await.expect("api builds");
        app.spawn();
        let base = format!("{}://{}", app.server.scheme, app.server.addr);
        let client = match &settings.server.tls.cert {
            Some(cert) => vatic_testkit::tls_client(cert, settings.server.tls.client_ca.is_some()),
            None => reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        };
        vatic_testkit::wait_ok(&client, &format!("{base}{probe}")).await;
        TestApi {
            base,
            client,
            app,
            _repo: repo,
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        post_json(&self.client, &self.base, path, body).await
    }

    pub async fn stop(self) {
        self.app.shutdown(Duration::ZERO).await;
    }
}

/// Steady load: requests to the demo model from `clients` tasks until [`Traffic::stop`];
/// counts successes and keeps every other answer.
pub struct Traffic {
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    pub fn start(api: &TestApi, clients: usize) -> Traffic {
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let request = vatic_testkit::demo_reference().v2_request(0..1);
        let tasks = (0..clients)
            .map(|_| {
                let (client, base) = (api.client.clone(), api.base.clone());
                let (ok, failures, stop) = (ok.clone(), failures.clone(), stop.clone());
                let request = request.clone();
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let (status, body) =
                            post_json(&client, &base, "/v2/models/breast_cancer/infer", &request)
                                .await;
                        if status == 200 {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failures.lock().unwrap().push(format!("{status} {body}"));
                        }
                    }
                })
            })
            .collect();
        Traffic {
            ok,
            failures,
            stop,
            tasks,
        }
    }

    /// Successes so far.
    pub fn served(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the load; returns the number of successes and every other answer.
    pub async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("traffic task");
        }
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

pub async fn post_json(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    body: &Value,
) -> (u16, Value) {
    let r = client
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .expect("POST");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// A POST of a V2 request with the binary tensor extension, its header length set.
pub fn binary_post(
    client: &reqwest::Client,
    url: &str,
    request: vatic_schema::v2::Encoded,
) -> reqwest::RequestBuilder {
    let json_length = request.header_length.expect("a request with a binary part");
    client
        .post(url)
        .header("Inference-Header-Content-Length", json_length.to_string())
        .header("Content-Type", "application/octet-stream")
        .body(request.body)
}

/// The rows of the first table under `heading` in the workspace file `path`, each a list of
/// its cells with surrounding spaces and backticks taken off; only rows whose first cell is in
/// backticks (not the header or the rule).
pub fn doc_table(path: &str, heading: &str) -> Vec<Vec<String>> {
    let doc = std::fs::read_to_string(vatic_testkit::root().join(path)).expect(path);
    let section = doc
        .split(&format!("{heading}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("{path} has a '{heading}' section"));
    section
        .split("\n#")
        .next()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').collect();
            cells[1..cells.len() - 1]
                .iter()
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect()
        })
        .collect()
}

/// Standalone on `models_dir` with one instance per version and no load-time profiling, so
/// tests see the batching settings they set.
pub fn standalone_settings(models_dir: PathBuf) -> ApiSettings {
    let mut s = ApiSettings::standalone();
    s.server.listen = "127.0.0.1:0".into();
    s.engine.models_dir = models_dir;
    s.engine.batching.instances = 1;
    s.engine.profile.at_load = false;
    s
}

/// Standalone on the registry database at `url`, importing `models_dir`, with its artifact
/// cache, uploads and spool under `dir`.
pub fn registry_standalone_settings(url: &str, models_dir: PathBuf, dir: &Path) -> ApiSettings {
    let mut s = standalone_settings(models_dir);
    s.server.database.url = Some(url.to_string());
    s.server.database.migrate = true;
    s.import_models = true;
    s.registry.cache_dir = dir.join("cache");
    s.registry.poll_ms = 500;
    s.upload_dir = dir.join("uploads");
    s.prediction_log.spool_dir = dir.join("spool");
    s
}

/// A cluster api that finds its workers in the fleet table of `db`, with uploads and spool
/// under `dir`.
pub async fn registry_api(db: &TestDb, dir: &Path) -> TestApi {
    let mut settings = cluster_settings(Vec::new());
    settings.server.database.url = Some(db.url.clone());
    settings.fleet_refresh_ms = 200;
    settings.heartbeat_timeout_ms = 3000;
    settings.upload_dir = dir.join("uploads");
    settings.prediction_log.spool_dir = dir.join("spool");
    TestApi::start(settings, None).await
}

/// Migrates the test database.
pub async fn migrated(db: &TestDb) {
    vatic_store::Store::open(&vatic_store::ConnectOptions::new(db.url.clone()), true)
        .await
        .expect("migrate the test database");
}

/// Polls `GET url` until it answers `status`; panics after `within`.
pub async fn wait_status(client: &reqwest::Client, url: &str, status: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = client.get(url).send().await.map(|r| r.status().as_u16());
        if got.as_ref().ok() == Some(&status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} still answers {got:?}, not {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Posts `body` to the api's `path` until it answers `status`; returns that answer's body.
/// Panics after `within`.
pub async fn wait_post(
    api: &TestApi,
    path: &str,
    body: &Value,
    status: u16,
    within: Duration,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (got, answer) = api.post_json(path, body).await;
        if got == status {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still answers {got} {answer}, not {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn cluster_settings(workers: Vec<String>) -> ApiSettings {
    let mut s = ApiSettings {
        mode: Mode::Cluster,
        workers,
        health_interval_ms: 100,
        worker_timeout_ms: 30_000,
        ..Default::default()
    };
    s.server.listen = "127.0.0.1:0".into();
    // Keys are tested in auth.rs; the other tests run the cluster open.
    s.auth.enabled = Some(false);
    s
}

/// A vatic server process (a worker, or an api) on 127.0.0.1:0; killed when dropped.
pub struct ServerProcess {
    pub child: Child,
    pub url: String,
    /// Its log lines so far.
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` (a vatic server) in `dir` with JSON logs, and reads its stdout up to the
/// `ready_message` line that names its address. Returns the process, that address, and the rest
/// of its log, not read yet.
pub fn start_until_ready(
    mut cmd: Command,
    dir: &Path,
    ready_message: &str,
) -> (Child, String, Lines<BufReader<ChildStdout>>) {
    let mut child = cmd
        .current_dir(dir)
        .env("VATIC_LOG__FORMAT", "json")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting a vatic server");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("the server exited before listening")
            .expect("reading the server log");
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if v["message"] == ready_message {
            let scheme = v["scheme"].as_str().unwrap_or("http");
            break format!("{scheme}://{}", v["addr"].as_str().expect("addr"));
        }
    };
    (child, url, lines)
}

/// A binary of the workspace beside this test binary, built first if needed.
pub fn binary(name: &str, package: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join(name);
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", package, "--bin", name])
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building {name}");
    }
    bin
}

/// The `i`th api process of a test, on the registry at `url` with keys off, its uploads and
/// spool under `dir`, with the extra settings `env`.
pub fn api_process(url: &str, dir: &Path, i: usize, env: &[(&str, &str)]) -> ServerProcess {
    let mut cmd = Command::new(binary("vatic-api", "vatic-api"));
    cmd.args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .env("VATIC_DATABASE__URL", url)
        .env("VATIC_AUTH__ENABLED", "false")
        .env("VATIC_FLEET_REFRESH_MS", "200")
        .env("VATIC_UPLOAD_DIR", dir.join(format!("uploads-{i}")))
        .env(
            "VATIC_PREDICTION_LOG__SPOOL_DIR",
            dir.join(format!("spool-{i}")),
        )
        .envs(env.iter().copied());
    ServerProcess::spawn(cmd, "api listening")
}

/// A worker process that takes its models from the registry at `url`. On PostgreSQL polling is
/// set to ten minutes, so anything it loads within a test's bounded wait came by notification;
/// SQLite has no notifications, so there it polls every 200 ms.
pub fn registry_worker(url: &str, cache: &Path) -> ServerProcess {
    let poll_ms = if url.starts_with("sqlite:") {
        "200"
    } else {
        "600000"
    };
    ServerProcess::start_with_env(&[
        ("VATIC_DATABASE__URL", url),
        ("VATIC_REGISTRY__CACHE_DIR", cache.to_str().unwrap()),
        ("VATIC_REGISTRY__POLL_MS", poll_ms),
        ("VATIC_REGISTRY__HEARTBEAT_MS", "200"),
    ])
}

impl ServerProcess {
    /// Starts a worker on the repository's `models/` and waits for the address it logs.
    pub fn start() -> ServerProcess {
        Self::start_with_env(&[])
    }

    /// Starts a worker with extra environment variables.
    pub fn start_with_env(env: &[(&str, &str)]) -> ServerProcess {
        Self::spawn(Self::worker_command(env), "worker listening")
    }

    /// The command that starts a worker on the repository's `models/`, with extra environment
    /// variables.
    pub fn worker_command(env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(binary("vatic-worker", "vatic-worker"));
        cmd.envs(env.iter().copied())
            .args(["--config", "config/worker.toml", "--listen", "127.0.0.1:0"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .env("VATIC_BATCHING__INSTANCES", "1")
            .env("VATIC_PROFILE__AT_LOAD", "false");
        cmd
    }

    /// Runs `cmd` (a vatic server) in the workspace root with JSON logs, and waits for the
    /// `ready_message` line that names its address. Its log lines are kept in `logs`.
    pub fn spawn(cmd: Command, ready_message: &str) -> ServerProcess {
        Self::spawn_in(cmd, &vatic_testkit::root(), ready_message)
    }

    /// [`ServerProcess::spawn`] with `dir` as the working directory.
    pub fn spawn_in(cmd: Command, dir: &Path, ready_message: &str) -> ServerProcess {
        let (child, url, lines) = start_until_ready(cmd, dir, ready_message);
        // Keep reading the log, so the server never blocks on a full pipe.
        let logs = Arc::new(Mutex::new(Vec::new()));
        let kept = logs.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        ServerProcess { child, url, logs }
    }

    /// The JSON log lines so far whose request id is `id`.
    pub fn lines_of_request(&self, id: &str) -> Vec<Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["span"]["request_id"] == id)
            .collect()
    }
}

/// Runs vaticctl against the api, off the runtime's threads (the api serves on this runtime):
/// whether it succeeded, and its standard output and error.
pub async fn vaticctl(api: &TestApi, args: &[&str]) -> (bool, String) {
    vaticctl_at(&api.base, args).await
}

/// [`vaticctl`] against the server at `base`.
pub async fn vaticctl_at(base: &str, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(binary("vaticctl", "vatic-cli"))
        .current_dir(vatic_testkit::root())
        .arg("--server")
        .arg(base)
        .args(args)
        .output()
        .await
        .expect("running vaticctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
