//! Test support: the committed fixtures and their onnxruntime references, temporary model
//! repositories, and small HTTP helpers. Used only by integration tests.

#![forbid(unsafe_code)]

mod db;
pub mod onnx;
mod proxy;
pub use db::TestDb;
pub use proxy::TcpProxy;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The workspace's top folder.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// Folder of a committed test model: `testdata/models/<name>`, or the demo under `models/`.
pub fn model_dir(name: &str) -> PathBuf {
    let demo = root().join("models").join(name);
    if demo.is_dir() {
        demo
    } else {
        root().join("testdata/models").join(name)
    }
}

/// Every committed model with an `expected.json`: the fixtures both engines are checked on.
pub const FIXTURES: [&str; 5] = ["cnn", "fixed_batch", "int64", "resnet", "two_io"];

/// ONNX Runtime's library for tests of the onnxruntime engine: `ORT_DYLIB_PATH`, else where
/// `scripts/install-onnxruntime.sh` puts it (scripts/test.sh runs that script first).
pub fn onnxruntime_library() -> PathBuf {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let output = std::process::Command::new(root().join("scripts/install-onnxruntime.sh"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("running scripts/install-onnxruntime.sh");
    assert!(
        output.status.success(),
        "scripts/install-onnxruntime.sh failed: the onnxruntime engine's tests need its library"
    );
    PathBuf::from(String::from_utf8(output.stdout).expect("a path").trim())
}

/// One tensor of a fixture's `expected.json`.
#[derive(Debug, Clone)]
pub struct FixtureTensor {
    /// Name.
    pub name: String,
    /// V2 datatype.
    pub datatype: String,
    /// Shape.
    pub shape: Vec<u64>,
    /// Flat values.
    pub data: Vec<Value>,
}

/// A fixture's inputs and the outputs onnxruntime computed for them.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// Inputs.
    pub inputs: Vec<FixtureTensor>,
    /// Expected outputs.
    pub outputs: Vec<FixtureTensor>,
}

fn tensors(v: &Value) -> Vec<FixtureTensor> {
    v.as_object()
        .expect("an object of tensors")
        .iter()
        .map(|(name, t)| FixtureTensor {
            name: name.clone(),
            datatype: t["datatype"].as_str().expect("datatype").to_string(),
            shape: t["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_u64().expect("dim"))
                .collect(),
            data: t["data"].as_array().expect("data").clone(),
        })
        .collect()
}

/// Reads `testdata/models/<name>/expected.json`.
pub fn fixture(name: &str) -> Fixture {
    let text =
        std::fs::read_to_string(model_dir(name).join("expected.json")).expect("expected.json");
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    Fixture {
        inputs: tensors(&v["inputs"]),
        outputs: tensors(&v["outputs"]),
    }
}

impl Fixture {
    /// The V2 JSON request body for the fixture's inputs.
    pub fn v2_request(&self) -> Value {
        let inputs: Vec<Value> = self
            .inputs
            .iter()
            .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape, "data": t.data}))
            .collect();
        json!({ "inputs": inputs })
    }

    /// Checks a V2 JSON response against the expected outputs (floats within `1e-5`).
    pub fn check_response(&self, resp: &Value) {
        let outputs = resp["outputs"].as_array().expect("outputs");
        assert_eq!(outputs.len(), self.outputs.len(), "output count in {resp}");
        for want in &self.outputs {
            let got = outputs
                .iter()
                .find(|o| o["name"] == want.name.as_str())
                .expect("output present");
            assert_eq!(
                got["datatype"],
                want.datatype.as_str(),
                "datatype of {}",
                want.name
            );
            let shape: Vec<u64> = got["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            assert_eq!(shape, want.shape, "shape of {}", want.name);
            assert_values(
                &want.name,
                got["data"].as_array().expect("data"),
                &want.data,
            );
        }
    }
}

/// Asserts two flat value lists agree: integers exactly, floats within `1e-5` absolute.
pub fn assert_values(name: &str, got: &[Value], want: &[Value]) {
    assert_eq!(got.len(), want.len(), "element count of {name}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if w.is_i64() || w.is_u64() {
            assert_eq!(g, w, "{name}[{i}]");
        } else {
            let (g, w) = (g.as_f64().expect("number"), w.as_f64().expect("number"));
            assert!((g - w).abs() <= 1e-5, "{name}[{i}]: got {g}, want {w}");
        }
    }
}

/// The demo model's reference rows and onnxruntime outputs.
#[derive(Debug, Clone)]
pub struct DemoReference {
    /// Feature rows (30 values each).
    pub inputs: Vec<Vec<f64>>,
    /// Expected labels.
    pub label: Vec<i64>,
    /// Expected probabilities, two per row.
    pub probabilities: Vec<Vec<f64>>,
}

/// Reads `models/breast_cancer/reference.json`.
pub fn demo_reference() -> DemoReference {
    let text = std::fs::read_to_string(model_dir("breast_cancer").join("reference.json"))
        .expect("reference");
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    let rows = |key: &str| -> Vec<Vec<f64>> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect()
            })
            .collect()
    };
    DemoReference {
        inputs: rows("inputs"),
        label: v["label"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect(),
        probabilities: rows("probabilities"),
    }
}

impl DemoReference {
    /// A V2 JSON request for reference rows `rows`.
    pub fn v2_request(&self, rows: std::ops::Range<usize>) -> Value {
        let data: Vec<f64> = self.inputs[rows.clone()]
            .iter()
            .flatten()
            .copied()
            .collect();
        json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows.len(), 30], "data": data}]})
    }

    /// Checks a V2 JSON response to `v2_request(rows)`.
    pub fn check_response(&self, resp: &Value, rows: std::ops::Range<usize>) {
        let out = |name: &str| {
            resp["outputs"]
                .as_array()
                .expect("outputs")
                .iter()
                .find(|o| o["name"] == name)
                .unwrap_or_else(|| panic!("{name} in {resp}"))
                .clone()
        };
        let label = out("label");
        let want: Vec<Value> = self.label[rows.clone()].iter().map(|l| json!(l)).collect();
        assert_values("label", label["data"].as_array().unwrap(), &want);
        let want: Vec<Value> = self.probabilities[rows]
            .iter()
            .flatten()
            .map(|p| json!(p))
            .collect();
        assert_values(
            "probabilities",
            out("probabilities")["data"].as_array().unwrap(),
            &want,
        );
    }
}

/// A model to place in a temporary repository.
pub struct RepoModel<'a> {
    /// Name in the repository.
    pub name: &'a str,
    /// Committed model whose `1/model.onnx` is copied.
    pub source: &'a str,
    /// Contents of `<name>/model.toml`, if any.
    pub model_toml: Option<&'a str>,
}

/// Builds a temporary repository: `<tmp>/<name>/1/model.onnx` (+ `model.toml`) per model.
pub fn repo(models: &[RepoModel<'_>]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for m in models {
        let version = dir.path().join(m.name).join("1");
        std::fs::create_dir_all(&version).expect("mkdir");
        std::fs::copy(
            model_dir(m.source).join("1/model.onnx"),
            version.join("model.onnx"),
        )
        .expect("copy model");
        if let Some(toml) = m.model_toml {
            std::fs::write(dir.path().join(m.name).join("model.toml"), toml)
                .expect("write model.toml");
        }
    }
    dir
}

/// Polls `url` until it answers 200, for at most 60 seconds.
pub async fn wait_ok(client: &reqwest::Client, url: &str) {
    for _ in 0..600 {
        if let Ok(r) = client.get(url).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} did not answer 200 within 60 s");
}

/// GETs `url`; returns the status and the JSON body (`null` when the body is not JSON).
pub async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// POSTs `body` as JSON to `url`; returns the status and the JSON body.
pub async fn post_json(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = client
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// In a Prometheus text exposition, the value of the sample of `name` whose labels include
/// all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or_default();
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit_once(' '))
        .map(|(_, v)| v.parse().expect("a number"))
}

/// A client of a server whose certificate is `cert`, laid out as `vaticctl certs init` writes
/// them: it trusts `ca.crt` beside `cert` (or `cert` itself, self-signed, when there is none)
/// and, when `mutual`, presents `api-client.crt` from there.
pub fn tls_client(cert: &Path, mutual: bool) -> reqwest::Client {
    let dir = cert.parent().expect("a folder");
    let ca = Some(dir.join("ca.crt"))
        .filter(|ca| ca.is_file())
        .unwrap_or_else(|| cert.to_path_buf());
    let settings = vatic_tls::ClientTlsSettings {
        ca: Some(ca),
        cert: mutual.then(|| dir.join("api-client.crt")),
        key: mutual.then(|| dir.join("api-client.key")),
        server_name: None,
    };
    let tls = vatic_tls::ClientTls::new(&settings, NAMES).expect("the test certificates");
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls.config).clone())
        .tls_info(true)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

const NAMES: vatic_tls::SettingNames = vatic_tls::SettingNames {
    ca: "ca",
    cert: "cert",
    key: "key",
    server_name: "server_name",
};
