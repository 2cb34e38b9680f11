//! CSV rows to an input tensor: one line per batch row, values typed by the input's datatype.

use anyhow::{anyhow, bail, Context};
use half::f16;
use std::str::FromStr;
use vatic_schema::{DataType, Tensor, TensorData, TensorMetadata, ToLeBytes};

/// Reads CSV `text` (from `source`, named in messages) into a tensor for `input` of shape
/// `[rows, ...row dims]`.
///
/// A first line with no number in it is a header and is skipped. Every row must hold the
/// input's per-row element count: the product of its dims after the batch dim, where one
/// dynamic (`-1`) dim takes its size from the first row.
pub fn read_tensor(source: &str, text: &[u8], input: &TensorMetadata) -> anyhow::Result<Tensor> {
    if input.datatype == DataType::Bytes {
        bail!(
            "input '{}' is BYTES; CSV rows fill numeric and BOOL inputs only: use --json",
            input.name
        );
    }
    let row_dims = row_dims(input)?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text);
    let mut data = Vec::new();
    let mut rows = 0u64;
    let mut row_shape: Option<RowShape> = None;
    for (index, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("cannot read {source} as CSV"))?;
        let line = record.position().map_or(index as u64 + 1, |p| p.line());
        if index == 0 && is_header(&record) {
            continue;
        }
        let found = record.len() as u64;
        let dynamic = row_dims.contains(&None);
        let takes = |what: String| {
            anyhow!(
                "{source}, line {line}: found {found} values, but input '{}' (shape {:?}) takes {what}",
                input.name,
                input.shape
            )
        };
        if row_shape.is_none() {
            let fixed: u64 = row_dims.iter().flatten().product();
            let fits = RowShape::fit(&row_dims, found, line).ok_or_else(|| {
                takes(if dynamic {
                    format!("a multiple of {fixed} per row")
                } else {
                    format!("{fixed} per row")
                })
            })?;
            row_shape = Some(fits);
        }
        let shape = row_shape.as_ref().expect("set by the first row");
        if found != shape.count {
            return Err(takes(if dynamic {
                format!(
                    "{} per row, as many as the first row (line {}) has",
                    shape.count, shape.line
                )
            } else {
                format!("{} per row", shape.count)
            }));
        }
        for (column, field) in record.iter().enumerate() {
            if !push_value(input.datatype, field, &mut data) {
                bail!(
                    "{source}, line {line}, column {}: {}",
                    column + 1,
                    bad_value(input.datatype, field)
                );
            }
        }
        rows += 1;
    }
    let Some(RowShape { dims, .. }) = row_shape else {
        bail!("{source} has no rows");
    };
    if let Some(&batch) = input.shape.first().filter(|d| **d >= 0) {
        if batch as u64 != rows {
            bail!(
                "input '{}' (shape {:?}) has a fixed batch size of {batch}; {source} has {rows} rows",
                input.name,
                input.shape
            );
        }
    }
    let shape = std::iter::once(rows).chain(dims).collect();
    Ok(Tensor::new(
        input.name.clone(),
        input.datatype,
        shape,
        TensorData::Fixed(data.into()),
    )?)
}

/// The input's dims after the batch dim, `None` where dynamic; at most one may be dynamic.
fn row_dims(input: &TensorMetadata) -> anyhow::Result<Vec<Option<u64>>> {
    let Some((_, rest)) = input.shape.split_first() else {
        bail!(
            "input '{}' is a scalar (shape []), so it has no rows: use --json",
            input.name
        );
    };
    let dims: Vec<Option<u64>> = rest.iter().map(|d| u64::try_from(*d).ok()).collect();
    if dims.iter().filter(|d| d.is_none()).count() > 1 {
        bail!(
            "input '{}' has shape {:?}: with more than one dynamic dim after the batch dim, \
             CSV rows cannot say the shape; use --json",
            input.name,
            input.shape
        );
    }
    Ok(dims)
}

/// The shape every row takes, as the first row settled it.
struct RowShape {
    /// Dims after the batch dim.
    dims: Vec<u64>,
    /// Their product: values per row.
    count: u64,
    /// The first row's line.
    line: u64,
}

impl RowShape {
    /// The row shape for a first row of `found` values, if one fits `row_dims`.
    fn fit(row_dims: &[Option<u64>], found: u64, line: u64) -> Option<RowShape> {
        let fixed: u64 = row_dims.iter().flatten().product();
        let dynamic = if row_dims.contains(&None) {
            if fixed == 0 || found == 0 || !found.is_multiple_of(fixed) {
                return None;
            }
            found / fixed
        } else if found == fixed {
            0
        } else {
            return None;
        };
        Some(RowShape {
            dims: row_dims.iter().map(|d| d.unwrap_or(dynamic)).collect(),
            count: found,
            line,
        })
    }
}

/// Whether a first line is a header: none of its fields is a number or a boolean.
fn is_header(record: &csv::StringRecord) -> bool {
    !record
        .iter()
        .any(|f| f.parse::<f64>().is_ok() || parse_bool(f).is_some())
}

fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" => Some(true),
        "0" => Some(false),
        t if t.eq_ignore_ascii_case("true") => Some(true),
        t if t.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// Appends `text` read as a `datatype` element in little-endian; false if it is not one.
fn push_value(datatype: DataType, text: &str, out: &mut Vec<u8>) -> bool {
    fn put<T: FromStr + ToLeBytes>(text: &str, out: &mut Vec<u8>) -> bool {
        text.parse::<T>().map(|v| v.put(out)).is_ok()
    }
    match datatype {
        DataType::Bool => parse_bool(text).map(|v| v.put(out)).is_some(),
        DataType::Uint8 => put::<u8>(text, out),
        DataType::Uint16 => put::<u16>(text, out),
        DataType::Uint32 => put::<u32>(text, out),
        DataType::Uint64 => put::<u64>(text, out),
        DataType::Int8 => put::<i8>(text, out),
        DataType::Int16 => put::<i16>(text, out),
        DataType::Int32 => put::<i32>(text, out),
        DataType::Int64 => put::<i64>(text, out),
        DataType::Fp16 => put::<f16>(text, out),
        DataType::Fp32 => put::<f32>(text, out),
        DataType::Fp64 => put::<f64>(text, out),
        DataType::Bytes => false,
    }
}

/// Why `text` is not a `datatype` element.
fn bad_value(datatype: DataType, text: &str) -> String {
    let wanted = match datatype {
        DataType::Bool => "true, false, 1 or 0".to_string(),
        DataType::Fp16 | DataType::Fp32 | DataType::Fp64 => format!("a number ({datatype})"),
        _ => format!("a whole number that fits {datatype}"),
    };
    if text.is_empty() {
        format!("the value is empty, but the input takes {wanted}")
    } else {
        format!("'{text}' is not {wanted}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(datatype: DataType, shape: &[i64]) -> TensorMetadata {
        TensorMetadata {
            name: "x".into(),
            datatype,
            shape: shape.to_vec(),
        }
    }

    fn read(text: &str, input: &TensorMetadata) -> anyhow::Result<Tensor> {
        read_tensor("rows.csv", text.as_bytes(), input)
    }

    fn error(text: &str, input: &TensorMetadata) -> String {
        read(text, input).unwrap_err().to_string()
    }

    #[test]
    fn rows_after_a_header_make_one_batch() {
        let text = "a,b\r\n1,2.5\r\n\r\n 3 , 4";
        let t = read(text, &input(DataType::Fp32, &[-1, 2])).unwrap();
        assert_eq!(t.shape, [2, 2]);
        assert_eq!(t.data.to_f64(DataType::Fp32), [1.0, 2.5, 3.0, 4.0]);
    }

    #[test]
    fn a_first_line_with_numbers_is_data() {
        let t = read("1,2\n3,4\n", &input(DataType::Int64, &[-1, 2])).unwrap();
        assert_eq!(t.shape, [2, 2]);
        assert_eq!(t.data, TensorData::from_values(&[1i64, 2, 3, 4]));
    }

    #[test]
    fn values_are_typed_by_the_input() {
        let t = read("true,0\nFALSE,1\n", &input(DataType::Bool, &[-1, 2])).unwrap();
        assert_eq!(t.data, TensorData::from_values(&[true, false, false, true]));
        let t = read("1.5\n-2\n", &input(DataType::Fp16, &[-1])).unwrap();
        assert_eq!(t.shape, [2]);
        assert_eq!(t.data.to_f64(DataType::Fp16), [1.5, -2.0]);
        let t = read("255,0\n", &input(DataType::Uint8, &[-1, 2])).unwrap();
        assert_eq!(t.data, TensorData::from_values(&[255u8, 0]));
    }

    #[test]
    fn one_dynamic_row_dim_takes_its_size_from_the_first_row() {
        let t = read("1,2,3,4\n5,6,7,8\n", &input(DataType::Fp32, &[-1, -1, 2])).unwrap();
        assert_eq!(t.shape, [2, 2, 2]);
        let err = error("1,2,3,4\n5,6\n", &input(DataType::Fp32, &[-1, -1, 2]));
        assert_eq!(
            err,
            "rows.csv, line 2: found 2 values, but input 'x' (shape [-1, -1, 2]) takes 4 per row, as many as the first row (line 1) has"
        );
        let err = error("1,2,3\n", &input(DataType::Fp32, &[-1, -1, 2]));
        assert!(err.contains("takes a multiple of 2 per row"), "{err}");
        let err = error("1,2\n", &input(DataType::Fp32, &[-1, -1, -1]));
        assert!(err.contains("more than one dynamic dim"), "{err}");
    }

    #[test]
    fn a_row_of_the_wrong_length_is_named_by_line() {
        let err = error("a,b,c\n1,2,3\n4,5\n", &input(DataType::Fp32, &[-1, 3]));
        assert_eq!(
            err,
            "rows.csv, line 3: found 2 values, but input 'x' (shape [-1, 3]) takes 3 per row"
        );
    }

    #[test]
    fn a_bad_value_is_named_by_line_and_column() {
        let err = error("a,b\n1,2\n3,x\n", &input(DataType::Fp32, &[-1, 2]));
        assert_eq!(
            err,
            "rows.csv, line 3, column 2: 'x' is not a number (FP32)"
        );
        let err = error("1,2.5\n", &input(DataType::Int32, &[-1, 2]));
        assert_eq!(
            err,
            "rows.csv, line 1, column 2: '2.5' is not a whole number that fits INT32"
        );
        let err = error("1,\n", &input(DataType::Fp32, &[-1, 2]));
        assert!(err.contains("column 2: the value is empty"), "{err}");
        let err = error("2\n", &input(DataType::Bool, &[-1]));
        assert!(err.contains("'2' is not true, false, 1 or 0"), "{err}");
    }

    #[test]
    fn inputs_rows_cannot_fill_are_refused() {
        assert!(error("1\n", &input(DataType::Bytes, &[-1])).contains("use --json"));
        assert!(error("1\n", &input(DataType::Fp32, &[])).contains("scalar"));
        assert_eq!(
            error("a,b\n", &input(DataType::Fp32, &[-1, 2])),
            "rows.csv has no rows"
        );
        assert_eq!(
            error("1,2\n3,4\n", &input(DataType::Fp32, &[1, 2])),
            "input 'x' (shape [1, 2]) has a fixed batch size of 1; rows.csv has 2 rows"
        );
    }
}
