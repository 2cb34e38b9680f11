//! JSON text that request bodies are made of: valid elements of each datatype, values at and
//! past their limits, odd strings, shapes that lie, and the nestings parsers trip on.

use base64::Engine as _;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use vatic_schema::DataType;

/// Tokens worth inserting into a JSON body.
pub const JSON_TOKENS: &[&str] = &[
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "\"",
    "null",
    "true",
    "-1",
    "0",
    "1e400",
    "-0.0",
    "18446744073709551616",
    "9223372036854775808",
    "1099511627776",
    "\\u0000",
    "\\ud800",
    "{\"b64\":\"",
    "\"shape\":",
    "\"datatype\":\"BYTES\"",
    "\"data\":",
    "\"binary_data_size\":",
    "\"parameters\":{",
    "[[[[[[[[",
    "]]]]]]]]",
    "\"inputs\":[",
    "\"instances\":[",
];

/// A JSON number, often at or past the edge of a datatype's range.
pub fn number() -> BoxedStrategy<String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<u64>().prop_map(|v| v.to_string()),
        any::<f64>()
            .prop_filter("finite", |v| v.is_finite())
            .prop_map(|v| format!("{v:?}")),
        (-300i32..300).prop_map(|v| v.to_string()),
        select(
            &[
                "0",
                "-0",
                "-0.0",
                "1.5",
                "255",
                "256",
                "-129",
                "65504",
                "65520",
                "1e39",
                "-1e39",
                "1e400",
                "1e-400",
                "4294967296",
                "9223372036854775808",
                "-9223372036854775809",
                "18446744073709551615",
                "18446744073709551616",
                "1E2",
                "0.1e1",
                "01",
                "1.",
                ".5",
                "+1",
                "NaN",
                "Infinity",
                "0x10",
            ][..]
        )
        .prop_map(String::from),
    ]
    .boxed()
}

/// A JSON string literal: plain, unicode, escapes valid and not, long.
pub fn string() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[a-z_]{0,8}".prop_map(|s| quote(&s)),
        2 => any::<String>().prop_map(|s| quote(&s)),
        1 => select(&[
            r#""\u0000""#, r#""\ud800""#, r#""\udc00\ud800""#, r#""\ud83d\ude00""#,
            "\"\u{202e}\u{feff}\u{10ffff}\"", r#""\/\b\f\n\r\t""#, r#""\x""#, "\"unterminated",
            r#""\u00""#, "\"\u{0}\"", "\"\\\"",
        ][..]).prop_map(String::from),
        1 => (1usize..4096).prop_map(|n| quote(&"é".repeat(n))),
    ]
    .boxed()
}

/// `s` as a JSON string literal.
pub fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// Any JSON scalar or small object, whatever the datatype wants.
pub fn scalar() -> BoxedStrategy<String> {
    prop_oneof![
        4 => number(),
        3 => string(),
        1 => select(&["true", "false", "null", "{}", "[]", "[[]]", r#"{"b64":1}"#,
            r#"{"b64":"AA==","x":1}"#, r#"{"b64":"not base64!"}"#, r#"{"x":"AA=="}"#][..])
            .prop_map(String::from),
        1 => b64(),
    ]
    .boxed()
}

/// TF-Serving's `{"b64": "..."}` form of a binary string.
pub fn b64() -> BoxedStrategy<String> {
    prop::collection::vec(any::<u8>(), 0..24)
        .prop_map(|bytes| {
            format!(
                r#"{{"b64":"{}"}}"#,
                base64::engine::general_purpose::STANDARD.encode(bytes)
            )
        })
        .boxed()
}

/// A valid element of `dt` as JSON text.
pub fn element(dt: DataType) -> BoxedStrategy<String> {
    fn int<T: Arbitrary + ToString + 'static>() -> BoxedStrategy<String> {
        any::<T>().prop_map(|v| v.to_string()).boxed()
    }
    match dt {
        DataType::Bool => any::<bool>().prop_map(|v| v.to_string()).boxed(),
        DataType::Uint8 => int::<u8>(),
        DataType::Uint16 => int::<u16>(),
        DataType::Uint32 => int::<u32>(),
        DataType::Uint64 => int::<u64>(),
        DataType::Int8 => int::<i8>(),
        DataType::Int16 => int::<i16>(),
        DataType::Int32 => int::<i32>(),
        DataType::Int64 => int::<i64>(),
        DataType::Fp16 => (-65504.0f32..65504.0)
            .prop_map(|v| format!("{v:?}"))
            .boxed(),
        DataType::Fp32 => prop_oneof![
            any::<f32>()
                .prop_filter("finite", |v| v.is_finite())
                .prop_map(|v| format!("{v:?}")),
            (-100i32..100).prop_map(|v| v.to_string()),
        ]
        .boxed(),
        DataType::Fp64 => any::<f64>()
            .prop_filter("finite", |v| v.is_finite())
            .prop_map(|v| format!("{v:?}"))
            .boxed(),
        DataType::Bytes => prop_oneof![
            3 => "[ -~]{0,12}".prop_map(|s| quote(&s)),
            1 => any::<String>().prop_map(|s| quote(&s)),
            1 => b64(),
        ]
        .boxed(),
    }
}

/// Small concrete dimensions: up to 4 dimensions of up to 4.
pub fn dims() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(0u64..=4, 0..=4)
}

/// Elements laid out as nested arrays of `dims` (or flat, or a lone scalar for `[]`).
pub fn nest(elements: &[String], dims: &[u64]) -> String {
    match dims {
        [] => elements.first().cloned().unwrap_or_else(|| "[]".into()),
        [_] => format!("[{}]", elements.join(",")),
        [first, rest @ ..] => {
            let step = (rest.iter().product::<u64>() as usize).max(1);
            let rows: Vec<String> = (0..*first as usize)
                .map(|i| {
                    let from = (i * step).min(elements.len());
                    let to = ((i + 1) * step).min(elements.len());
                    nest(&elements[from..to], rest)
                })
                .collect();
            format!("[{}]", rows.join(","))
        }
    }
}

/// How data differs from what its shape says.
#[derive(Debug, Clone)]
pub enum Flaw {
    /// It is what the shape says.
    None,
    /// One element short.
    Short,
    /// One element over.
    Extra(String),
    /// One element of the wrong kind.
    Wrong(Index, String),
    /// Wrapped in one more array.
    Wrapped,
    /// An empty array where an element was.
    EmptyArray(Index),
}

fn flaw() -> impl Strategy<Value = Flaw> {
    prop_oneof![
        20 => Just(Flaw::None),
        1 => Just(Flaw::Short),
        1 => scalar().prop_map(Flaw::Extra),
        2 => (any::<Index>(), scalar()).prop_map(|(i, s)| Flaw::Wrong(i, s)),
        1 => Just(Flaw::Wrapped),
        1 => any::<Index>().prop_map(Flaw::EmptyArray),
    ]
}

/// Data for a `dt` tensor of `dims` as JSON text: nested or flat, mostly right, sometimes not.
pub fn data(dt: DataType, dims: Vec<u64>) -> BoxedStrategy<String> {
    let count = dims.iter().product::<u64>() as usize;
    (
        prop::collection::vec(element(dt), count),
        any::<bool>(),
        flaw(),
    )
        .prop_map(move |(mut elements, flat, flaw)| {
            let wrapped = matches!(flaw, Flaw::Wrapped);
            match flaw {
                Flaw::None | Flaw::Wrapped => {}
                Flaw::Short => {
                    elements.pop();
                }
                Flaw::Extra(e) => elements.push(e),
                Flaw::Wrong(i, e) if !elements.is_empty() => {
                    let i = i.index(elements.len());
                    elements[i] = e;
                }
                Flaw::EmptyArray(i) if !elements.is_empty() => {
                    let i = i.index(elements.len());
                    elements[i] = "[]".into();
                }
                Flaw::Wrong(..) | Flaw::EmptyArray(..) => {}
            }
            let text = if flat || count != elements.len() {
                format!("[{}]", elements.join(","))
            } else {
                nest(&elements, &dims)
            };
            match wrapped {
                true => format!("[{text}]"),
                false => text,
            }
        })
        .boxed()
}

/// Arrays nested `depth` deep around one element, with the matching shape.
pub fn deep(element: &str, depth: usize) -> (String, String) {
    let shape = format!("[{}]", vec!["1"; depth].join(","));
    let data = format!("{}{element}{}", "[".repeat(depth), "]".repeat(depth));
    (shape, data)
}

/// A shape as JSON text: `dims` as they are, or with a dimension that lies.
pub fn shape(dims: Vec<u64>) -> BoxedStrategy<String> {
    let honest = format!(
        "[{}]",
        dims.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    prop_oneof![
        12 => Just(honest),
        2 => (any::<Index>(), select(&[
            "-1", "-9223372036854775808", "1099511627776", "4294967296", "4611686018427387904",
            "9223372036854775807", "18446744073709551615", "18446744073709551616", "1.5", "\"2\"",
            "null", "[]",
        ][..]))
            .prop_map(move |(at, lie)| {
                let mut dims: Vec<String> = dims.iter().map(u64::to_string).collect();
                let at = at.index(dims.len() + 1);
                if at == dims.len() {
                    dims.push(lie.into());
                } else {
                    dims[at] = lie.into();
                }
                format!("[{}]", dims.join(","))
            }),
        1 => select(&[
            "[1099511627776,1099511627776]", "[65536,65536,65536]", "null", "{}", "\"[2]\"", "[",
            "[2,]", "3",
        ][..]).prop_map(String::from),
    ]
    .boxed()
}

/// A datatype name as JSON text: the right one, another one, or not one at all.
pub fn datatype_text(dt: DataType) -> BoxedStrategy<String> {
    prop_oneof![
        12 => Just(quote(dt.as_str())),
        1 => select(DataType::ALL.to_vec()).prop_map(|other| quote(other.as_str())),
        1 => select(&["\"fp32\"", "\"FLOAT32\"", "\"TYPE_FP32\"", "\"\"", "1", "null", "[\"FP32\"]"][..])
            .prop_map(String::from),
    ].boxed()
}

/// An object of `members`, leaving out those whose `keep` is false.
pub fn object(members: Vec<(String, String)>, keep: &[bool]) -> String {
    let kept: Vec<String> = members
        .into_iter()
        .zip(keep.iter().chain(std::iter::repeat(&true)))
        .filter(|(_, keep)| **keep)
        .map(|((k, v), _)| format!("{}:{v}", quote(&k)))
        .collect();
    format!("{{{}}}", kept.join(","))
}
