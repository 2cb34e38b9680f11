//! The V2 binary tensor extension: an `Inference-Header-Content-Length` header, a JSON header
//! of that many bytes, and the binary data of each tensor with a `binary_data_size`, in order.
//! Read as `POST /v2/models/{m}/infer` reads it: `v2::parse_header_length`, then
//! `v2::decode_request(body, header_length)`.

use crate::elements::{self, quote, JSON_TOKENS};
use crate::harness::{self, Input};
use crate::{check_decoded, check_error, parse_bounded};
use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use std::fmt;
use vatic_schema::{v2, DataType, TensorData, ToLeBytes};

/// A request: the header's value (`None` without the header) and the body.
#[derive(Clone)]
pub struct Case {
    header: Option<Vec<u8>>,
    body: Vec<u8>,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Case")
            .field("header", &self.header.clone().map(Input))
            .field("body", &Input(self.body.clone()))
            .finish()
    }
}

/// How a tensor's `binary_data_size` compares with its data.
#[derive(Debug, Clone)]
enum Size {
    True,
    Off(i64),
    Says(&'static str),
}

fn size() -> impl Strategy<Value = Size> {
    prop_oneof![
        8 => Just(Size::True),
        2 => (-5i64..=5).prop_map(Size::Off),
        1 => select(&[
            "0", "-1", "1.5", "\"8\"", "null", "1099511627776", "4294967296",
            "9223372036854775807", "18446744073709551615", "18446744073709551616",
        ][..]).prop_map(Size::Says),
    ]
}

/// The binary data of `dims` elements of `dt`, as the extension lays it out.
fn blob(dt: DataType, dims: &[u64]) -> BoxedStrategy<Vec<u8>> {
    let count = dims.iter().product::<u64>() as usize;
    match dt.size() {
        Some(_) if dt == DataType::Bool => prop::collection::vec(any::<bool>(), count)
            .prop_map(|v| bytes(&TensorData::from_values(&v)))
            .boxed(),
        Some(size) => prop::collection::vec(any::<u8>(), count * size).boxed(),
        None => (
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..6), count),
            prop_oneof![4 => Just(None), 1 => prop_oneof![Just(u32::MAX), 0u32..16].prop_map(Some)],
        )
            .prop_map(|(items, lie)| {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let len = match lie {
                        Some(l) if i == 0 => l,
                        _ => item.len() as u32,
                    };
                    len.put(&mut out);
                    out.extend_from_slice(item);
                }
                out
            })
            .boxed(),
    }
}

fn bytes(data: &TensorData) -> Vec<u8> {
    match data {
        TensorData::Fixed(b) => b.to_vec(),
        TensorData::Bytes(_) => unreachable!("fixed-size data"),
    }
}

/// One input: its JSON and its binary data, or JSON data and no binary data.
fn tensor() -> BoxedStrategy<(String, Vec<u8>)> {
    (select(DataType::ALL.to_vec()), elements::dims(), 0u8..8).prop_flat_map(|(dt, dims, kind)| {
        if kind == 0 {
            return crate::v2_json::tensor().prop_map(|t| (t, Vec::new())).boxed();
        }
        (
            blob(dt, &dims),
            size(),
            elements::shape(dims),
            elements::datatype_text(dt),
            "[a-z]{1,4}",
        )
            .prop_map(|(blob, size, shape, datatype, name)| {
                let size = match size {
                    Size::True => blob.len().to_string(),
                    Size::Off(d) => (blob.len() as i64 + d).to_string(),
                    Size::Says(s) => s.to_string(),
                };
                let json = format!(
                    r#"{{"name":{},"shape":{shape},"datatype":{datatype},"parameters":{{"binary_data_size":{size}}}}}"#,
                    quote(&name)
                );
                (json, blob)
            })
            .boxed()
    }).boxed()
}

/// How the header's value compares with the JSON header's length.
#[derive(Debug, Clone)]
enum Header {
    True,
    Absent,
    Off(i64),
    Says(&'static str),
}

fn header() -> impl Strategy<Value = Header> {
    prop_oneof![
        10 => Just(Header::True),
        1 => Just(Header::Absent),
        2 => (-8i64..=8).prop_map(Header::Off),
        1 => select(&[
            "", " ", "0", "-1", "+5", "0x10", "1e2", " 12 ", "18446744073709551615",
            "18446744073709551616", "99999999999999999999", "\u{661}\u{662}", "(not text)",
        ][..]).prop_map(Header::Says),
    ]
}

/// What follows the last tensor's data.
#[derive(Debug, Clone)]
enum Tail {
    Exact,
    Cut(usize),
    Extra(Vec<u8>),
}

fn tail() -> impl Strategy<Value = Tail> {
    prop_oneof![
        8 => Just(Tail::Exact),
        1 => (1usize..16).prop_map(Tail::Cut),
        1 => prop::collection::vec(any::<u8>(), 1..8).prop_map(Tail::Extra),
    ]
}

/// A request in the binary extension, mostly well formed.
fn request() -> BoxedStrategy<Case> {
    (
        prop::collection::vec(tensor(), 1..4),
        prop_oneof![
            Just(String::new()),
            Just(r#","outputs":[{"name":"y","parameters":{"binary_data":true}}]"#.to_string()),
            Just(r#","parameters":{"binary_data_output":true}"#.to_string()),
        ],
        header(),
        tail(),
    )
        .prop_map(|(tensors, more, header, tail)| {
            let json = format!(
                r#"{{"inputs":[{}]{more}}}"#,
                tensors
                    .iter()
                    .map(|(j, _)| j.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let mut body = json.clone().into_bytes();
            for (_, blob) in &tensors {
                body.extend_from_slice(blob);
            }
            match tail {
                Tail::Exact => {}
                Tail::Cut(n) => body.truncate(body.len().saturating_sub(n)),
                Tail::Extra(extra) => body.extend_from_slice(&extra),
            }
            let header = match header {
                Header::True => Some(json.len().to_string()),
                Header::Absent => None,
                Header::Off(d) => Some((json.len() as i64 + d).to_string()),
                Header::Says(s) => Some(s.to_string()),
            };
            Case {
                header: header.map(String::into_bytes),
                body,
            }
        })
        .boxed()
}

/// A seed file: the header's value, a newline, then the body.
fn split_seed(file: &[u8]) -> Case {
    match file.iter().position(|b| *b == b'\n') {
        Some(at) => Case {
            header: Some(file[..at].to_vec()),
            body: file[at + 1..].to_vec(),
        },
        None => Case {
            header: None,
            body: file.to_vec(),
        },
    }
}

/// Where the first JSON value of `body` ends, when it has one.
fn json_end(body: &[u8]) -> Option<usize> {
    let mut values =
        serde_json::Deserializer::from_slice(body).into_iter::<serde::de::IgnoredAny>();
    values.next()?.ok()?;
    Some(values.byte_offset())
}

fn inputs() -> BoxedStrategy<Case> {
    let seeds = harness::corpus("v2_binary");
    prop_oneof![
        1 => request(),
        1 => (harness::mutated_seed(seeds, JSON_TOKENS), prop::bool::weighted(0.5)).prop_map(
            |(file, retell)| {
                let mut case = split_seed(&file);
                // Mutations move the JSON header's end; telling its new length reaches the
                // binary section more often than the old, now wrong, one.
                if retell {
                    if let Some(end) = json_end(&case.body) {
                        case.header = Some(end.to_string().into_bytes());
                    }
                }
                case
            }
        ),
    ]
    .boxed()
}

/// The header's value as the server hands it to the parser: only visible ASCII is text
/// (`vatic_server::v2::header_length`).
fn header_text(value: &[u8]) -> &str {
    std::str::from_utf8(value)
        .ok()
        .filter(|s| s.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)))
        .unwrap_or("(not text)")
}

fn decode(case: Case) -> Result<(), TestCaseError> {
    let len = case.body.len() + case.header.as_ref().map_or(0, Vec::len);
    let header = case.header.as_deref().map(header_text);
    let header_length = match parse_bounded(len, || v2::parse_header_length(header))? {
        Ok(n) => n,
        Err(e) => return check_error(len, &e),
    };
    let body = Bytes::from(case.body);
    let decoded = parse_bounded(len, || v2::decode_request(&body, header_length))?;
    check_decoded(len, decoded)
}

#[test]
fn v2_binary() {
    harness::fuzz("v2_binary", inputs(), decode);
}
