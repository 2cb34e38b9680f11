//! Encode/decode round trips for every datatype, in JSON and with the binary extension.

use bytes::Bytes;
use half::f16;
use proptest::prelude::*;
use serde_json::json;
use vatic_schema::tfserving::{self, PredictForm, PredictRequest};
use vatic_schema::v2::{self, BINARY_DATA, BINARY_DATA_OUTPUT};
use vatic_schema::{
    DataType, InferRequest, InferResponse, Parameters, RequestedOutput, Tensor, TensorData,
    TensorMetadata,
};

/// Elements of `dt` that survive JSON: finite floats, UTF-8 strings.
fn elements(dt: DataType, count: usize, json_safe: bool) -> BoxedStrategy<TensorData> {
    fn fixed<T: Arbitrary + vatic_schema::ToLeBytes + 'static>(
        count: usize,
    ) -> BoxedStrategy<TensorData> {
        prop::collection::vec(any::<T>(), count)
            .prop_map(|v| TensorData::from_values(&v))
            .boxed()
    }
    match dt {
        DataType::Bool => fixed::<bool>(count),
        DataType::Uint8 => fixed::<u8>(count),
        DataType::Uint16 => fixed::<u16>(count),
        DataType::Uint32 => fixed::<u32>(count),
        DataType::Uint64 => fixed::<u64>(count),
        DataType::Int8 => fixed::<i8>(count),
        DataType::Int16 => fixed::<i16>(count),
        DataType::Int32 => fixed::<i32>(count),
        DataType::Int64 => fixed::<i64>(count),
        DataType::Fp16 => prop::collection::vec(-65504.0f32..65504.0, count)
            .prop_map(|v| {
                TensorData::from_values(&v.into_iter().map(f16::from_f32).collect::<Vec<_>>())
            })
            .boxed(),
        DataType::Fp32 => {
            prop::collection::vec(prop::num::f32::NORMAL | prop::num::f32::ZERO, count)
                .prop_map(|v| TensorData::from_values(&v))
                .boxed()
        }
        DataType::Fp64 => {
            prop::collection::vec(prop::num::f64::NORMAL | prop::num::f64::ZERO, count)
                .prop_map(|v| TensorData::from_values(&v))
                .boxed()
        }
        DataType::Bytes if json_safe => prop::collection::vec(".{0,8}", count)
            .prop_map(|v| TensorData::Bytes(v.into_iter().map(Bytes::from).collect()))
            .boxed(),
        DataType::Bytes => prop::collection::vec(prop::collection::vec(any::<u8>(), 0..8), count)
            .prop_map(|v| TensorData::Bytes(v.into_iter().map(Bytes::from).collect()))
            .boxed(),
    }
}

fn tensor(name: &'static str, json_safe: bool) -> impl Strategy<Value = Tensor> {
    (
        prop::sample::select(DataType::ALL.to_vec()),
        prop::collection::vec(0u64..4, 0..4),
    )
        .prop_flat_map(move |(dt, shape)| {
            let count = shape.iter().product::<u64>() as usize;
            elements(dt, count, json_safe).prop_map(move |data| {
                Tensor::new(name, dt, shape.clone(), data).expect("consistent")
            })
        })
}

fn tensors(json_safe: bool) -> impl Strategy<Value = Vec<Tensor>> {
    (tensor("a", json_safe), tensor("b", json_safe), 1usize..=2).prop_map(|(a, b, n)| {
        if n == 1 {
            vec![a]
        } else {
            vec![a, b]
        }
    })
}

proptest! {
    #[test]
    fn request_round_trips_in_json(inputs in tensors(true)) {
        let req = InferRequest {
            id: Some("r1".into()),
            inputs,
            outputs: vec![RequestedOutput { name: "y".into(), parameters: Parameters::new() }],
            ..Default::default()
        };
        let enc = v2::encode_request(&req, false);
        prop_assert_eq!(enc.header_length, None);
        // The text form is the same JSON.
        let text = v2::request_json(&req);
        prop_assert_eq!(text.as_bytes(), &enc.body[..]);
        let back = v2::decode_request(&Bytes::from(enc.body), enc.header_length).unwrap();
        prop_assert_eq!(back, req);
    }

    #[test]
    fn request_round_trips_in_binary(inputs in tensors(false)) {
        let req = InferRequest { inputs, ..Default::default() };
        let enc = v2::encode_request(&req, true);
        prop_assert!(enc.header_length.is_some());
        let back = v2::decode_request(&Bytes::from(enc.body), enc.header_length).unwrap();
        prop_assert_eq!(back, req);
    }

    #[test]
    fn response_round_trips_with_mixed_binary_outputs(outputs in tensors(true), a_binary: bool, b_binary: bool) {
        let resp = InferResponse {
            model_name: "m".into(),
            model_version: Some("3".into()),
            id: Some("x".into()),
            outputs,
            ..Default::default()
        };
        let enc = v2::encode_response(&resp, |t| if t.name == "a" { a_binary } else { b_binary });
        let back = v2::decode_response(&Bytes::from(enc.body), enc.header_length).unwrap();
        prop_assert_eq!(&back, &resp);
        // The text forms, every output in JSON, plain and indented, decode to the same.
        for pretty in [false, true] {
            let text = v2::response_json(&resp, pretty);
            prop_assert_eq!(v2::decode_response(&Bytes::from(text), None).unwrap(), resp.clone());
        }
        let text = v2::response_json(&resp, false);
        prop_assert_eq!(text.as_bytes(), &v2::encode_response(&resp, |_| false).body[..]);
    }

    #[test]
    fn tf_serving_columnar_round_trips(t in tensor("x", true)) {
        prop_assume!(!t.shape.is_empty());
        let resp = InferResponse { model_name: "m".into(), outputs: vec![t.clone()], ..Default::default() };
        let body = tfserving::to_predict_response(&resp, PredictForm::Columnar).unwrap();
        let meta = TensorMetadata { name: "x".into(), datatype: t.datatype, shape: vec![] };
        let req = PredictRequest { signature_name: None, instances: None, inputs: Some(body["outputs"].clone()) };
        let (back, form) = tfserving::to_infer_request(req, &[meta]).unwrap();
        prop_assert_eq!(form, PredictForm::Columnar);
        prop_assert_eq!(&back.inputs[0].data, &t.data);
        // An empty dimension hides the ones after it in nested JSON; otherwise the shape survives.
        if !t.shape.contains(&0) {
            prop_assert_eq!(&back.inputs[0].shape, &t.shape);
        }
    }
}

#[test]
fn json_outputs_have_no_parameters_member() {
    let resp = InferResponse {
        model_name: "m".into(),
        outputs: vec![Tensor::new(
            "y",
            DataType::Fp32,
            vec![2],
            TensorData::from_values(&[1.5f32, 2.0]),
        )
        .unwrap()],
        ..Default::default()
    };
    let enc = v2::encode_response(&resp, |_| false);
    let body: serde_json::Value = serde_json::from_slice(&enc.body).unwrap();
    assert_eq!(
        body,
        json!({"model_name": "m", "outputs": [{"name": "y", "datatype": "FP32", "shape": [2], "data": [1.5, 2.0]}]})
    );
    let enc = v2::encode_response(&resp, |_| true);
    let header: serde_json::Value =
        serde_json::from_slice(&enc.body[..enc.header_length.unwrap()]).unwrap();
    assert_eq!(
        header["outputs"][0]["parameters"],
        json!({"binary_data_size": 8})
    );
    assert_eq!(enc.body.len(), enc.header_length.unwrap() + 8);
}

#[test]
fn binary_choice_follows_output_then_request_parameters() {
    let mut req = InferRequest::default();
    assert!(!req.wants_binary("y"));
    req.parameters
        .insert(BINARY_DATA_OUTPUT.into(), json!(true));
    assert!(req.wants_binary("y"));
    let mut p = Parameters::new();
    p.insert(BINARY_DATA.into(), json!(false));
    req.outputs.push(RequestedOutput {
        name: "y".into(),
        parameters: p,
    });
    assert!(!req.wants_binary("y"));
    assert!(req.wants_binary("z"));
}

fn decode_err(body: &str, header_length: Option<usize>) -> String {
    v2::decode_request(&Bytes::from(body.to_string()), header_length)
        .unwrap_err()
        .to_string()
}

#[test]
fn request_errors_say_what_is_wrong() {
    let cases: &[(&str, Option<usize>, &str)] = &[
        ("{", None, "malformed JSON"),
        (
            r#"{"inputs": [{"name": "x", "shape": [2], "datatype": "FLOAT", "data": [1, 2]}]}"#,
            None,
            "unknown datatype 'FLOAT'",
        ),
        (
            r#"{"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}"#,
            None,
            "tensor 'x' with shape [3] needs 12 bytes (3 x FP32) of data, got 8 bytes",
        ),
        (
            r#"{"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}]}"#,
            None,
            "negative dimension",
        ),
        (
            r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}"#,
            None,
            "has no data",
        ),
        (
            r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]}"#,
            None,
            "no Inference-Header-Content-Length",
        ),
        (r#"{"id": "a"}"#, None, "no inputs"),
        (
            r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}"#,
            Some(500),
            "is 500 but the body has only",
        ),
        (
            r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}"#,
            Some(0),
            "not supported",
        ),
        (
            r#"{"inputs": [{"name": "x", "shape": [4294967296, 4294967296], "datatype": "FP32", "data": [1]}]}"#,
            None,
            "byte size overflow",
        ),
    ];
    for (body, hl, want) in cases {
        let err = decode_err(body, *hl);
        assert!(
            err.contains(want),
            "body {body}: got '{err}', want '{want}'"
        );
    }
}

#[test]
fn binary_sizes_must_add_up() {
    let header = r#"{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}"#;
    let mut body = header.as_bytes().to_vec();
    body.extend_from_slice(&[0u8; 4]);
    let err = v2::decode_request(&Bytes::from(body.clone()), Some(header.len()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("runs past the end"), "{err}");
    body.extend_from_slice(&[0u8; 8]);
    let err = v2::decode_request(&Bytes::from(body), Some(header.len()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("binary_data_size add up to 8"), "{err}");
    // A size that would wrap around past the first tensor's data is refused, not a panic.
    let header = r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "parameters": {"binary_data_size": 1}}, {"name": "y", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 18446744073709551615}}]}"#;
    let mut body = header.as_bytes().to_vec();
    body.extend_from_slice(&[0u8; 5]);
    let err = v2::decode_request(&Bytes::from(body), Some(header.len()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("runs past the end"), "{err}");
    let err = v2::parse_header_length(Some("abc"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("must be a non-negative whole number"), "{err}");
}

#[test]
fn bool_bytes_other_than_zero_and_one_are_refused() {
    let header = r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "BOOL", "parameters": {"binary_data_size": 1}}]}"#;
    let mut body = header.as_bytes().to_vec();
    body.push(7);
    let err = v2::decode_request(&Bytes::from(body), Some(header.len()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("BOOL elements must be the bytes 0 or 1"),
        "{err}"
    );
}

fn meta(name: &str, dt: DataType) -> TensorMetadata {
    TensorMetadata {
        name: name.into(),
        datatype: dt,
        shape: vec![-1, 2],
    }
}

#[test]
fn tf_serving_row_form_with_named_inputs() {
    let inputs = [meta("a", DataType::Fp32), meta("b", DataType::Int64)];
    let req: PredictRequest = serde_json::from_value(
        json!({"instances": [{"a": [1, 2], "b": [3, 4]}, {"a": [5, 6], "b": [7, 8]}]}),
    )
    .unwrap();
    let (v2req, form) = tfserving::to_infer_request(req, &inputs).unwrap();
    assert_eq!(form, PredictForm::Row);
    assert_eq!(v2req.inputs[0].shape, vec![2, 2]);
    assert_eq!(
        v2req.inputs[0].data.to_f64(DataType::Fp32),
        vec![1.0, 2.0, 5.0, 6.0]
    );
    assert_eq!(
        v2req.inputs[1].data,
        TensorData::from_values(&[3i64, 4, 7, 8])
    );

    let resp = InferResponse {
        model_name: "m".into(),
        outputs: vec![
            Tensor::new(
                "p",
                DataType::Fp32,
                vec![2, 2],
                TensorData::from_values(&[0.5f32, 0.5, 0.25, 0.75]),
            )
            .unwrap(),
            Tensor::new(
                "l",
                DataType::Int64,
                vec![2],
                TensorData::from_values(&[0i64, 1]),
            )
            .unwrap(),
        ],
        ..Default::default()
    };
    assert_eq!(
        tfserving::to_predict_response(&resp, PredictForm::Row).unwrap(),
        json!({"predictions": [{"p": [0.5, 0.5], "l": 0}, {"p": [0.25, 0.75], "l": 1}]})
    );
    assert_eq!(
        tfserving::to_predict_response(&resp, PredictForm::Columnar).unwrap(),
        json!({"outputs": {"p": [[0.5, 0.5], [0.25, 0.75]], "l": [0, 1]}})
    );
}

#[test]
fn tf_serving_errors_say_what_is_wrong() {
    let one = [meta("x", DataType::Fp32)];
    let two = [meta("a", DataType::Fp32), meta("b", DataType::Fp32)];
    let cases: Vec<(serde_json::Value, &[TensorMetadata], &str)> = vec![
        (
            json!({"instances": [[1]], "inputs": [[1]]}),
            &one,
            "not both",
        ),
        (json!({}), &one, "needs 'instances'"),
        (json!({"instances": []}), &one, "'instances' is empty"),
        (json!({"instances": 3}), &one, "must be a list"),
        (
            json!({"instances": [[1, 2]]}),
            &two,
            "the model has 2 inputs (a, b)",
        ),
        (
            json!({"instances": [{"a": [1, 2]}]}),
            &two,
            "instance 0 has no value for input 'b'",
        ),
        (
            json!({"instances": [{"a": [1], "c": [2]}]}),
            &two,
            "names input 'c'",
        ),
        (
            json!({"inputs": {"a": [[1, 2]]}}),
            &two,
            "'inputs' has no value for input 'b'",
        ),
        (json!({"instances": [[1, 2], [3]]}), &one, "ragged"),
        (json!({"instances": [["a", "b"]]}), &one, "needs a number"),
    ];
    for (body, inputs, want) in cases {
        let err = serde_json::from_value::<PredictRequest>(body.clone())
            .map_err(|e| e.to_string())
            .and_then(|r| tfserving::to_infer_request(r, inputs).map_err(|e| e.to_string()))
            .unwrap_err();
        assert!(
            err.contains(want),
            "body {body}: got '{err}', want '{want}'"
        );
    }
}

#[test]
fn load_states_are_the_repository_index_words_and_unknown_ones_read_as_unavailable() {
    use vatic_schema::admin::LoadState;
    use vatic_schema::tfserving::{VersionState, VersionStatus};
    let words = [
        (LoadState::Loading, "LOADING"),
        (LoadState::Ready, "READY"),
        (LoadState::Unavailable, "UNAVAILABLE"),
    ];
    for (state, word) in words {
        assert_eq!(serde_json::to_value(state).unwrap(), word);
        assert_eq!(
            serde_json::from_value::<LoadState>(word.into()).unwrap(),
            state
        );
    }
    let newer: LoadState = serde_json::from_value("UNLOADING".into()).unwrap();
    assert_eq!(newer, LoadState::Unavailable);
    let status = VersionStatus::of("3".into(), LoadState::Ready, String::new());
    assert_eq!(
        serde_json::to_value(&status).unwrap(),
        serde_json::json!({"version": "3", "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""}})
    );
    let failed = VersionStatus::of("4".into(), LoadState::Unavailable, "bad graph".into());
    assert_eq!(failed.state, VersionState::Unavailable);
    assert_eq!(
        (
            failed.status.error_code.as_str(),
            failed.status.error_message.as_str()
        ),
        ("UNAVAILABLE", "bad graph")
    );
}
