//! KServe V2 inference requests and responses, in JSON and with the binary tensor extension.
//!
//! Binary tensor extension: the body is a JSON header followed by the binary data of every tensor
//! whose `parameters.binary_data_size` is set, in the order the tensors appear in the header. The
//! header's length travels in the `Inference-Header-Content-Length` HTTP header.

use crate::tensor::{Tensor, TensorData};
use crate::{DataType, Parameters, SchemaError};
use bytes::Bytes;
use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

/// The HTTP header that carries the JSON header's length in the binary tensor extension.
pub const HEADER_LENGTH: &str = "Inference-Header-Content-Length";
/// Tensor parameter: bytes of this tensor's data in the binary section.
pub const BINARY_DATA_SIZE: &str = "binary_data_size";
/// Requested-output parameter: return this output as binary.
pub const BINARY_DATA: &str = "binary_data";
/// Request parameter: return every output as binary unless the output says otherwise.
pub const BINARY_DATA_OUTPUT: &str = "binary_data_output";

/// An inference request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InferRequest {
    /// Client-chosen id, echoed in the response.
    pub id: Option<String>,
    /// Request parameters.
    pub parameters: Parameters,
    /// Input tensors.
    pub inputs: Vec<Tensor>,
    /// The outputs to return; empty means every output.
    pub outputs: Vec<RequestedOutput>,
}

/// An output named in a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestedOutput {
    /// The output's name in the model signature.
    pub name: String,
    /// Output parameters, such as `binary_data`.
    #[serde(default, skip_serializing_if = "Parameters::is_empty")]
    pub parameters: Parameters,
}

impl InferRequest {
    /// Whether the response should carry output `name` as binary data: the output's own
    /// `binary_data` parameter, else the request's `binary_data_output`, else JSON.
    pub fn wants_binary(&self, name: &str) -> bool {
        self.outputs
            .iter()
            .find(|o| o.name == name)
            .and_then(|o| o.parameters.get(BINARY_DATA))
            .or_else(|| self.parameters.get(BINARY_DATA_OUTPUT))
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
    }
}

/// An inference response.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InferResponse {
    /// The model that answered.
    pub model_name: String,
    /// The version that answered.
    pub model_version: Option<String>,
    /// The request's id.
    pub id: Option<String>,
    /// Response parameters.
    pub parameters: Parameters,
    /// Output tensors.
    pub outputs: Vec<Tensor>,
}

/// A body ready to send: bytes, and the JSON header's length when binary data follows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// The whole body.
    pub body: Vec<u8>,
    /// `Some(json_len)` when the body carries binary data after `json_len` bytes of JSON.
    pub header_length: Option<usize>,
}

/// Parses an `Inference-Header-Content-Length` header value.
pub fn parse_header_length(value: Option<&str>) -> Result<Option<usize>, SchemaError> {
    value
        .map(|v| {
            v.trim().parse::<usize>().map_err(|_| {
                SchemaError::Invalid(format!(
                    "{HEADER_LENGTH} must be a non-negative whole number of bytes, got '{v}'"
                ))
            })
        })
        .transpose()
}

// ---- wire forms ----

#[derive(Deserialize)]
struct WireIn<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model_name: Option<String>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    parameters: Parameters,
    #[serde(default, borrow)]
    inputs: Option<Vec<WireTensorIn<'a>>>,
    #[serde(default, borrow)]
    outputs: Option<Vec<WireTensorIn<'a>>>,
}

#[derive(Deserialize)]
struct WireTensorIn<'a> {
    name: String,
    #[serde(default)]
    shape: Option<Vec<i64>>,
    #[serde(default)]
    datatype: Option<String>,
    #[serde(default)]
    parameters: Parameters,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct WireResponseOut<'a> {
    model_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Parameters::is_empty")]
    parameters: &'a Parameters,
    outputs: Vec<WireTensorOut<'a>>,
}

#[derive(Serialize)]
struct WireRequestOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Parameters::is_empty")]
    parameters: &'a Parameters,
    inputs: Vec<WireTensorOut<'a>>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    outputs: &'a [RequestedOutput],
}

#[derive(Serialize)]
struct WireTensorOut<'a> {
    name: &'a str,
    datatype: DataType,
    shape: &'a [u64],
    #[serde(skip_serializing_if = "Parameters::is_empty")]
    parameters: Parameters,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

/// Serializes a tensor's elements as a flat JSON array without building intermediate values.
struct JsonData<'a>(&'a Tensor);

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = self.0;
        match &t.data {
            TensorData::Bytes(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for i in items {
                    seq.serialize_element(&String::from_utf8_lossy(i))?;
                }
                seq.end()
            }
            TensorData::Fixed(b) => {
                let size = t.datatype.size().unwrap_or(1);
                let mut seq = s.serialize_seq(Some(b.len() / size))?;
                for c in b.chunks_exact(size) {
                    macro_rules! el {
                        ($t:ty) => {
                            seq.serialize_element(&<$t>::from_le_bytes(
                                c.try_into().expect("size"),
                            ))?
                        };
                    }
                    match t.datatype {
                        DataType::Bool => seq.serialize_element(&(c[0] != 0))?,
                        DataType::Uint8 => el!(u8),
                        DataType::Uint16 => el!(u16),
                        DataType::Uint32 => el!(u32),
                        DataType::Uint64 => el!(u64),
                        DataType::Int8 => el!(i8),
                        DataType::Int16 => el!(i16),
                        DataType::Int32 => el!(i32),
                        DataType::Int64 => el!(i64),
                        DataType::Fp16 => seq.serialize_element(
                            &half::f16::from_le_bytes(c.try_into().expect("size")).to_f32(),
                        )?,
                        DataType::Fp32 => el!(f32),
                        DataType::Fp64 => el!(f64),
                        DataType::Bytes => unreachable!("BYTES data is never Fixed"),
                    }
                }
                seq.end()
            }
        }
    }
}

fn wire_tensors<'a>(
    tensors: &'a [Tensor],
    binary: impl Fn(&Tensor) -> bool,
    blobs: &mut Vec<&'a Tensor>,
) -> Vec<WireTensorOut<'a>> {
    tensors
        .iter()
        .map(|t| {
            let mut parameters = t.parameters.clone();
            let data = if binary(t) {
                parameters.insert(BINARY_DATA_SIZE.into(), t.binary_size().into());
                blobs.push(t);
                None
            } else {
                Some(JsonData(t))
            };
            WireTensorOut {
                name: &t.name,
                datatype: t.datatype,
                shape: &t.shape,
                parameters,
                data,
            }
        })
        .collect()
}

fn finish(wire: &impl Serialize, blobs: &[&Tensor]) -> Encoded {
    let mut body = serde_json::to_vec(wire).expect("serializing to memory does not fail");
    if blobs.is_empty() {
        return Encoded {
            body,
            header_length: None,
        };
    }
    let header_length = body.len();
    body.reserve(blobs.iter().map(|t| t.binary_size()).sum());
    for t in blobs {
        t.write_binary(&mut body);
    }
    Encoded {
        body,
        header_length: Some(header_length),
    }
}

/// Encodes a request; with `binary`, every input travels in the binary section.
pub fn encode_request(req: &InferRequest, binary: bool) -> Encoded {
    let mut blobs = Vec::new();
    let wire = WireRequestOut {
        id: req.id.as_deref(),
        parameters: &req.parameters,
        inputs: wire_tensors(&req.inputs, |_| binary, &mut blobs),
        outputs: &req.outputs,
    };
    finish(&wire, &blobs)
}

/// Encodes a response; `binary(output)` says which outputs travel in the binary section.
/// JSON outputs carry no `parameters` member unless they have parameters of their own.
pub fn encode_response(resp: &InferResponse, binary: impl Fn(&Tensor) -> bool) -> Encoded {
    let mut blobs = Vec::new();
    let outputs = wire_tensors(&resp.outputs, binary, &mut blobs);
    let wire = WireResponseOut {
        model_name: &resp.model_name,
        model_version: resp.model_version.as_deref(),
        id: resp.id.as_deref(),
        parameters: &resp.parameters,
        outputs,
    };
    finish(&wire, &blobs)
}

/// A request as JSON with every input in JSON form: what [`encode_request`] writes without
/// `binary`, as text.
pub fn request_json(req: &InferRequest) -> String {
    let wire = WireRequestOut {
        id: req.id.as_deref(),
        parameters: &req.parameters,
        inputs: wire_tensors(&req.inputs, |_| false, &mut Vec::new()),
        outputs: &req.outputs,
    };
    serde_json::to_string(&wire).expect("serializing to memory does not fail")
}

/// A response as JSON with every output in JSON form; `pretty` indents it for people to read.
pub fn response_json(resp: &InferResponse, pretty: bool) -> String {
    let wire = WireResponseOut {
        model_name: &resp.model_name,
        model_version: resp.model_version.as_deref(),
        id: resp.id.as_deref(),
        parameters: &resp.parameters,
        outputs: wire_tensors(&resp.outputs, |_| false, &mut Vec::new()),
    };
    match pretty {
        true => serde_json::to_string_pretty(&wire),
        false => serde_json::to_string(&wire),
    }
    .expect("serializing to memory does not fail")
}

fn split_body(body: &Bytes, header_length: Option<usize>) -> Result<(Bytes, Bytes), SchemaError> {
    match header_length {
        None => Ok((body.clone(), Bytes::new())),
        Some(0) => Err(SchemaError::Invalid(format!(
            "{HEADER_LENGTH}: 0 (a raw binary body without a JSON header) is not supported: \
             send a JSON header that names the input and its binary_data_size"
        ))),
        Some(n) if n > body.len() => Err(SchemaError::Invalid(format!(
            "{HEADER_LENGTH} is {n} but the body has only {} bytes",
            body.len()
        ))),
        Some(n) => Ok((body.slice(..n), body.slice(n..))),
    }
}

fn parse_header(json: &[u8]) -> Result<WireIn<'_>, SchemaError> {
    let json = std::str::from_utf8(json)
        .map_err(|_| SchemaError::Json("the JSON header is not valid UTF-8".into()))?;
    serde_json::from_str(json).map_err(|e| SchemaError::Json(e.to_string()))
}

/// Turns wire tensors into tensors, taking binary data from `binary` in order.
fn read_tensors(
    wire: Vec<WireTensorIn<'_>>,
    binary: &Bytes,
    header_length: Option<usize>,
    what: &str,
) -> Result<Vec<Tensor>, SchemaError> {
    let mut at = 0usize;
    let mut tensors = Vec::with_capacity(wire.len());
    for mut w in wire {
        let name = w.name;
        let datatype: DataType = w
            .datatype
            .ok_or_else(|| SchemaError::Invalid(format!("{what} '{name}' has no datatype")))?
            .parse()
            .map_err(|e| SchemaError::Invalid(format!("{what} '{name}': {e}")))?;
        let shape = w
            .shape
            .ok_or_else(|| SchemaError::Invalid(format!("{what} '{name}' has no shape")))?;
        let shape = shape
            .iter()
            .map(|d| {
                u64::try_from(*d).map_err(|_| {
                    SchemaError::Invalid(format!(
                        "{what} '{name}': shape {shape:?} has a negative dimension; requests carry concrete shapes"
                    ))
                })
            })
            .collect::<Result<Vec<u64>, _>>()?;
        let size = w.parameters.remove(BINARY_DATA_SIZE);
        let mut tensor = match (size, w.data) {
            (Some(size), None) => {
                let Some(size) = size.as_u64().and_then(|s| usize::try_from(s).ok()) else {
                    return Err(SchemaError::Invalid(format!(
                        "{what} '{name}': {BINARY_DATA_SIZE} must be a non-negative integer, got {size}"
                    )));
                };
                if header_length.is_none() {
                    return Err(SchemaError::Invalid(format!(
                        "{what} '{name}' has {BINARY_DATA_SIZE} but the request has no {HEADER_LENGTH} header"
                    )));
                }
                // `at` never passes the end, so this cannot overflow as `at + size` can.
                if size > binary.len() - at {
                    return Err(SchemaError::Invalid(format!(
                        "{what} '{name}': {BINARY_DATA_SIZE} {size} runs past the end of the body \
                         ({} bytes of binary data remain)",
                        binary.len() - at
                    )));
                }
                let raw = binary.slice(at..at + size);
                at += size;
                Tensor::read_binary(&name, datatype, shape, raw)?
            }
            (None, Some(data)) => Tensor::from_json_data(&name, datatype, shape, data)?,
            (Some(_), Some(_)) => {
                return Err(SchemaError::Invalid(format!(
                    "{what} '{name}' has both data and {BINARY_DATA_SIZE}: send one or the other"
                )))
            }
            (None, None) => {
                return Err(SchemaError::Invalid(format!(
                    "{what} '{name}' has no data (and no {BINARY_DATA_SIZE})"
                )))
            }
        };
        tensor.parameters = w.parameters;
        tensors.push(tensor);
    }
    if at != binary.len() {
        return Err(SchemaError::Invalid(format!(
            "the body has {} bytes of binary data after the JSON header, but the {what}s' {BINARY_DATA_SIZE} add up to {at}",
            binary.len()
        )));
    }
    Ok(tensors)
}

/// Decodes a request body: JSON, or JSON header plus binary data when `header_length` is given.
pub fn decode_request(
    body: &Bytes,
    header_length: Option<usize>,
) -> Result<InferRequest, SchemaError> {
    let (json, binary) = split_body(body, header_length)?;
    let wire = parse_header(&json)?;
    let inputs = wire
        .inputs
        .ok_or_else(|| SchemaError::Invalid("the request has no inputs".into()))?;
    let outputs = wire
        .outputs
        .unwrap_or_default()
        .into_iter()
        .map(|o| RequestedOutput {
            name: o.name,
            parameters: o.parameters,
        })
        .collect();
    Ok(InferRequest {
        id: wire.id,
        parameters: wire.parameters,
        inputs: read_tensors(inputs, &binary, header_length, "input")?,
        outputs,
    })
}

/// Decodes a response body, as a client does.
pub fn decode_response(
    body: &Bytes,
    header_length: Option<usize>,
) -> Result<InferResponse, SchemaError> {
    let (json, binary) = split_body(body, header_length)?;
    let wire = parse_header(&json)?;
    let outputs = wire
        .outputs
        .ok_or_else(|| SchemaError::Invalid("the response has no outputs".into()))?;
    Ok(InferResponse {
        model_name: wire.model_name.unwrap_or_default(),
        model_version: wire.model_version,
        id: wire.id,
        parameters: wire.parameters,
        outputs: read_tensors(outputs, &binary, header_length, "output")?,
    })
}
