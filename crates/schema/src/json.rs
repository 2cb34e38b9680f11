//! Reading tensor elements from JSON: flat or nested arrays, typed by the declared datatype.

use crate::tensor::TensorData;
use crate::{DataType, SchemaError};
use base64::Engine as _;
use bytes::Bytes;
use half::f16;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// Deepest nesting accepted in tensor data, as Triton does.
pub const MAX_NESTING: usize = 100;

/// Elements read from JSON with the shape their nesting describes.
#[derive(Debug)]
pub struct Parsed {
    /// The elements.
    pub data: TensorData,
    /// The shape the nesting describes (`[]` for a lone scalar).
    pub shape: Vec<u64>,
}

/// Reads JSON `text` (a scalar or nested arrays of scalars) as elements of `datatype`.
///
/// Nested arrays must be regular (every array at one depth has the same length), so the nesting
/// gives a shape; V2 callers ignore it and check the element count against the declared shape,
/// TF-Serving callers use it as the tensor's shape.
pub fn parse_elements(name: &str, datatype: DataType, text: &str) -> Result<Parsed, SchemaError> {
    let mut state = State {
        name,
        datatype,
        fixed: Vec::new(),
        items: Vec::new(),
        count: 0,
        shape: Vec::new(),
        leaf_depth: None,
        error: None,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let result = Elem {
        state: &mut state,
        depth: 0,
    }
    .deserialize(&mut de)
    .and_then(|_| de.end());
    if let Some(err) = state.error.take() {
        return Err(err);
    }
    result.map_err(|e| {
        SchemaError::Invalid(format!("tensor '{name}': data is not valid JSON: {e}"))
    })?;
    let data = match datatype {
        DataType::Bytes => TensorData::Bytes(state.items),
        _ => TensorData::Fixed(Bytes::from(state.fixed)),
    };
    let shape = state.shape.iter().map(|d| d.unwrap_or(0) as u64).collect();
    Ok(Parsed { data, shape })
}

/// Reads a parsed JSON value; for callers that already hold a `serde_json::Value`.
pub fn parse_value(
    name: &str,
    datatype: DataType,
    value: &serde_json::Value,
) -> Result<Parsed, SchemaError> {
    parse_elements(name, datatype, &value.to_string())
}

struct State<'a> {
    name: &'a str,
    datatype: DataType,
    fixed: Vec<u8>,
    items: Vec<Bytes>,
    count: usize,
    shape: Vec<Option<usize>>,
    leaf_depth: Option<usize>,
    error: Option<SchemaError>,
}

impl State<'_> {
    fn fail<E: de::Error>(&mut self, msg: String) -> E {
        let err = SchemaError::Invalid(format!("tensor '{}': {msg}", self.name));
        let text = err.to_string();
        self.error.get_or_insert(err);
        E::custom(text)
    }

    fn leaf<E: de::Error>(&mut self, depth: usize) -> Result<(), E> {
        match self.leaf_depth {
            None => self.leaf_depth = Some(depth),
            Some(d) if d != depth => {
                return Err(self.fail(format!(
                    "data is ragged: element {} is nested {depth} deep where earlier elements were {d} deep",
                    self.count
                )))
            }
            Some(_) => {}
        }
        self.count += 1;
        Ok(())
    }

    fn wrong<E: de::Error>(&mut self, got: &str) -> E {
        let expected = match self.datatype {
            DataType::Bool => "true or false",
            DataType::Fp16 | DataType::Fp32 | DataType::Fp64 => "a number",
            DataType::Bytes => "a string",
            _ => "an integer",
        };
        let msg = format!(
            "element {} is {got}, but datatype {} needs {expected}",
            self.count, self.datatype
        );
        self.fail(msg)
    }

    fn int<E: de::Error>(&mut self, v: i128, depth: usize) -> Result<(), E> {
        macro_rules! put {
            ($t:ty) => {{
                let Ok(x) = <$t>::try_from(v) else {
                    let msg = format!(
                        "element {} = {v} is out of range for {}",
                        self.count, self.datatype
                    );
                    return Err(self.fail(msg));
                };
                self.fixed.extend_from_slice(&x.to_le_bytes());
            }};
        }
        match self.datatype {
            DataType::Uint8 => put!(u8),
            DataType::Uint16 => put!(u16),
            DataType::Uint32 => put!(u32),
            DataType::Uint64 => put!(u64),
            DataType::Int8 => put!(i8),
            DataType::Int16 => put!(i16),
            DataType::Int32 => put!(i32),
            DataType::Int64 => put!(i64),
            DataType::Fp16 | DataType::Fp32 | DataType::Fp64 => return self.float(v as f64, depth),
            DataType::Bool | DataType::Bytes => return Err(self.wrong(&format!("the number {v}"))),
        }
        self.leaf(depth)
    }

    fn float<E: de::Error>(&mut self, v: f64, depth: usize) -> Result<(), E> {
        match self.datatype {
            DataType::Fp16 => self
                .fixed
                .extend_from_slice(&f16::from_f64(v).to_le_bytes()),
            DataType::Fp32 => self.fixed.extend_from_slice(&(v as f32).to_le_bytes()),
            DataType::Fp64 => self.fixed.extend_from_slice(&v.to_le_bytes()),
            _ => return Err(self.wrong(&format!("the number {v}"))),
        }
        self.leaf(depth)
    }
}

struct Elem<'s, 'a> {
    state: &'s mut State<'a>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Elem<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Elem<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("tensor elements")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        if self.state.datatype != DataType::Bool {
            return Err(self.state.wrong(&format!("{v}")));
        }
        self.state.fixed.push(v as u8);
        self.state.leaf(self.depth)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.state.int(v as i128, self.depth)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.state.int(v as i128, self.depth)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.state.float(v, self.depth)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if self.state.datatype != DataType::Bytes {
            // The tokens TF Serving's reader takes for floats (see [`quote_non_finite`]).
            let float = matches!(
                self.state.datatype,
                DataType::Fp16 | DataType::Fp32 | DataType::Fp64
            );
            let special = match v {
                "NaN" => Some(f64::NAN),
                "Infinity" => Some(f64::INFINITY),
                "-Infinity" => Some(f64::NEG_INFINITY),
                _ => None,
            };
            if let (true, Some(x)) = (float, special) {
                return self.state.float(x, self.depth);
            }
            return Err(self.state.wrong(&format!("the string {v:?}")));
        }
        self.state.items.push(Bytes::copy_from_slice(v.as_bytes()));
        self.state.leaf(self.depth)
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.state.wrong("null"))
    }

    /// TF-Serving's `{"b64": "..."}` form of a binary string.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let key: Option<String> = map.next_key()?;
        if self.state.datatype != DataType::Bytes || key.as_deref() != Some("b64") {
            return Err(self.state.wrong("an object"));
        }
        let text: String = map.next_value()?;
        if map.next_key::<String>()?.is_some() {
            return Err(self
                .state
                .fail("a {\"b64\": ...} element may hold only the b64 key".into()));
        }
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text.as_bytes()) else {
            let msg = format!("element {} is not valid base64", self.state.count);
            return Err(self.state.fail(msg));
        };
        self.state.items.push(Bytes::from(bytes));
        self.state.leaf(self.depth)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.depth;
        if depth >= MAX_NESTING {
            return Err(self.state.fail(format!(
                "JSON nesting depth exceeds maximum allowed limit ({MAX_NESTING})"
            )));
        }
        let mut len = 0usize;
        while seq
            .next_element_seed(Elem {
                state: &mut *self.state,
                depth: depth + 1,
            })?
            .is_some()
        {
            len += 1;
        }
        let state = self.state;
        if len == 0 {
            // An empty array is a leaf level of size zero, and must be as deep as the others:
            // in `[1, []]` the shape would say no elements where there is one.
            match state.leaf_depth {
                None => state.leaf_depth = Some(depth + 1),
                Some(d) if d != depth + 1 => {
                    let msg = format!(
                        "data is ragged: an empty array at depth {} where elements are {d} deep",
                        depth + 1
                    );
                    return Err(state.fail(msg));
                }
                Some(_) => {}
            }
        }
        // Inner arrays finish before outer ones, so the shape is indexed by depth, not pushed.
        if state.shape.len() <= depth {
            state.shape.resize(depth + 1, None);
        }
        match state.shape[depth] {
            None => state.shape[depth] = Some(len),
            Some(earlier) if earlier != len => {
                let msg = format!(
                    "data is ragged: an array at depth {} has {len} elements where an earlier one had {earlier}",
                    depth + 1
                );
                return Err(state.fail(msg));
            }
            Some(_) => {}
        }
        Ok(())
    }
}

/// Follows a JSON text byte by byte and tells which bytes lie outside its strings (a string's
/// quotes count as inside), without parsing it.
#[derive(Default)]
struct OutsideStrings {
    in_string: bool,
    escaped: bool,
}

impl OutsideStrings {
    /// Whether `b`, the next byte, lies outside every string.
    fn outside(&mut self, b: u8) -> bool {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
            }
            false
        } else if b == b'"' {
            self.in_string = true;
            false
        } else {
            true
        }
    }
}

/// The JSON tokens `NaN`, `Infinity` and `-Infinity`, which TF Serving's reader accepts as
/// numbers and standard JSON does not, turned into the strings `"NaN"`, `"Infinity"` and
/// `"-Infinity"`, which the element reader takes as those values for float tensors. Text in
/// strings is left as it is. `None` when the document has no such token.
pub fn quote_non_finite(json: &[u8]) -> Option<Vec<u8>> {
    const TOKENS: [&[u8]; 3] = [b"-Infinity", b"Infinity", b"NaN"];
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut scan = OutsideStrings::default();
    let mut i = 0;
    while i < json.len() {
        let b = json[i];
        // The tokens hold no quote, so skipping one leaves the scan where it was.
        if !scan.outside(b) || !matches!(b, b'N' | b'I' | b'-') {
            i += 1;
            continue;
        }
        let found = TOKENS.iter().find(|t| {
            json[i..].starts_with(t)
                && (i == 0 || !word(json[i - 1]))
                && json.get(i + t.len()).is_none_or(|&next| !word(next))
        });
        match found {
            Some(token) => {
                let o = out.get_or_insert_with(|| Vec::with_capacity(json.len() + 16));
                o.extend_from_slice(&json[copied..i]);
                o.push(b'"');
                o.extend_from_slice(token);
                o.push(b'"');
                i += token.len();
                copied = i;
            }
            None => i += 1,
        }
    }
    let mut out = out?;
    out.extend_from_slice(&json[copied..]);
    Some(out)
}

/// Refuses a JSON document with more than `max` values, counted without parsing it: every
/// array and object, and every element or member after an array's or object's first, at any
/// depth (so a count within one of the document's number of values). Cheaper than the parse
/// it guards; it bounds the memory a parse into generic JSON values may take, which the body
/// size alone does not (an empty array is two bytes on the wire and tens in memory).
pub fn check_values(json: &[u8], max: usize) -> Result<(), SchemaError> {
    let mut count = 0usize;
    let mut scan = OutsideStrings::default();
    for &b in json {
        if !scan.outside(b) {
            continue;
        }
        match b {
            b'[' | b'{' | b',' => {
                count += 1;
                if count > max {
                    return Err(SchemaError::Invalid(format!(
                        "the JSON body has more than {max} values (max_json_values): send large \
                         tensors as binary data (the binary tensor extension)"
                    )));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_tokens_become_strings_outside_strings_only() {
        let quoted =
            |s: &str| quote_non_finite(s.as_bytes()).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(
            quoted(r#"{"instances": [[NaN, Infinity, -Infinity, 1.5]]}"#).as_deref(),
            Some(r#"{"instances": [["NaN", "Infinity", "-Infinity", 1.5]]}"#)
        );
        assert_eq!(
            quoted(r#"[NaN,"NaN and Infinity",-Infinity]"#).as_deref(),
            Some(r#"["NaN","NaN and Infinity","-Infinity"]"#)
        );
        assert_eq!(quoted(r#"{"a": "\"NaN", "b": [1e5, -2]}"#), None);
        assert_eq!(quoted("[NaNa, xNaN, Infinity_, NAN, nan]"), None);
        assert_eq!(quoted("NaN").as_deref(), Some(r#""NaN""#));
        let parsed = parse_elements(
            "x",
            DataType::Fp32,
            r#"["NaN", "Infinity", "-Infinity", 2]"#,
        )
        .unwrap();
        let TensorData::Fixed(bytes) = &parsed.data else {
            panic!("fixed-size elements")
        };
        let v: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert!(
            v.len() == 4
                && v[0].is_nan()
                && v[1] == f32::INFINITY
                && v[2] == f32::NEG_INFINITY
                && v[3] == 2.0,
            "{v:?}"
        );
        let err = parse_elements("x", DataType::Int32, r#"["NaN"]"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("the string \"NaN\""), "{err}");
        assert!(parse_elements("x", DataType::Fp64, r#"["nan"]"#).is_err());
    }

    #[test]
    fn check_values_counts_containers_and_elements_outside_strings() {
        assert!(check_values(b"{}", 1).is_ok());
        assert!(check_values(b"[1,2,3]", 3).is_ok());
        assert!(check_values(b"[1,2,3]", 2).is_err());
        // Brackets and commas inside strings, escaped quotes included, are not counted.
        assert!(check_values(br#"["a,b,[{", "\",[,"]"#, 2).is_ok());
        assert!(check_values(br#"["a,b,[{", "\",[,"]"#, 1).is_err());
        let many = format!("[{}]", vec!["[]"; 1000].join(","));
        let err = check_values(many.as_bytes(), 1000).unwrap_err().to_string();
        assert!(
            err.contains("more than 1000 values (max_json_values)"),
            "{err}"
        );
        assert!(check_values(many.as_bytes(), 2000).is_ok());
    }

    fn f32s(p: &Parsed) -> Vec<f64> {
        p.data.to_f64(DataType::Fp32)
    }

    #[test]
    fn flat_and_nested_give_the_same_elements() {
        let flat = parse_elements("x", DataType::Fp32, "[1, 2.5, 3, 4]").unwrap();
        let nested = parse_elements("x", DataType::Fp32, "[[1, 2.5], [3, 4]]").unwrap();
        assert_eq!(f32s(&flat), vec![1.0, 2.5, 3.0, 4.0]);
        assert_eq!(f32s(&flat), f32s(&nested));
        assert_eq!(flat.shape, vec![4]);
        assert_eq!(nested.shape, vec![2, 2]);
    }

    #[test]
    fn ragged_data_is_refused() {
        let err = parse_elements("x", DataType::Fp32, "[[1, 2], [3]]").unwrap_err();
        assert!(err.to_string().contains("ragged"), "{err}");
        let err = parse_elements("x", DataType::Fp32, "[[1, 2], 3]").unwrap_err();
        assert!(err.to_string().contains("ragged"), "{err}");
    }

    #[test]
    fn wrong_element_types_are_named() {
        let err = parse_elements("x", DataType::Int32, "[1, 2.5]").unwrap_err();
        assert!(
            err.to_string()
                .contains("element 1 is the number 2.5, but datatype INT32 needs an integer"),
            "{err}"
        );
        let err = parse_elements("x", DataType::Uint8, "[300]").unwrap_err();
        assert!(err.to_string().contains("out of range for UINT8"), "{err}");
        let err = parse_elements("x", DataType::Fp32, "[\"a\"]").unwrap_err();
        assert!(err.to_string().contains("needs a number"), "{err}");
        let err = parse_elements("x", DataType::Bool, "[1]").unwrap_err();
        assert!(err.to_string().contains("needs true or false"), "{err}");
    }

    #[test]
    fn empty_arrays_beside_elements_are_ragged() {
        let cases = [
            (DataType::Fp32, "[1, []]"),
            (DataType::Fp32, "[[1], [[]]]"),
            (DataType::Bytes, r#"["a", [], "b"]"#),
        ];
        for (dt, text) in cases {
            let err = parse_elements("x", dt, text).unwrap_err();
            assert!(err.to_string().contains("ragged"), "{text}: {err}");
        }
        let p = parse_elements("x", DataType::Fp32, "[[], []]").unwrap();
        assert_eq!(p.shape, vec![2, 0]);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = format!("{}1{}", "[".repeat(101), "]".repeat(101));
        let err = parse_elements("x", DataType::Fp32, &text).unwrap_err();
        assert!(err.to_string().contains("nesting depth"), "{err}");
    }

    #[test]
    fn bytes_accept_strings_and_b64() {
        let p = parse_elements("s", DataType::Bytes, r#"["ab", {"b64": "AAE="}]"#).unwrap();
        assert_eq!(
            p.data,
            TensorData::Bytes(vec![Bytes::from_static(b"ab"), Bytes::from_static(&[0, 1])])
        );
    }

    #[test]
    fn malformed_json_is_reported() {
        let err = parse_elements("x", DataType::Fp32, "[1, 2").unwrap_err();
        assert!(err.to_string().contains("not valid JSON"), "{err}");
    }
}
