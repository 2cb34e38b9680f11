use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;
use vatic_worker::{Engine, Worker, WorkerSettings};

/// A worker started on 127.0.0.1:0 for one test.
pub struct TestWorker {
    pub base: String,
    pub client: reqwest::Client,
    pub server: Worker,
    /// Base URL of the metrics endpoint, when enabled.
    pub metrics: Option<String>,
    _repo: Option<tempfile::TempDir>,
}

pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        if let Some(log) =
            vatic_server::telemetry::init(&Default::default(), "test").expect("logging")
        {
            log.keep();
        }
    }
}

impl TestWorker {
    /// Serves a temporary repository and waits until it is ready.
    pub async fn start(repo: tempfile::TempDir) -> TestWorker {
        let dir = repo.path().to_path_buf();
        Self::start_with(dir, Some(repo), |_| {}, true).await
    }

    pub async fn start_with(
        models_dir: PathBuf,
        repo: Option<tempfile::TempDir>,
        adjust: impl FnOnce(&mut WorkerSettings),
        wait_ready: bool,
    ) -> TestWorker {
        init_logs();
        let mut settings = WorkerSettings::default();
        settings.server.listen = "127.0.0.1:0".into();
        settings.engine.models_dir = models_dir;
        settings.engine.batching.instances = 1;
        settings.engine.profile.at_load = false;
        adjust(&mut settings);
        let server = vatic_worker::start(&settings).await.expect("worker starts");
        server.spawn();
        let base = format!("http://{}", server.addr);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        if wait_ready {
            vatic_testkit::wait_ok(&client, &format!("{base}/v2/health/ready")).await;
        }
        TestWorker {
            base,
            client,
            metrics: server.metrics_addr.map(|a| format!("http://{a}")),
            server,
            _repo: repo,
        }
    }

    /// The worker's engine.
    pub fn engine(&self) -> &Engine {
        self.server.service.engine()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("POST");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_raw(
        &self,
        path: &str,
        body: Vec<u8>,
        header_length: Option<usize>,
    ) -> reqwest::Response {
        let mut r = self.client.post(format!("{}{path}", self.base)).body(body);
        if let Some(n) = header_length {
            r = r.header("Inference-Header-Content-Length", n.to_string());
        }
        r.send().await.expect("POST")
    }

    /// The repository index once no version is still loading.
    pub async fn index(&self) -> Vec<Value> {
        for _ in 0..600 {
            let r = self
                .client
                .post(format!("{}/v2/repository/index", self.base))
                .send()
                .await
                .expect("POST");
            let index: Vec<Value> = r.json().await.expect("index JSON");
            if index.iter().all(|m| m["state"] != "LOADING") {
                return index;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("models still loading after 12 s");
    }

    pub async fn stats(&self, model: &str) -> Value {
        let (status, body) = self.get(&format!("/v2/models/{model}/stats")).await;
        assert_eq!(status, 200, "{body}");
        body["model_stats"][0].clone()
    }

    pub async fn stop(self) {
        self.server.shutdown(Duration::ZERO).await;
    }
}

pub fn one(name: &str) -> tempfile::TempDir {
    vatic_testkit::repo(&[vatic_testkit::RepoModel {
        name,
        source: name,
        model_toml: None,
    }])
}

pub fn with_toml(name: &str, toml: &str) -> tempfile::TempDir {
    vatic_testkit::repo(&[vatic_testkit::RepoModel {
        name,
        source: name,
        model_toml: Some(toml),
    }])
}
