//! Tensors as they travel: a name, a datatype, a shape and little-endian row-major data.

use crate::{DataType, Parameters, SchemaError};
use bytes::Bytes;
use half::f16;

/// The elements of a tensor.
///
/// Fixed-size datatypes keep their elements as one little-endian, row-major buffer, the same layout
/// as the binary tensor extension and as the inference engine, so data moves without conversion.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// Every datatype but BYTES: `element_count * datatype.size()` bytes.
    Fixed(Bytes),
    /// BYTES: one buffer per element.
    Bytes(Vec<Bytes>),
}

/// A named tensor: an input of a request or an output of a response.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// The tensor's name in the model signature.
    pub name: String,
    /// The element datatype.
    pub datatype: DataType,
    /// The shape; the product of the dimensions is the element count.
    pub shape: Vec<u64>,
    /// The elements.
    pub data: TensorData,
    /// Tensor parameters other than the binary extension's own `binary_data_size`.
    pub parameters: Parameters,
}

impl Tensor {
    /// Builds a tensor and checks that the data holds exactly as many elements as the shape says.
    pub fn new(
        name: impl Into<String>,
        datatype: DataType,
        shape: Vec<u64>,
        data: TensorData,
    ) -> Result<Tensor, SchemaError> {
        let tensor = Tensor {
            name: name.into(),
            datatype,
            shape,
            data,
            parameters: Parameters::new(),
        };
        tensor.check()?;
        Ok(tensor)
    }

    /// Number of elements the shape describes.
    pub fn element_count(&self) -> Result<usize, SchemaError> {
        element_count(&self.name, &self.shape)
    }

    /// Checks data length against shape and datatype, and that BOOL bytes are 0 or 1.
    pub fn check(&self) -> Result<(), SchemaError> {
        let count = self.element_count()?;
        match (&self.data, self.datatype.size()) {
            (TensorData::Fixed(bytes), Some(size)) => {
                let expected = count
                    .checked_mul(size)
                    .ok_or_else(|| overflow(&self.name))?;
                if bytes.len() != expected {
                    return Err(SchemaError::DataLength {
                        name: self.name.clone(),
                        shape: self.shape.clone(),
                        expected: format!("{expected} bytes ({count} x {})", self.datatype),
                        got: format!("{} bytes", bytes.len()),
                    });
                }
                if self.datatype == DataType::Bool && bytes.iter().any(|b| *b > 1) {
                    return Err(SchemaError::Invalid(format!(
                        "input '{}': BOOL elements must be the bytes 0 or 1",
                        self.name
                    )));
                }
            }
            (TensorData::Bytes(items), None) => {
                if items.len() != count {
                    return Err(SchemaError::DataLength {
                        name: self.name.clone(),
                        shape: self.shape.clone(),
                        expected: format!("{count} elements"),
                        got: format!("{} elements", items.len()),
                    });
                }
            }
            _ => {
                return Err(SchemaError::Invalid(format!(
                    "tensor '{}': data does not fit datatype {}",
                    self.name, self.datatype
                )))
            }
        }
        Ok(())
    }

    /// The size of this tensor's data in the binary tensor extension.
    pub fn binary_size(&self) -> usize {
        match &self.data {
            TensorData::Fixed(b) => b.len(),
            TensorData::Bytes(items) => items.iter().map(|i| 4 + i.len()).sum(),
        }
    }

    /// Appends this tensor's data in the binary tensor extension's layout.
    pub fn write_binary(&self, out: &mut Vec<u8>) {
        match &self.data {
            TensorData::Fixed(b) => out.extend_from_slice(b),
            TensorData::Bytes(items) => {
                for item in items {
                    out.extend_from_slice(&(item.len() as u32).to_le_bytes());
                    out.extend_from_slice(item);
                }
            }
        }
    }

    /// Reads this tensor's data from a binary section of the binary tensor extension.
    pub fn read_binary(
        name: &str,
        datatype: DataType,
        shape: Vec<u64>,
        raw: Bytes,
    ) -> Result<Tensor, SchemaError> {
        let data = match datatype {
            DataType::Bytes => {
                let mut items = Vec::new();
                let mut at = 0usize;
                while at < raw.len() {
                    let Some(len) = raw.get(at..at + 4) else {
                        return Err(SchemaError::Invalid(format!(
                            "tensor '{name}': BYTES data ends inside a 4-byte length prefix"
                        )));
                    };
                    let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
                    at += 4;
                    if at + len > raw.len() {
                        return Err(SchemaError::Invalid(format!(
                            "tensor '{name}': BYTES element of {len} bytes runs past the end of its data"
                        )));
                    }
                    items.push(raw.slice(at..at + len));
                    at += len;
                }
                TensorData::Bytes(items)
            }
            _ => TensorData::Fixed(raw),
        };
        let tensor = Tensor {
            name: name.to_string(),
            datatype,
            shape,
            data,
            parameters: Parameters::new(),
        };
        tensor.check()?;
        Ok(tensor)
    }

    /// The elements as JSON values, flat and row-major (FP16 widened to a number, BYTES as strings).
    pub fn json_values(&self) -> Vec<serde_json::Value> {
        use serde_json::Value;
        match &self.data {
            TensorData::Bytes(items) => items
                .iter()
                .map(|i| Value::String(String::from_utf8_lossy(i).into_owned()))
                .collect(),
            TensorData::Fixed(b) => {
                let size = self.datatype.size().unwrap_or(1);
                b.chunks_exact(size)
                    .map(|c| element_to_json(self.datatype, c))
                    .collect()
            }
        }
    }

    /// Builds a tensor from JSON data that may be flat or nested; the nesting is only checked for
    /// element count against `shape`.
    pub fn from_json_data(
        name: &str,
        datatype: DataType,
        shape: Vec<u64>,
        data: &serde_json::value::RawValue,
    ) -> Result<Tensor, SchemaError> {
        let parsed = crate::json::parse_elements(name, datatype, data.get())?;
        let tensor = Tensor {
            name: name.to_string(),
            datatype,
            shape,
            data: parsed.data,
            parameters: Parameters::new(),
        };
        tensor.check()?;
        Ok(tensor)
    }
}

pub(crate) fn overflow(name: &str) -> SchemaError {
    SchemaError::Invalid(format!(
        "tensor '{name}': byte size overflow: the shape is too large"
    ))
}

/// Product of the dimensions, refusing overflow.
pub fn element_count(name: &str, shape: &[u64]) -> Result<usize, SchemaError> {
    shape.iter().try_fold(1usize, |acc, d| {
        usize::try_from(*d)
            .ok()
            .and_then(|d| acc.checked_mul(d))
            .ok_or_else(|| overflow(name))
    })
}

fn element_to_json(dt: DataType, c: &[u8]) -> serde_json::Value {
    use serde_json::Value;
    macro_rules! num {
        ($t:ty) => {
            Value::from(<$t>::from_le_bytes(c.try_into().expect("element size")))
        };
    }
    match dt {
        DataType::Bool => Value::Bool(c[0] != 0),
        DataType::Uint8 => Value::from(c[0]),
        DataType::Uint16 => num!(u16),
        DataType::Uint32 => num!(u32),
        DataType::Uint64 => num!(u64),
        DataType::Int8 => Value::from(c[0] as i8),
        DataType::Int16 => num!(i16),
        DataType::Int32 => num!(i32),
        DataType::Int64 => num!(i64),
        DataType::Fp16 => {
            short_f32(f16::from_le_bytes(c.try_into().expect("element size")).to_f32())
        }
        DataType::Fp32 => short_f32(f32::from_le_bytes(c.try_into().expect("element size"))),
        DataType::Fp64 => float_json(f64::from_le_bytes(c.try_into().expect("element size"))),
        DataType::Bytes => Value::Null,
    }
}

/// An `f32` as the JSON number with its shortest decimal form (`0.1`, not `0.10000000149011612`).
fn short_f32(v: f32) -> serde_json::Value {
    float_json(v.to_string().parse::<f64>().unwrap_or(f64::NAN))
}

/// JSON has no NaN or infinity: those become `null`, as serde_json does.
fn float_json(v: f64) -> serde_json::Value {
    serde_json::Number::from_f64(v)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

/// Builds a fixed-size tensor's data from typed values.
pub trait ToLeBytes: Copy {
    /// The datatype these values carry.
    const DATATYPE: DataType;
    /// Appends the little-endian bytes of `self`.
    fn put(self, out: &mut Vec<u8>);
}

macro_rules! to_le {
    ($t:ty, $dt:expr) => {
        impl ToLeBytes for $t {
            const DATATYPE: DataType = $dt;
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    };
}
to_le!(u8, DataType::Uint8);
to_le!(u16, DataType::Uint16);
to_le!(u32, DataType::Uint32);
to_le!(u64, DataType::Uint64);
to_le!(i8, DataType::Int8);
to_le!(i16, DataType::Int16);
to_le!(i32, DataType::Int32);
to_le!(i64, DataType::Int64);
to_le!(f16, DataType::Fp16);
to_le!(f32, DataType::Fp32);
to_le!(f64, DataType::Fp64);

impl ToLeBytes for bool {
    const DATATYPE: DataType = DataType::Bool;
    fn put(self, out: &mut Vec<u8>) {
        out.push(self as u8);
    }
}

impl TensorData {
    /// Little-endian data from typed values.
    pub fn from_values<T: ToLeBytes>(values: &[T]) -> TensorData {
        let mut out = Vec::with_capacity(values.len() * T::DATATYPE.size().unwrap_or(1));
        for v in values {
            v.put(&mut out);
        }
        TensorData::Fixed(Bytes::from(out))
    }

    /// The elements read as `f64`, for display and comparison; BYTES yields nothing.
    pub fn to_f64(&self, dt: DataType) -> Vec<f64> {
        let TensorData::Fixed(b) = self else {
            return Vec::new();
        };
        let size = dt.size().unwrap_or(1);
        b.chunks_exact(size)
            .map(|c| match element_to_json(dt, c) {
                serde_json::Value::Bool(v) => f64::from(u8::from(v)),
                v => v.as_f64().unwrap_or(f64::NAN),
            })
            .collect()
    }
}
