//! The tensor codecs on the request path: V2 requests decoded from JSON and from the binary
//! extension, and responses encoded both ways, at the demo model's shapes (30 FP32 features
//! in; two FP32 probabilities and an INT64 label out) for 1 and 64 rows.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use vatic_schema::v2::{self, BINARY_DATA_OUTPUT};
use vatic_schema::{DataType, InferRequest, InferResponse, Tensor, TensorData};

fn request(rows: usize) -> InferRequest {
    let values: Vec<f32> = (0..rows * 30).map(|i| (i % 97) as f32 * 0.731).collect();
    let input = Tensor::new(
        "input",
        DataType::Fp32,
        vec![rows as u64, 30],
        TensorData::from_values(&values),
    )
    .unwrap();
    InferRequest {
        inputs: vec![input],
        ..Default::default()
    }
}

fn response(rows: usize) -> InferResponse {
    let p: Vec<f32> = (0..rows * 2).map(|i| (i % 7) as f32 / 7.0).collect();
    let l: Vec<i64> = (0..rows as i64).map(|i| i % 2).collect();
    InferResponse {
        model_name: "breast_cancer".into(),
        model_version: Some("1".into()),
        outputs: vec![
            Tensor::new(
                "probabilities",
                DataType::Fp32,
                vec![rows as u64, 2],
                TensorData::from_values(&p),
            )
            .unwrap(),
            Tensor::new(
                "label",
                DataType::Int64,
                vec![rows as u64],
                TensorData::from_values(&l),
            )
            .unwrap(),
        ],
        ..Default::default()
    }
}

fn requests(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_request");
    for rows in [1usize, 64] {
        let json = v2::encode_request(&request(rows), false);
        let json_body = Bytes::from(json.body);
        g.throughput(Throughput::Elements(rows as u64));
        g.bench_with_input(BenchmarkId::new("json", rows), &json_body, |b, body| {
            b.iter(|| v2::decode_request(black_box(body), None).unwrap());
        });
        let mut req = request(rows);
        req.parameters
            .insert(BINARY_DATA_OUTPUT.into(), true.into());
        let binary = v2::encode_request(&req, true);
        let n = binary.header_length;
        let binary_body = Bytes::from(binary.body);
        g.bench_with_input(BenchmarkId::new("binary", rows), &binary_body, |b, body| {
            b.iter(|| v2::decode_request(black_box(body), n).unwrap());
        });
    }
    g.finish();
}

fn responses(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_response");
    for rows in [1usize, 64] {
        let resp = response(rows);
        g.throughput(Throughput::Elements(rows as u64));
        g.bench_with_input(BenchmarkId::new("json", rows), &resp, |b, r| {
            b.iter(|| v2::encode_response(black_box(r), |_| false));
        });
        g.bench_with_input(BenchmarkId::new("binary", rows), &resp, |b, r| {
            b.iter(|| v2::encode_response(black_box(r), |_| true));
        });
    }
    g.finish();
}

criterion_group!(benches, requests, responses);
criterion_main!(benches);
