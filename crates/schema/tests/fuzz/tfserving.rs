//! TF-Serving's predict body, as `POST /v1/models/{m}:predict` reads it: `serde_json` into a
//! `PredictRequest`, then `tfserving::to_infer_request` against the model's inputs.

use crate::elements::{self, quote, JSON_TOKENS};
use crate::harness::{self, Input};
use crate::{check_error, parse_bounded};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use std::fmt;
use vatic_schema::tfserving::{self, PredictForm, PredictRequest};
use vatic_schema::{DataType, SchemaError, TensorMetadata};

/// The model signatures predict bodies are read against; the seed corpus is written for them.
const SIGNATURES: &[&[(&str, DataType, &[i64])]] = &[
    &[("x", DataType::Fp32, &[-1, 4])],
    &[("a", DataType::Int64, &[-1]), ("b", DataType::Bytes, &[-1])],
    &[("s", DataType::Bytes, &[-1])],
    &[
        ("flag", DataType::Bool, &[-1]),
        ("half", DataType::Fp16, &[-1]),
        ("pixels", DataType::Uint8, &[-1, 2]),
    ],
];

fn signature(i: usize) -> Vec<TensorMetadata> {
    SIGNATURES[i]
        .iter()
        .map(|(name, datatype, shape)| TensorMetadata {
            name: (*name).into(),
            datatype: *datatype,
            shape: shape.to_vec(),
        })
        .collect()
}

/// A body and the signature of the model it is sent to.
#[derive(Clone)]
pub struct Case {
    signature: usize,
    body: Vec<u8>,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Case")
            .field("signature", &SIGNATURES[self.signature])
            .field("body", &Input(self.body.clone()))
            .finish()
    }
}

/// A value for one input: its data for one instance (row form) or for all (columnar form).
fn value(dt: DataType) -> BoxedStrategy<String> {
    prop_oneof![
        6 => elements::dims().prop_flat_map(move |dims| elements::data(dt, dims)),
        1 => elements::scalar(),
        1 => select(&[
            "[1,[]]", "[[],1]", "[[1],[]]", "[[[]],[]]", "[[],[[]]]", "[]", "[[]]", "[[],[]]",
            r#"[{"b64":"AA=="},"x"]"#, r#"{"b64":""}"#, r#"[[{"b64":"AA=="}],[]]"#,
        ][..]).prop_map(String::from),
        1 => (95usize..135).prop_map(|d| elements::deep("1", d).1),
    ]
    .boxed()
}

/// An object that names every input of `signature`, or nearly.
fn named(signature: usize) -> BoxedStrategy<String> {
    let inputs = SIGNATURES[signature];
    let values: Vec<_> = inputs.iter().map(|(_, dt, _)| value(*dt)).collect();
    (
        values,
        prop::collection::vec(prop::bool::weighted(0.9), inputs.len()),
        prop::option::weighted(0.1, "[a-z]{1,3}"),
    )
        .prop_map(move |(values, keep, stranger)| {
            let mut members: Vec<(String, String)> = inputs
                .iter()
                .zip(values)
                .map(|((name, _, _), v)| ((*name).to_string(), v))
                .collect();
            if let Some(name) = stranger {
                members.push((name, "1".into()));
            }
            elements::object(members, &keep)
        })
        .boxed()
}

/// A predict body for `signature`, mostly well formed.
fn body(signature: usize) -> BoxedStrategy<String> {
    let one = SIGNATURES[signature].len() == 1;
    let dt = SIGNATURES[signature][0].1;
    // A model of one input takes its bare values too; one of several needs them named.
    let instance = move || match one {
        true => prop_oneof![value(dt), named(signature)].boxed(),
        false => named(signature).boxed(),
    };
    let rows =
        prop::collection::vec(instance(), 0..5).prop_map(|rows| format!("[{}]", rows.join(",")));
    let columns = instance();
    let form = prop_oneof![
        4 => rows.prop_map(|r| format!(r#""instances":{r}"#)),
        4 => columns.prop_map(|c| format!(r#""inputs":{c}"#)),
        1 => select(&[
            r#""instances":[[1]],"inputs":[[1]]"#, r#""instances":3"#, r#""instances":{}"#,
            r#""inputs":null"#, r#""instances":null"#, r#""outputs":[1]"#, "",
        ][..]).prop_map(String::from),
    ];
    (
        form,
        prop::option::weighted(0.2, elements::string()),
        prop::bool::weighted(0.05),
    )
        .prop_map(|(form, signature_name, unknown)| {
            let mut members = vec![form];
            if let Some(name) = signature_name {
                members.push(format!(r#""signature_name":{name}"#));
            }
            if unknown {
                members.push(format!("{}:1", quote("method")));
            }
            format!("{{{}}}", members.join(","))
        })
        .boxed()
}

fn inputs() -> BoxedStrategy<Case> {
    let seeds = harness::corpus("tfserving");
    let signature = 0..SIGNATURES.len();
    prop_oneof![
        4 => signature.clone().prop_flat_map(|s| body(s).prop_map(move |b| Case { signature: s, body: b.into_bytes() })),
        3 => (signature.clone(), harness::mutated_seed(seeds.clone(), JSON_TOKENS))
            .prop_map(|(signature, body)| Case { signature, body }),
        2 => (signature, harness::mutations()).prop_flat_map(move |(s, m)| {
            let seeds = seeds.clone();
            body(s).prop_map(move |b| Case {
                signature: s,
                body: harness::mutate(b.into_bytes(), &m, &seeds, JSON_TOKENS),
            })
        }),
    ].boxed()
}

/// The parse as the TF-Serving route does it.
fn predict(
    body: &[u8],
    inputs: &[TensorMetadata],
) -> Result<(vatic_schema::InferRequest, PredictForm), SchemaError> {
    let predict: PredictRequest =
        serde_json::from_slice(body).map_err(|e| SchemaError::Json(e.to_string()))?;
    tfserving::to_infer_request(predict, inputs)
}

fn decode(case: Case) -> Result<(), TestCaseError> {
    let inputs = signature(case.signature);
    let len = case.body.len();
    let (req, form) = match parse_bounded(len, || predict(&case.body, &inputs))? {
        Ok(decoded) => decoded,
        Err(e) => return check_error(len, &e),
    };
    let sent: serde_json::Value = serde_json::from_slice(&case.body).expect("it parsed once");
    let key = match form {
        PredictForm::Row => "instances",
        PredictForm::Columnar => "inputs",
    };
    prop_assert!(
        sent.get(key).is_some(),
        "answered in the {form:?} form, but the body has no '{key}'"
    );
    prop_assert_eq!(req.inputs.len(), inputs.len(), "one tensor per model input");
    for (t, meta) in req.inputs.iter().zip(&inputs) {
        prop_assert_eq!(&t.name, &meta.name);
        prop_assert_eq!(t.datatype, meta.datatype);
        t.check()
            .map_err(|e| TestCaseError::fail(format!("read an inconsistent tensor: {e}")))?;
        if form == PredictForm::Row {
            let rows = sent[key].as_array().map_or(0, Vec::len) as u64;
            prop_assert_eq!(t.shape.first().copied(), Some(rows), "one row per instance");
        }
    }
    Ok(())
}

#[test]
fn tfserving() {
    harness::fuzz("tfserving", inputs(), decode);
}
