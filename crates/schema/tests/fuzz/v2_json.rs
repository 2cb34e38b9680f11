//! The V2 JSON inference request body, as `POST /v2/models/{m}/infer` reads it without the
//! binary extension: `v2::decode_request(body, None)`.

use crate::elements::{self, quote, JSON_TOKENS};
use crate::harness::{self, Input};
use crate::{check_decoded, parse_bounded};
use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use vatic_schema::{v2, DataType};

/// One input tensor as JSON text, mostly well formed.
pub fn tensor() -> BoxedStrategy<String> {
    (select(DataType::ALL.to_vec()), elements::dims())
        .prop_flat_map(|(dt, dims)| {
            (
                "[a-z]{1,6}|\\PC{0,4}".prop_map(|s| quote(&s)),
                elements::shape(dims.clone()),
                elements::datatype_text(dt),
                elements::data(dt, dims),
                parameters(),
                prop::collection::vec(prop::bool::weighted(0.98), 5),
            )
                .prop_map(|(name, shape, datatype, data, parameters, keep)| {
                    let mut members = vec![
                        ("name".to_string(), name),
                        ("shape".to_string(), shape),
                        ("datatype".to_string(), datatype),
                        ("data".to_string(), data),
                    ];
                    if let Some(p) = parameters {
                        members.push(("parameters".to_string(), p));
                    }
                    elements::object(members, &keep)
                })
        })
        .boxed()
}

/// A tensor's `parameters`, when it has them.
fn parameters() -> BoxedStrategy<Option<String>> {
    prop_oneof![
        12 => Just(None),
        1 => Just(Some(r#"{"content_type":"str"}"#.to_string())),
        1 => elements::number().prop_map(|n| Some(format!(r#"{{"binary_data_size":{n}}}"#))),
        1 => select(&["[]", "\"x\"", "null", r#"{"binary_data_size":"8"}"#][..])
            .prop_map(|p| Some(p.to_string())),
        1 => (100usize..140).prop_map(|d| Some(format!(r#"{{"x":{}{}}}"#, "[".repeat(d), "]".repeat(d)))),
    ].boxed()
}

/// A whole request body as JSON text.
fn request() -> BoxedStrategy<String> {
    let inputs = prop_oneof![
        8 => prop::collection::vec(tensor(), 0..4).prop_map(|t| format!("[{}]", t.join(","))),
        1 => (0usize..4, 95usize..135).prop_map(|(dt, depth)| {
            let (shape, data) = elements::deep("1", depth);
            let dt = ["INT8", "FP32", "BOOL", "BYTES"][dt];
            format!(r#"[{{"name":"d","shape":{shape},"datatype":"{dt}","data":{data}}}]"#)
        }),
        1 => select(&["null", "{}", "[1]", "[[]]", "\"x\""][..]).prop_map(String::from),
    ];
    let outputs = prop_oneof![
        Just(r#"[{"name":"y"}]"#.to_string()),
        any::<bool>()
            .prop_map(|b| format!(r#"[{{"name":"y","parameters":{{"binary_data":{b}}}}}]"#)),
        select(
            &[
                "[]",
                "[{}]",
                r#"[{"name":1}]"#,
                "null",
                r#"[{"name":"y","data":[1]}]"#
            ][..]
        )
        .prop_map(String::from),
    ];
    let parameters = prop_oneof![
        any::<bool>().prop_map(|b| format!(r#"{{"binary_data_output":{b}}}"#)),
        elements::scalar().prop_map(|s| format!(r#"{{"binary_data_output":{s},"priority":1}}"#)),
        select(&["{}", "[]", "null", "1"][..]).prop_map(String::from),
    ];
    (
        inputs,
        outputs,
        parameters,
        prop_oneof![3 => elements::string(), 1 => elements::scalar()],
        prop::bool::weighted(0.97),
        prop::collection::vec(prop::bool::weighted(0.8), 3),
        any::<bool>(),
    )
        .prop_map(
            |(inputs, outputs, parameters, id, keep_inputs, keep, extra)| {
                let mut members = vec![
                    ("inputs".to_string(), inputs),
                    ("id".to_string(), id),
                    ("parameters".to_string(), parameters),
                    ("outputs".to_string(), outputs),
                ];
                if extra {
                    members.push(("model_name".to_string(), quote("m")));
                }
                // Without `inputs` nothing past the envelope runs: it is left out only now and then.
                let keep: Vec<bool> = std::iter::once(keep_inputs).chain(keep).collect();
                elements::object(members, &keep)
            },
        )
        .boxed()
}

fn inputs() -> BoxedStrategy<Input> {
    let seeds = harness::corpus("v2_json");
    prop_oneof![
        4 => request().prop_map(String::into_bytes),
        3 => harness::mutated_seed(seeds.clone(), JSON_TOKENS),
        2 => (request(), harness::mutations()).prop_map(move |(body, m)| {
            harness::mutate(body.into_bytes(), &m, &seeds, JSON_TOKENS)
        }),
    ]
    .prop_map(Input)
    .boxed()
}

fn decode(Input(body): Input) -> Result<(), TestCaseError> {
    let body = Bytes::from(body);
    let decoded = parse_bounded(body.len(), || v2::decode_request(&body, None))?;
    check_decoded(body.len(), decoded)
}

#[test]
fn v2_json() {
    harness::fuzz("v2_json", inputs(), decode);
}
