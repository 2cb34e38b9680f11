//! The request `vaticctl bench` sends: a V2 JSON, V2 binary or TF-Serving body, built once from
//! the model's metadata with random data (or from a V2 request file), and the path it goes to.

use crate::client::ModelRef;
use crate::infer::{json_request, RequestFile};
use anyhow::{bail, Context};
use bytes::Bytes;
use clap::ValueEnum;
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use vatic_schema::v2::{self, Encoded};
use vatic_schema::{DataType, InferRequest, ModelMetadata, Tensor, TensorData, TensorMetadata};

/// The wire form of the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// KServe V2 with JSON tensors
    V2Json,
    /// KServe V2 with the binary tensor extension, inputs and outputs
    V2Binary,
    /// TF-Serving's REST predict API, columnar form (`inputs`)
    Tfserving,
}

impl Protocol {
    /// The name `--protocol` takes.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::V2Json => "v2-json",
            Protocol::V2Binary => "v2-binary",
            Protocol::Tfserving => "tfserving",
        }
    }
}

/// One request, ready to send again and again.
#[derive(Debug, Clone)]
pub struct Body {
    /// The path on the server, e.g. `/v2/models/m/infer`.
    pub path: String,
    /// The body.
    pub bytes: Bytes,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// `Inference-Header-Content-Length`, for V2 binary bodies.
    pub header_length: Option<usize>,
    /// Batch rows per request.
    pub rows: u64,
    /// How requests other than the one above are made, when some are.
    pub variation: Option<Variation>,
}

/// Requests that differ: a share of them carry an input no other request has.
#[derive(Debug, Clone)]
pub struct Variation {
    /// Share of requests that are the body as it is.
    repeat: f64,
    /// Where the first input's first element is in the body, and its datatype.
    at: usize,
    datatype: DataType,
    /// Counts the unique requests; each takes its value from it.
    made: Arc<AtomicU64>,
}

impl Body {
    /// Makes a share `1 - repeat` of the requests unique: each changes the first element of the
    /// first input of `request` (encoded in this body) to a value no other request has, and
    /// that the random data never takes. Only V2 binary bodies, whose tensor bytes can be
    /// changed in place, and 32- or 64-bit datatypes, which hold enough distinct values.
    pub fn vary(
        &mut self,
        request: &InferRequest,
        protocol: Protocol,
        repeat: f64,
    ) -> anyhow::Result<()> {
        if protocol != Protocol::V2Binary {
            bail!("--repeat below 100% needs --protocol v2-binary");
        }
        let Some(first) = request.inputs.first() else {
            bail!("the request has no inputs");
        };
        if !matches!(
            first.datatype,
            DataType::Fp32
                | DataType::Fp64
                | DataType::Int32
                | DataType::Int64
                | DataType::Uint32
                | DataType::Uint64
        ) || first.shape.contains(&0)
        {
            bail!(
                "--repeat below 100% changes input '{}', whose datatype {} holds too few distinct values (it needs FP32, FP64 or a 32- or 64-bit integer)",
                first.name,
                first.datatype
            );
        }
        let at = self
            .header_length
            .context("a V2 binary body has a JSON header")?;
        self.variation = Some(Variation {
            repeat,
            at,
            datatype: first.datatype,
            // Another run (another process) starts elsewhere, so that runs against the same
            // server rarely repeat each other's unique requests.
            made: Arc::new(AtomicU64::new(rand::random::<u32>().into())),
        });
        Ok(())
    }

    /// The bytes of the next request.
    pub fn next(&self) -> Bytes {
        let Some(v) = &self.variation else {
            return self.bytes.clone();
        };
        if rand::random::<f64>() < v.repeat {
            return self.bytes.clone();
        }
        let n = v.made.fetch_add(1, Ordering::Relaxed);
        let mut bytes = self.bytes.to_vec();
        // Random data is in [0, 1) (floats) or 0..10 (integers): these values are never in it.
        let value: Vec<u8> = match v.datatype {
            DataType::Fp32 => (1.0 + (n % (1 << 23)) as f32 / (1 << 23) as f32)
                .to_le_bytes()
                .to_vec(),
            DataType::Fp64 => (1.0 + (n % (1 << 52)) as f64 / (1u64 << 52) as f64)
                .to_le_bytes()
                .to_vec(),
            DataType::Int32 | DataType::Uint32 => {
                ((10 + n % (1 << 30)) as u32).to_le_bytes().to_vec()
            }
            _ => (10 + n).to_le_bytes().to_vec(),
        };
        bytes[v.at..v.at + value.len()].copy_from_slice(&value);
        bytes.into()
    }
}

/// The path a request for `model` goes to.
pub fn path(protocol: Protocol, model: ModelRef<'_>) -> String {
    match (protocol, model.version) {
        (Protocol::Tfserving, None) => format!("/v1/models/{}:predict", model.name),
        (Protocol::Tfserving, Some(v)) => format!("/v1/models/{}/versions/{v}:predict", model.name),
        (_, None) => format!("/v2/models/{}/infer", model.name),
        (_, Some(v)) => format!("/v2/models/{}/versions/{v}/infer", model.name),
    }
}

/// A request with `rows` batch rows of random data for every input of `metadata`.
pub fn random_request(
    metadata: &ModelMetadata,
    rows: u64,
    seed: u64,
) -> anyhow::Result<InferRequest> {
    let mut rng = StdRng::seed_from_u64(seed);
    let inputs = metadata
        .inputs
        .iter()
        .map(|input| random_tensor(&metadata.name, input, rows, &mut rng))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if inputs.is_empty() {
        bail!("model '{}' has no inputs", metadata.name);
    }
    Ok(InferRequest {
        inputs,
        ..Default::default()
    })
}

/// The shape of `input` for `rows` rows: the batch dimension (the first, when dynamic) is
/// `rows`, other dynamic dimensions are 1. A model without a dynamic first dimension takes
/// exactly its declared batch.
fn shape_for(model: &str, input: &TensorMetadata, rows: u64) -> anyhow::Result<Vec<u64>> {
    let mut shape = Vec::with_capacity(input.shape.len());
    for (i, &d) in input.shape.iter().enumerate() {
        shape.push(match (i, d) {
            (0, -1) => rows,
            (_, -1) => 1,
            (0, d) if d as u64 != rows && rows != 1 => bail!(
                "model '{model}' input '{}' has a fixed first dimension of {d}: it takes no \
                 --rows {rows}",
                input.name
            ),
            (_, d) => d as u64,
        });
    }
    Ok(shape)
}

fn random_tensor(
    model: &str,
    input: &TensorMetadata,
    rows: u64,
    rng: &mut StdRng,
) -> anyhow::Result<Tensor> {
    let shape = shape_for(model, input, rows)?;
    let n = vatic_schema::element_count(&input.name, &shape)?;
    // Small values that every datatype holds exactly; floats in [0, 1).
    macro_rules! values {
        ($value:expr) => {
            TensorData::from_values(&(0..n).map(|_| $value).collect::<Vec<_>>())
        };
    }
    let data = match input.datatype {
        DataType::Bool => values!(rng.gen::<bool>()),
        DataType::Uint8 => values!(rng.gen_range(0..10u8)),
        DataType::Uint16 => values!(rng.gen_range(0..10u16)),
        DataType::Uint32 => values!(rng.gen_range(0..10u32)),
        DataType::Uint64 => values!(rng.gen_range(0..10u64)),
        DataType::Int8 => values!(rng.gen_range(0..10i8)),
        DataType::Int16 => values!(rng.gen_range(0..10i16)),
        DataType::Int32 => values!(rng.gen_range(0..10i32)),
        DataType::Int64 => values!(rng.gen_range(0..10i64)),
        DataType::Fp16 => values!(f16::from_f32(rng.gen::<f32>())),
        DataType::Fp32 => values!(rng.gen::<f32>()),
        DataType::Fp64 => values!(rng.gen::<f64>()),
        DataType::Bytes => TensorData::Bytes(
            (0..n)
                .map(|_| Bytes::from(format!("{:08x}", rng.gen::<u32>())))
                .collect(),
        ),
    };
    Ok(Tensor::new(
        input.name.clone(),
        input.datatype,
        shape,
        data,
    )?)
}

/// The request of a V2 JSON file (`--data`).
pub fn file_request(file: &RequestFile) -> anyhow::Result<InferRequest> {
    v2::decode_request(&file.bytes, None)
        .with_context(|| format!("{} is not a V2 inference request", file.name))
}

/// `request` as a body of the given protocol. A `--data` file goes out as it is in V2 JSON.
pub fn encode(
    request: &InferRequest,
    file: Option<&RequestFile>,
    protocol: Protocol,
    path: String,
) -> anyhow::Result<Body> {
    let rows = request
        .inputs
        .first()
        .and_then(|t| t.shape.first().copied())
        .unwrap_or(1);
    let (encoded, content_type) = match (protocol, file) {
        (Protocol::V2Json, Some(file)) => (json_request(file, false)?, "application/json"),
        (Protocol::V2Json, None) => (v2::encode_request(request, false), "application/json"),
        (Protocol::V2Binary, _) => {
            let mut request = request.clone();
            request
                .parameters
                .insert(v2::BINARY_DATA_OUTPUT.into(), true.into());
            (
                v2::encode_request(&request, true),
                "application/octet-stream",
            )
        }
        (Protocol::Tfserving, _) => (
            Encoded {
                body: serde_json::to_vec(&tf_columnar(request))?,
                header_length: None,
            },
            "application/json",
        ),
    };
    Ok(Body {
        path,
        bytes: encoded.body.into(),
        content_type,
        header_length: encoded.header_length,
        rows,
        variation: None,
    })
}

/// TF-Serving's columnar form: `{"inputs": {name: nested rows}}`.
fn tf_columnar(request: &InferRequest) -> Value {
    let inputs: serde_json::Map<String, Value> = request
        .inputs
        .iter()
        .map(|t| (t.name.clone(), nest(&t.json_values(), &t.shape)))
        .collect();
    json!({ "inputs": inputs })
}

/// Flat row-major values as nested arrays of `shape`.
fn nest(values: &[Value], shape: &[u64]) -> Value {
    match shape {
        [] => values.first().cloned().unwrap_or(Value::Null),
        [_] => Value::Array(values.to_vec()),
        [d, rest @ ..] => {
            let chunk = values.len() / (*d as usize).max(1);
            Value::Array(values.chunks(chunk.max(1)).map(|c| nest(c, rest)).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(shape: Vec<i64>, datatype: DataType) -> ModelMetadata {
        ModelMetadata {
            name: "m".into(),
            versions: vec!["1".into()],
            platform: "onnx_onnxv1".into(),
            inputs: vec![TensorMetadata {
                name: "x".into(),
                datatype,
                shape,
            }],
            outputs: Vec::new(),
        }
    }

    #[test]
    fn random_rows_fill_the_batch_dimension_and_decode_back() {
        let request = random_request(&metadata(vec![-1, 3], DataType::Fp32), 4, 7).unwrap();
        assert_eq!(request.inputs[0].shape, vec![4, 3]);
        let values = request.inputs[0].data.to_f64(DataType::Fp32);
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)), "{values:?}");
        assert_eq!(
            random_request(&metadata(vec![-1, 3], DataType::Fp32), 4, 7).unwrap(),
            request
        );

        let path = path(
            Protocol::V2Binary,
            ModelRef {
                name: "m",
                version: Some("2"),
            },
        );
        assert_eq!(path, "/v2/models/m/versions/2/infer");
        let body = encode(&request, None, Protocol::V2Binary, path).unwrap();
        assert_eq!(body.rows, 4);
        let decoded = v2::decode_request(&body.bytes, body.header_length).unwrap();
        assert_eq!(decoded.inputs[0].data, request.inputs[0].data);
        assert!(decoded.wants_binary("y"));
    }

    #[test]
    fn every_datatype_gets_valid_random_data() {
        for dt in DataType::ALL {
            let request = random_request(&metadata(vec![-1, 2, -1], dt), 3, 1).unwrap();
            assert_eq!(request.inputs[0].shape, vec![3, 2, 1], "{dt}");
            request.inputs[0].check().unwrap();
            let body = encode(&request, None, Protocol::V2Json, "/".into()).unwrap();
            let decoded = v2::decode_request(&body.bytes, None).unwrap();
            assert_eq!(decoded.inputs[0], request.inputs[0], "{dt}");
        }
    }

    #[test]
    fn varied_requests_are_unique_valid_and_only_in_v2_binary() {
        let request = random_request(&metadata(vec![-1, 3], DataType::Fp32), 2, 7).unwrap();
        let mut body = encode(&request, None, Protocol::V2Binary, "/".into()).unwrap();
        body.vary(&request, Protocol::V2Binary, 0.0).unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let bytes = body.next();
            let decoded = v2::decode_request(&bytes, body.header_length).unwrap();
            let values = decoded.inputs[0].data.to_f64(DataType::Fp32);
            let original = request.inputs[0].data.to_f64(DataType::Fp32);
            assert!((1.0..2.0).contains(&values[0]), "{values:?}");
            assert_eq!(values[1..], original[1..], "only the first element changes");
            assert!(seen.insert(bytes), "a unique request came twice");
        }
        // At 100% every request is the one body; at 50% about half are.
        body.vary(&request, Protocol::V2Binary, 1.0).unwrap();
        assert!((0..100).all(|_| body.next() == body.bytes));
        body.vary(&request, Protocol::V2Binary, 0.5).unwrap();
        let repeats = (0..2000).filter(|_| body.next() == body.bytes).count();
        assert!((800..1200).contains(&repeats), "{repeats} of 2000");

        let mut json = encode(&request, None, Protocol::V2Json, "/".into()).unwrap();
        let err = json.vary(&request, Protocol::V2Json, 0.9).unwrap_err();
        assert!(
            err.to_string().contains("needs --protocol v2-binary"),
            "{err}"
        );
        let small = random_request(&metadata(vec![-1, 3], DataType::Uint8), 1, 0).unwrap();
        let mut body = encode(&small, None, Protocol::V2Binary, "/".into()).unwrap();
        let err = body.vary(&small, Protocol::V2Binary, 0.9).unwrap_err();
        assert!(
            err.to_string().contains("holds too few distinct values"),
            "{err}"
        );
    }

    #[test]
    fn a_fixed_batch_takes_only_its_own_size() {
        let fixed = metadata(vec![2, 3], DataType::Fp32);
        assert_eq!(
            random_request(&fixed, 1, 0).unwrap().inputs[0].shape,
            vec![2, 3]
        );
        let err = random_request(&fixed, 8, 0).unwrap_err().to_string();
        assert!(
            err.contains("fixed first dimension of 2") && err.contains("--rows 8"),
            "{err}"
        );
    }

    #[test]
    fn tfserving_bodies_are_columnar_and_nested_by_shape() {
        let request = random_request(&metadata(vec![-1, 2], DataType::Int64), 3, 0).unwrap();
        let body = encode(&request, None, Protocol::Tfserving, "/".into()).unwrap();
        let v: Value = serde_json::from_slice(&body.bytes).unwrap();
        let rows = v["inputs"]["x"].as_array().unwrap();
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|r| r.as_array().unwrap().len() == 2), "{v}");
    }
}
