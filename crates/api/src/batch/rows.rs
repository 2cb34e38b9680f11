//! A job's rows as requests, and their answers as result lines: a JSONL row is a V2 request
//! body or a TF-Serving instance, a CSV row the values of the model's one input. Rows that
//! look alike are stacked into one request along the first dimension, and its answer is cut
//! back into one result per row.

use super::Layout;
use bytes::{Bytes, BytesMut};
use serde_json::Value;
use vatic_schema::batch::FileFormat;
use vatic_schema::tfserving::{self, PredictRequest};
use vatic_schema::{v2, DataType, InferRequest, InferResponse, Tensor, TensorData};

/// Reads one row (a line without its end) as a request, or says why it cannot be.
pub fn parse_row(line: &[u8], format: FileFormat, layout: &Layout) -> Result<InferRequest, String> {
    match format {
        FileFormat::Jsonl => parse_json_row(line, layout),
        FileFormat::Csv => parse_csv_row(line, layout),
    }
}

/// A JSON row's top level, read without building any of its values: what tells a V2 body (an
/// object whose `inputs` is an array) from a TF-Serving instance.
#[derive(serde::Deserialize)]
struct TopLevel<'a> {
    #[serde(borrow)]
    inputs: Option<&'a serde_json::value::RawValue>,
}

fn parse_json_row(line: &[u8], layout: &Layout) -> Result<InferRequest, String> {
    let v2_body =
        || v2::decode_request(&Bytes::copy_from_slice(line), None).map_err(|e| e.to_string());
    // A V2 body is read once, by the V2 reader: its tensors' data can be most of a large row.
    // A row the scan cannot read (not JSON, or a key given twice) is left to the full read.
    if line.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        if let Ok(top) = serde_json::from_slice::<TopLevel>(line) {
            if top.inputs.is_some_and(|i| i.get().starts_with('[')) {
                return v2_body();
            }
        }
    }
    let value: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    let object = value.as_object();
    if object.is_some_and(|o| o.get("inputs").is_some_and(Value::is_array)) {
        return v2_body();
    }
    // A TF-Serving instance: one element of a predict request's `instances`.
    let predict = PredictRequest {
        signature_name: None,
        instances: Some(Value::Array(vec![value])),
        inputs: None,
    };
    tfserving::to_infer_request(predict, &layout.inputs)
        .map(|(request, _)| request)
        .map_err(|e| e.to_string())
}

fn parse_csv_row(line: &[u8], layout: &Layout) -> Result<InferRequest, String> {
    let input = layout
        .inputs
        .first()
        .ok_or("the model has no input to put a CSV row in")?;
    let fields = csv_fields(line)?;
    if fields.len() != layout.columns.len() {
        return Err(format!(
            "{} values; the header has {} columns",
            fields.len(),
            layout.columns.len()
        ));
    }
    // The values as a JSON array, read as the V2 JSON reader reads `data`.
    let mut json = String::with_capacity(line.len() + 2);
    json.push('[');
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        let field = field.trim();
        let column = &layout.columns[i];
        match input.datatype {
            DataType::Bytes => json.push_str(&Value::String(field.to_string()).to_string()),
            DataType::Bool => json.push_str(match field.to_ascii_lowercase().as_str() {
                "true" | "1" => "true",
                "false" | "0" => "false",
                _ => {
                    return Err(format!(
                        "column '{column}': '{field}' is not true, false, 1 or 0"
                    ))
                }
            }),
            _ => {
                if let Ok(v) = field.parse::<i64>() {
                    json.push_str(&v.to_string());
                } else {
                    match field.parse::<f64>() {
                        Ok(v) if v.is_finite() => json.push_str(&Value::from(v).to_string()),
                        _ => return Err(format!("column '{column}': '{field}' is not a number")),
                    }
                }
            }
        }
    }
    json.push(']');
    let raw = serde_json::value::RawValue::from_string(json).map_err(|e| e.to_string())?;
    let shape = if input.shape.len() == 1 {
        vec![fields.len() as u64]
    } else {
        vec![1, fields.len() as u64]
    };
    let tensor = Tensor::from_json_data(&input.name, input.datatype, shape, &raw)
        .map_err(|e| e.to_string())?;
    Ok(InferRequest {
        inputs: vec![tensor],
        ..InferRequest::default()
    })
}

/// The fields of one CSV record.
pub fn csv_fields(line: &[u8]) -> Result<Vec<String>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(line);
    // Quotes come in pairs (a quote inside a quoted field is doubled): an odd count is a
    // quoted field left open, which would go on past the line's end.
    if line.iter().filter(|b| **b == b'"').count() % 2 == 1 {
        return Err(
            "a quoted field is not closed on its line; each CSV row must be one line".into(),
        );
    }
    let mut record = csv::StringRecord::new();
    match reader.read_record(&mut record) {
        Ok(true) => {}
        Ok(false) => return Ok(Vec::new()),
        Err(e) => return Err(format!("not CSV: {e}")),
    }
    // A carriage return inside the line ends a record there: what follows would be lost.
    let mut rest = csv::StringRecord::new();
    if reader.read_record(&mut rest).unwrap_or(true) {
        return Err("a carriage return inside the line; each CSV row must be one line".into());
    }
    Ok(record.iter().map(str::to_string).collect())
}

/// What must match in an input for two requests to stack: its name, datatype and shape but the
/// first dimension.
type InputKey<'a> = (&'a str, DataType, &'a [u64]);

/// How many rows a request carries along the first dimension, and what must match for it to
/// be stacked with another; `None` when it cannot be stacked: no inputs, inputs of different
/// row counts, request parameters, or an input whose first dimension is not the model's batch
/// dimension (the model's `-1` in `layout`, in a shape of the same rank).
fn stack_key<'a>(request: &'a InferRequest, layout: &Layout) -> Option<(u64, Vec<InputKey<'a>>)> {
    if !request.parameters.is_empty() || request.inputs.is_empty() {
        return None;
    }
    let rows = *request.inputs[0].shape.first()?;
    let mut key = Vec::with_capacity(request.inputs.len());
    for input in &request.inputs {
        let batched = layout.inputs.iter().any(|m| {
            m.name == input.name
                && m.shape.first() == Some(&-1)
                && m.shape.len() == input.shape.len()
        });
        if !batched || input.shape.first() != Some(&rows) || !input.parameters.is_empty() {
            return None;
        }
        key.push((input.name.as_str(), input.datatype, &input.shape[1..]));
    }
    (rows > 0).then_some((rows, key))
}

/// Groups consecutive requests that can run as one: the same inputs (names, datatypes and
/// shapes but the first dimension) and outputs asked for, at most `max_rows` rows in all.
/// Returns the groups as index ranges into `requests`.
pub fn groups(
    requests: &[&InferRequest],
    max_rows: usize,
    layout: &Layout,
) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    while start < requests.len() {
        let mut end = start + 1;
        if let Some((rows, key)) = stack_key(requests[start], layout) {
            let mut total = rows;
            while end < requests.len() {
                let Some((more, next)) = stack_key(requests[end], layout) else {
                    break;
                };
                if next != key
                    || requests[end].outputs != requests[start].outputs
                    || (total + more) as usize > max_rows
                {
                    break;
                }
                total += more;
                end += 1;
            }
        }
        groups.push(start..end);
        start = end;
    }
    groups
}

/// One request holding every row of `requests`, which [`groups`] put together.
pub fn stack(requests: &[&InferRequest]) -> InferRequest {
    if requests.len() == 1 {
        return requests[0].clone();
    }
    let first = requests[0];
    let inputs = first
        .inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let parts = requests.iter().map(|r| &r.inputs[i]);
            let rows: u64 = parts.clone().map(|t| t.shape[0]).sum();
            let data = match &input.data {
                TensorData::Fixed(_) => {
                    let mut all = BytesMut::new();
                    for part in parts {
                        if let TensorData::Fixed(b) = &part.data {
                            all.extend_from_slice(b);
                        }
                    }
                    TensorData::Fixed(all.freeze())
                }
                TensorData::Bytes(_) => TensorData::Bytes(
                    parts
                        .flat_map(|p| match &p.data {
                            TensorData::Bytes(items) => items.clone(),
                            TensorData::Fixed(_) => Vec::new(),
                        })
                        .collect(),
                ),
            };
            let mut shape = input.shape.clone();
            shape[0] = rows;
            Tensor {
                name: input.name.clone(),
                datatype: input.datatype,
                shape,
                data,
                parameters: Default::default(),
            }
        })
        .collect();
    InferRequest {
        id: None,
        parameters: Default::default(),
        inputs,
        outputs: first.outputs.clone(),
    }
}

/// Cuts the answer to a stacked request back into one set of outputs per row of `requests`;
/// `None` when an output does not carry the rows along its first dimension.
pub fn unstack(requests: &[&InferRequest], answer: &InferResponse) -> Option<Vec<Vec<Tensor>>> {
    if requests.len() == 1 {
        return Some(vec![answer.outputs.clone()]);
    }
    let counts: Vec<u64> = requests.iter().map(|r| r.inputs[0].shape[0]).collect();
    let total: u64 = counts.iter().sum();
    let mut rows: Vec<Vec<Tensor>> = vec![Vec::with_capacity(answer.outputs.len()); requests.len()];
    for output in &answer.outputs {
        if output.shape.first() != Some(&total) {
            return None;
        }
        let per_row = output.element_count().ok()? / total as usize;
        let size = output.datatype.size();
        let mut at = 0usize;
        for (row, count) in rows.iter_mut().zip(&counts) {
            let elements = per_row * *count as usize;
            let data = match (&output.data, size) {
                (TensorData::Fixed(b), Some(size)) => {
                    TensorData::Fixed(b.slice(at * size..(at + elements) * size))
                }
                (TensorData::Bytes(items), _) => {
                    TensorData::Bytes(items[at..at + elements].to_vec())
                }
                _ => return None,
            };
            let mut shape = output.shape.clone();
            shape[0] = *count;
            row.push(Tensor {
                name: output.name.clone(),
                datatype: output.datatype,
                shape,
                data,
                parameters: Default::default(),
            });
            at += elements;
        }
    }
    Some(rows)
}

/// One row's result line (with its end): its outputs as V2 JSON tensors and the version that
/// gave them.
pub fn result_line(row: i64, version: Option<&str>, outputs: &[Tensor]) -> Vec<u8> {
    let outputs: Vec<Value> = outputs
        .iter()
        .map(|t| {
            serde_json::json!({
                "name": t.name,
                "datatype": t.datatype.as_str(),
                "shape": t.shape,
                "data": t.json_values(),
            })
        })
        .collect();
    let mut line = serde_json::to_vec(&serde_json::json!({
        "row": row,
        "version": version,
        "outputs": outputs,
    }))
    .expect("JSON values serialize");
    line.push(b'\n');
    line
}

/// One failed row's result line (with its end).
pub fn error_line(row: i64, error: &str) -> Vec<u8> {
    let mut line = serde_json::to_vec(&serde_json::json!({"row": row, "error": error}))
        .expect("JSON values serialize");
    line.push(b'\n');
    line
}

/// Whether a stored result line is a failed row's.
pub fn is_error_line(line: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Line {
        error: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Line>(line).map_or(true, |l| l.error.is_some())
}

/// The lines of a chunk's stored input or results, without their ends.
pub fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|b| *b == b'\n').filter(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vatic_schema::TensorMetadata;

    fn layout(columns: &[&str]) -> Layout {
        Layout {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            inputs: vec![TensorMetadata {
                name: "x".into(),
                datatype: DataType::Fp32,
                shape: vec![-1, columns.len() as i64],
            }],
            outputs: vec!["y".into()],
        }
    }

    fn floats(t: &Tensor) -> Vec<f64> {
        t.json_values()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    }

    #[test]
    fn a_csv_row_is_the_one_input_of_one_row() {
        let l = layout(&["a", "b", "c"]);
        let r = parse_row(b"1, 2.5,\"-3e1\"", FileFormat::Csv, &l).unwrap();
        assert_eq!(r.inputs[0].shape, vec![1, 3]);
        assert_eq!(floats(&r.inputs[0]), vec![1.0, 2.5, -30.0]);
        let e = parse_row(b"1,2", FileFormat::Csv, &l).unwrap_err();
        assert!(e.contains("2 values; the header has 3 columns"), "{e}");
        let e = parse_row(b"1,x,3", FileFormat::Csv, &l).unwrap_err();
        assert!(e.contains("column 'b': 'x' is not a number"), "{e}");
        let e = parse_row(b"1,nan,3", FileFormat::Csv, &l).unwrap_err();
        assert!(e.contains("'nan' is not a number"), "{e}");
        let e = csv_fields(b"1,\"2,3").unwrap_err();
        assert!(e.contains("not closed"), "{e}");
        let e = csv_fields(b"1,2\r3,4").unwrap_err();
        assert!(e.contains("carriage return"), "{e}");
        // Integers as JSON reads them, whatever their sign or leading zeros.
        let r = parse_row(b"+5,007,-0", FileFormat::Csv, &l).unwrap();
        assert_eq!(floats(&r.inputs[0]), vec![5.0, 7.0, 0.0]);
    }

    #[test]
    fn a_json_row_is_a_v2_body_or_a_tf_serving_instance() {
        let l = layout(&[]);
        let v2 = parse_row(
            br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[2,2],"data":[1,2,3,4]}]}"#,
            FileFormat::Jsonl,
            &l,
        )
        .unwrap();
        assert_eq!(v2.inputs[0].shape, vec![2, 2]);
        let tf = parse_row(b"[1, 2]", FileFormat::Jsonl, &l).unwrap();
        assert_eq!(tf.inputs[0].shape, vec![1, 2]);
        assert_eq!(floats(&tf.inputs[0]), vec![1.0, 2.0]);
        let named = parse_row(br#"{"x": [5, 6]}"#, FileFormat::Jsonl, &l).unwrap();
        assert_eq!(floats(&named.inputs[0]), vec![5.0, 6.0]);
        let e = parse_row(br#"{"z": [5, 6]}"#, FileFormat::Jsonl, &l).unwrap_err();
        assert!(e.contains("'z'"), "{e}");
        for bad in [
            &b"{oops"[..],
            b"[1, 2",
            b"{\"inputs\": [1}",
            b"{\"x\": [1]} 2",
        ] {
            let e = parse_row(bad, FileFormat::Jsonl, &l).unwrap_err();
            assert!(e.starts_with("not JSON"), "{e}");
        }
        // An object whose `inputs` is not an array is an instance (of an input named so).
        let e = parse_row(br#" {"inputs": 5}"#, FileFormat::Jsonl, &l).unwrap_err();
        assert!(e.contains("'inputs'"), "{e}");
        // A key given twice is JSON all the same: the last one counts.
        let e = parse_row(br#"{"inputs": [1], "inputs": 5}"#, FileFormat::Jsonl, &l).unwrap_err();
        assert!(e.contains("'inputs'") && !e.starts_with("not JSON"), "{e}");
        let twice =
            br#"{"inputs": 5, "inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[7]}]}"#;
        let e = parse_row(twice, FileFormat::Jsonl, &l).unwrap_err();
        assert!(!e.starts_with("not JSON"), "{e}");
        // A V2 body is read by the V2 reader, whose errors name the tensor.
        let e = parse_row(
            br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[3],"data":[1,2]}]}"#,
            FileFormat::Jsonl,
            &l,
        )
        .unwrap_err();
        assert!(e.contains("'x'"), "{e}");
    }

    #[test]
    fn rows_alike_stack_and_their_answer_cuts_back_per_row() {
        let l = layout(&[]);
        let rows: Vec<InferRequest> = [
            &br#"[1, 2]"#[..],
            br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[2,2],"data":[3,4,5,6]}]}"#,
            br#"{"inputs":[{"name":"x","datatype":"FP64","shape":[1,2],"data":[7,8]}]}"#,
            b"[9, 10]",
        ]
        .iter()
        .map(|line| parse_row(line, FileFormat::Jsonl, &l).unwrap())
        .collect();
        let refs: Vec<&InferRequest> = rows.iter().collect();
        // The FP64 row stacks with neither neighbour.
        assert_eq!(groups(&refs, 32, &l), vec![0..2, 2..3, 3..4]);
        assert_eq!(groups(&refs, 2, &l), vec![0..1, 1..2, 2..3, 3..4]);
        // An input without a batch dimension never stacks.
        let mut flat = l.clone();
        flat.inputs[0].shape = vec![2, 2];
        assert_eq!(groups(&refs, 32, &flat), vec![0..1, 1..2, 2..3, 3..4]);
        let stacked = stack(&refs[0..2]);
        assert_eq!(stacked.inputs[0].shape, vec![3, 2]);
        assert_eq!(
            floats(&stacked.inputs[0]),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
        // An answer of one value per row.
        let answer = InferResponse {
            outputs: vec![Tensor::new(
                "y",
                DataType::Fp32,
                vec![3, 1],
                TensorData::from_values(&[10f32, 20.0, 30.0]),
            )
            .unwrap()],
            ..InferResponse::default()
        };
        let cut = unstack(&refs[0..2], &answer).unwrap();
        assert_eq!(cut[0][0].shape, vec![1, 1]);
        assert_eq!(floats(&cut[0][0]), vec![10.0]);
        assert_eq!(cut[1][0].shape, vec![2, 1]);
        assert_eq!(floats(&cut[1][0]), vec![20.0, 30.0]);
        // An answer without the rows along its first dimension cannot be cut.
        let flat = InferResponse {
            outputs: vec![Tensor::new(
                "y",
                DataType::Fp32,
                vec![1],
                TensorData::from_values(&[1f32]),
            )
            .unwrap()],
            ..InferResponse::default()
        };
        assert!(unstack(&refs[0..2], &flat).is_none());
    }

    #[test]
    fn result_lines_say_whether_the_row_failed() {
        let ok = result_line(3, Some("2"), &[]);
        assert!(ok.ends_with(b"\n"));
        assert!(!is_error_line(&ok[..ok.len() - 1]));
        let bad = error_line(4, "no");
        assert!(is_error_line(&bad[..bad.len() - 1]));
        let v: Value = serde_json::from_slice(&bad).unwrap();
        assert_eq!(v, serde_json::json!({"row": 4, "error": "no"}));
    }
}
