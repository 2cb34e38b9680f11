//! TF-Serving's REST predict API, translated to and from V2 requests and responses.

use crate::admin::LoadState;
use crate::json::parse_value;
use crate::tensor::Tensor;
use crate::v2::{InferRequest, InferResponse};
use crate::{DataType, Parameters, SchemaError, TensorMetadata};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The one signature an ONNX model has, as TF-Serving names a model's default signature.
pub const SIGNATURE: &str = "serving_default";

/// `POST /v1/models/{m}:predict` body: `instances` (row form) or `inputs` (columnar form).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// [`SIGNATURE`], or empty or absent for it: an ONNX model has one signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_name: Option<String>,
    /// Row form: a list of instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<Value>,
    /// Columnar form: one tensor, or an object of named tensors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Value>,
}

/// Which form a predict request used; the response answers in the same form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictForm {
    /// `instances` in, `predictions` out.
    Row,
    /// `inputs` in, `outputs` out.
    Columnar,
}

/// `GET /v1/models/{m}[/versions/{v}]`: one entry per version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelStatus {
    /// Versions and their states.
    pub model_version_status: Vec<VersionStatus>,
}

/// The state of one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionStatus {
    /// Version number as a string.
    pub version: String,
    /// Its state.
    pub state: VersionState,
    /// Error, if any.
    pub status: StatusCode,
}

/// A version's state as TF-Serving names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum VersionState {
    /// Loading or warming up.
    Loading,
    /// Serving.
    Available,
    /// Failed to load.
    Unavailable,
    /// Unloaded.
    End,
}

impl VersionStatus {
    /// The status of `version`, from where its worker got with it and why it failed.
    pub fn of(version: String, state: LoadState, reason: String) -> VersionStatus {
        let (state, code) = match state {
            LoadState::Ready => (VersionState::Available, "OK"),
            LoadState::Loading => (VersionState::Loading, "OK"),
            LoadState::Unavailable => (VersionState::Unavailable, "UNAVAILABLE"),
        };
        VersionStatus {
            version,
            state,
            status: StatusCode {
                error_code: code.into(),
                error_message: reason,
            },
        }
    }
}

/// TF-Serving's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusCode {
    /// `OK` or an error code name.
    pub error_code: String,
    /// Empty when OK.
    pub error_message: String,
}

/// A `{"b64": ...}` object is an element, not a set of named inputs.
fn is_named(value: &Value) -> bool {
    matches!(value, Value::Object(m) if !(m.len() == 1 && m.contains_key("b64")))
}

fn tensor_from(meta: &TensorMetadata, value: &Value) -> Result<Tensor, SchemaError> {
    let parsed = parse_value(&meta.name, meta.datatype, value)?;
    Ok(Tensor {
        name: meta.name.clone(),
        datatype: meta.datatype,
        shape: parsed.shape,
        data: parsed.data,
        parameters: Parameters::new(),
    })
}

fn the_only_input<'a>(
    inputs: &'a [TensorMetadata],
    form: &str,
) -> Result<&'a TensorMetadata, SchemaError> {
    match inputs {
        [only] => Ok(only),
        _ => Err(SchemaError::Invalid(format!(
            "the model has {} inputs ({}): {form} must be an object that names each of them",
            inputs.len(),
            inputs
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn check_names<'a>(
    inputs: &[TensorMetadata],
    keys: impl Iterator<Item = &'a String>,
    where_: &str,
) -> Result<(), SchemaError> {
    for key in keys {
        if !inputs.iter().any(|i| &i.name == key) {
            return Err(SchemaError::Invalid(format!(
                "{where_} names input '{key}', which the model does not have (inputs: {})",
                inputs
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(())
}

/// Translates a predict request into a V2 request, typing values by the model's `inputs`.
pub fn to_infer_request(
    req: PredictRequest,
    inputs: &[TensorMetadata],
) -> Result<(InferRequest, PredictForm), SchemaError> {
    if let Some(name) = req.signature_name.as_deref() {
        if !name.is_empty() && name != SIGNATURE {
            return Err(SchemaError::Invalid(format!(
                "signature_name '{name}': the model has no such signature; its signatures: {SIGNATURE}"
            )));
        }
    }
    let (tensors, form) = match (req.instances, req.inputs) {
        (Some(_), Some(_)) => {
            return Err(SchemaError::Invalid(
                "a predict request has either 'instances' (row form) or 'inputs' (columnar form), not both".into(),
            ))
        }
        (None, None) => {
            return Err(SchemaError::Invalid(
                "a predict request needs 'instances' (row form) or 'inputs' (columnar form)".into(),
            ))
        }
        (Some(instances), None) => (row_tensors(instances, inputs)?, PredictForm::Row),
        (None, Some(value)) => (columnar_tensors(value, inputs)?, PredictForm::Columnar),
    };
    Ok((
        InferRequest {
            inputs: tensors,
            ..Default::default()
        },
        form,
    ))
}

fn row_tensors(instances: Value, inputs: &[TensorMetadata]) -> Result<Vec<Tensor>, SchemaError> {
    let Value::Array(rows) = instances else {
        return Err(SchemaError::Invalid(
            "'instances' must be a list, one entry per instance".into(),
        ));
    };
    if rows.is_empty() {
        return Err(SchemaError::Invalid("'instances' is empty".into()));
    }
    if !rows.iter().any(is_named) {
        let meta = the_only_input(inputs, "each instance")?;
        return Ok(vec![tensor_from(meta, &Value::Array(rows))?]);
    }
    for (i, row) in rows.iter().enumerate() {
        let Value::Object(map) = row else {
            return Err(SchemaError::Invalid(format!(
                "instance {i} is not an object, but other instances name their inputs: use one form for all"
            )));
        };
        check_names(inputs, map.keys(), &format!("instance {i}"))?;
    }
    inputs
        .iter()
        .map(|meta| {
            let column = rows
                .iter()
                .enumerate()
                .map(|(i, row)| {
                    row.get(&meta.name).cloned().ok_or_else(|| {
                        SchemaError::Invalid(format!(
                            "instance {i} has no value for input '{}'",
                            meta.name
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            tensor_from(meta, &Value::Array(column))
        })
        .collect()
}

fn columnar_tensors(value: Value, inputs: &[TensorMetadata]) -> Result<Vec<Tensor>, SchemaError> {
    if !is_named(&value) {
        let meta = the_only_input(inputs, "'inputs'")?;
        return Ok(vec![tensor_from(meta, &value)?]);
    }
    let Value::Object(map) = value else {
        unreachable!("is_named checked it is an object")
    };
    check_names(inputs, map.keys(), "'inputs'")?;
    inputs
        .iter()
        .map(|meta| {
            let v = map.get(&meta.name).ok_or_else(|| {
                SchemaError::Invalid(format!("'inputs' has no value for input '{}'", meta.name))
            })?;
            tensor_from(meta, v)
        })
        .collect()
}

/// Rebuilds nested JSON arrays from flat row-major values.
fn nest(values: &[Value], shape: &[u64]) -> Value {
    match shape {
        [] => values.first().cloned().unwrap_or(Value::Null),
        [_] => Value::Array(values.to_vec()),
        [first, rest @ ..] => {
            let step = rest.iter().product::<u64>() as usize;
            Value::Array(
                (0..*first as usize)
                    .map(|i| nest(&values[i * step..(i + 1) * step], rest))
                    .collect(),
            )
        }
    }
}

/// Values of a tensor as TF-Serving writes them: outputs named `*_bytes` in `{"b64": ...}` form.
fn tf_values(t: &Tensor) -> Vec<Value> {
    use base64::Engine as _;
    match &t.data {
        crate::TensorData::Bytes(items) if t.name.ends_with("_bytes") => items
            .iter()
            .map(|i| json!({"b64": base64::engine::general_purpose::STANDARD.encode(i)}))
            .collect(),
        _ => t.json_values(),
    }
}

/// Translates a V2 response into the predict response of the request's form.
pub fn to_predict_response(resp: &InferResponse, form: PredictForm) -> Result<Value, SchemaError> {
    match form {
        PredictForm::Columnar => {
            let outputs = match resp.outputs.as_slice() {
                [only] => nest(&tf_values(only), &only.shape),
                many => Value::Object(
                    many.iter()
                        .map(|t| (t.name.clone(), nest(&tf_values(t), &t.shape)))
                        .collect(),
                ),
            };
            Ok(json!({ "outputs": outputs }))
        }
        PredictForm::Row => {
            let mut columns = Vec::with_capacity(resp.outputs.len());
            let mut rows = None;
            for t in &resp.outputs {
                let Some((&n, rest)) = t.shape.split_first() else {
                    return Err(SchemaError::Invalid(format!(
                        "output '{}' is a scalar, so it has no rows: use the columnar 'inputs' form",
                        t.name
                    )));
                };
                if *rows.get_or_insert(n) != n {
                    return Err(SchemaError::Invalid(format!(
                        "outputs have different numbers of rows ('{}' has {n}): use the columnar 'inputs' form",
                        t.name
                    )));
                }
                let values = tf_values(t);
                let step = rest.iter().product::<u64>() as usize;
                let per_row: Vec<Value> = (0..n as usize)
                    .map(|i| nest(&values[i * step..(i + 1) * step], rest))
                    .collect();
                columns.push((t.name.clone(), per_row));
            }
            let predictions = match columns.len() {
                1 => Value::Array(columns.pop().expect("one column").1),
                _ => {
                    let n = rows.unwrap_or(0) as usize;
                    Value::Array(
                        (0..n)
                            .map(|i| {
                                Value::Object(
                                    columns
                                        .iter()
                                        .map(|(name, col)| (name.clone(), col[i].clone()))
                                        .collect(),
                                )
                            })
                            .collect(),
                    )
                }
            };
            Ok(json!({ "predictions": predictions }))
        }
    }
}

/// TensorFlow's name for a datatype, e.g. `DT_FLOAT`.
pub fn tf_dtype(dt: DataType) -> &'static str {
    match dt {
        DataType::Bool => "DT_BOOL",
        DataType::Uint8 => "DT_UINT8",
        DataType::Uint16 => "DT_UINT16",
        DataType::Uint32 => "DT_UINT32",
        DataType::Uint64 => "DT_UINT64",
        DataType::Int8 => "DT_INT8",
        DataType::Int16 => "DT_INT16",
        DataType::Int32 => "DT_INT32",
        DataType::Int64 => "DT_INT64",
        DataType::Fp16 => "DT_HALF",
        DataType::Fp32 => "DT_FLOAT",
        DataType::Fp64 => "DT_DOUBLE",
        DataType::Bytes => "DT_STRING",
    }
}

fn signature_tensors(tensors: &[TensorMetadata]) -> Value {
    let map: Map<String, Value> = tensors
        .iter()
        .map(|t| {
            let dims: Vec<Value> = t
                .shape
                .iter()
                .map(|d| json!({"size": d.to_string(), "name": ""}))
                .collect();
            (
                t.name.clone(),
                json!({
                    "dtype": tf_dtype(t.datatype),
                    "tensor_shape": {"dim": dims, "unknown_rank": false},
                    "name": t.name,
                }),
            )
        })
        .collect();
    Value::Object(map)
}

/// `GET /v1/models/{m}[/versions/{v}]/metadata` in TF-Serving's form, with one signature,
/// [`SIGNATURE`].
pub fn metadata(
    name: &str,
    version: &str,
    inputs: &[TensorMetadata],
    outputs: &[TensorMetadata],
) -> Value {
    json!({
        "model_spec": {"name": name, "signature_name": "", "version": version},
        "metadata": {"signature_def": {
            "signature_def": {SIGNATURE: {
                "inputs": signature_tensors(inputs),
                "outputs": signature_tensors(outputs),
                "method_name": "tensorflow/serving/predict",
            }}
        }}
    })
}
