//! Fuzz targets of the parsers that read request bodies from the network: the V2 JSON body, the
//! V2 binary tensor extension and TF-Serving's predict body (docs/security.md, "Fuzzing").
//!
//! Every case must end in a request or an error that says what is wrong: no panic, and no more
//! memory held at once than a small multiple of the input, so a length or shape that lies is
//! refused before anything is allocated for it. What decodes must also be self-consistent.
//!
//! `cargo test -p vatic-schema --test fuzz -- --nocapture` runs each target for 2.5 s;
//! `VATIC_FUZZ_SECONDS=600` runs each for ten minutes.

mod elements;
mod harness;
mod tfserving;
mod v2_binary;
mod v2_json;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::any::Any;
use std::panic::AssertUnwindSafe;
use vatic_schema::{v2, InferRequest, SchemaError, TensorData};

/// The most a parse may hold at once: this much per byte of input...
const HELD_PER_INPUT_BYTE: u64 = 256;
/// ...and this much besides.
const HELD_BASE: u64 = 1 << 20;

fn panic_text(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

/// Runs `parse` on `len` bytes of input. Fails when it panics, or when the memory it held at
/// its peak is out of proportion to the input.
pub fn parse_bounded<T>(len: usize, parse: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    let mut outcome = None;
    // The panic is caught inside the measurement, which does not survive unwinding.
    let held = allocation_counter::measure(|| {
        outcome = Some(std::panic::catch_unwind(AssertUnwindSafe(parse)));
    })
    .bytes_max;
    let value = outcome
        .expect("the measured closure ran")
        .map_err(|panic| TestCaseError::fail(format!("panicked: {}", panic_text(&*panic))))?;
    let limit = HELD_BASE + HELD_PER_INPUT_BYTE * len as u64;
    prop_assert!(
        held <= limit,
        "held {held} bytes at once for {len} bytes of input (limit {limit})"
    );
    Ok(value)
}

/// Whether the request survives JSON: finite numbers and UTF-8 strings only.
fn json_safe(req: &InferRequest) -> bool {
    req.inputs.iter().all(|t| match &t.data {
        TensorData::Bytes(items) => items.iter().all(|i| std::str::from_utf8(i).is_ok()),
        TensorData::Fixed(_) => t.data.to_f64(t.datatype).iter().all(|v| v.is_finite()),
    })
}

/// Checks an error: it says something, in proportion to the input it complains about.
pub fn check_error(len: usize, e: &SchemaError) -> Result<(), TestCaseError> {
    let message = e.to_string();
    prop_assert!(!message.is_empty(), "an empty error message");
    prop_assert!(
        message.len() <= 8 * len + 4096,
        "a {} byte error message for {len} bytes of input",
        message.len()
    );
    Ok(())
}

/// Checks a decoded V2 request: each tensor holds what its shape and datatype say, and the
/// request reads back the same from the binary extension and, where JSON can carry it, from JSON.
pub fn check_decoded(
    len: usize,
    decoded: Result<InferRequest, SchemaError>,
) -> Result<(), TestCaseError> {
    let req = match decoded {
        Ok(req) => req,
        Err(e) => return check_error(len, &e),
    };
    for t in &req.inputs {
        t.check()
            .map_err(|e| TestCaseError::fail(format!("decoded an inconsistent tensor: {e}")))?;
    }
    let binary = v2::encode_request(&req, true);
    let back = v2::decode_request(&Bytes::from(binary.body), binary.header_length)
        .map_err(|e| TestCaseError::fail(format!("the binary re-encoding fails to decode: {e}")))?;
    prop_assert_eq!(&back, &req, "the binary re-encoding decodes differently");
    if json_safe(&req) {
        let json = v2::request_json(&req);
        let back = v2::decode_request(&Bytes::from(json), None).map_err(|e| {
            TestCaseError::fail(format!("the JSON re-encoding fails to decode: {e}"))
        })?;
        prop_assert_eq!(&back, &req, "the JSON re-encoding decodes differently");
    }
    Ok(())
}
