//! Fuzz target of the API key parser: the headers a request carries its key in, read as the
//! access guard reads them (`auth::token::from_headers`), and the key's id and hash check that
//! find it in the key ring (`token::id_of`, `token::matches`). See docs/security.md, "Fuzzing".
//!
//! `cargo test -p vatic-server --test fuzz -- --nocapture` runs for 2.5 s;
//! `VATIC_FUZZ_SECONDS=600` for ten minutes.

// One driver for every fuzz binary of the workspace; it lives with the schema's targets.
#[path = "../../../schema/tests/fuzz/harness.rs"]
mod harness;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use harness::Input;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use vatic_server::auth::token::{self, Malformed};

const X_API_KEY: &str = "x-api-key";

/// Tokens worth inserting into header lines.
const TOKENS: &[&str] = &[
    "Bearer ",
    "bearer",
    "\t",
    " ",
    "_",
    "vk_",
    "vk__",
    "\nx-api-key: ",
    "\nauthorization: ",
    ":",
    "\u{e9}",
    "\u{0}",
    "\r",
    "\u{7f}",
];

/// A key as clients send them, and the near misses.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => ("[a-z0-9]{12}", "[A-Za-z0-9]{32}").prop_map(|(id, secret)| format!("vk_{id}_{secret}")),
        2 => ("[a-z0-9_]{0,4}", "[A-Za-z0-9_]{0,4}").prop_map(|(id, secret)| format!("vk_{id}_{secret}")),
        2 => select(&[
            "vk_", "vk__", "vk_a_", "vk__b", "vk_a_b_c", "VK_a_b", "vk-a-b", "vk_a b_c",
            "a-long-secret-from-a-compose-secret-file", "Bearer", "vk_\u{e9}_\u{fc}", "\u{2003}vk_a_b",
        ][..]).prop_map(String::from),
        1 => "[ -~]{0,40}",
        1 => "\\PC{0,12}",
        1 => (1usize..8192).prop_map(|n| format!("vk_{}_{}", "a".repeat(n), "b".repeat(n))),
    ]
}

/// An `Authorization` value: a scheme, a gap, a key, maybe trailing blanks.
fn authorization() -> impl Strategy<Value = String> {
    (
        select(
            &[
                "Bearer", "bearer", "BEARER", "bEaReR", "Basic", "Token", "Bearer:", "",
            ][..],
        ),
        select(&[" ", "  ", "\t", "", " \t "][..]),
        key(),
        select(&["", " ", "\t", "  "][..]),
    )
        .prop_map(|(scheme, gap, key, after)| format!("{scheme}{gap}{key}{after}"))
}

/// Header lines, `name: value`, carrying zero, one or two keys.
fn lines() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        4 => authorization().prop_map(|v| format!("authorization: {v}")),
        4 => key().prop_map(|k| format!("x-api-key: {k}")),
        1 => key().prop_map(|k| format!("X-Api-Key:{k}")),
        1 => select(&["cookie: a=b", "x-api-keys: vk_a_b", "authorization:", "x-api-key:   "][..])
            .prop_map(String::from),
    ];
    prop::collection::vec(line, 0..4).prop_map(|lines| lines.join("\n"))
}

fn inputs() -> impl Strategy<Value = Input> {
    let seeds = harness::corpus("api_key");
    prop_oneof![
        4 => lines().prop_map(String::into_bytes),
        3 => harness::mutated_seed(seeds.clone(), TOKENS),
        2 => (lines(), harness::mutations()).prop_map(move |(text, m)| {
            harness::mutate(text.into_bytes(), &m, &seeds, TOKENS)
        }),
    ]
    .prop_map(Input)
}

/// The headers a request with these lines arrives with. A line that is not a valid header never
/// reaches the guard: the HTTP layer refuses the request.
fn headers(text: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in text.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let value = &line[colon + 1..];
        let value = &value[value
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count()..];
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// A header value as text, as the parser must read it: visible ASCII, trimmed, not empty.
fn as_text(value: Option<&HeaderValue>) -> Option<Option<&str>> {
    value.map(|v| v.to_str().ok().map(str::trim).filter(|t| !t.is_empty()))
}

fn check_key(key: &str) -> Result<(), TestCaseError> {
    let id = token::id_of(key);
    prop_assert_eq!(&id, &token::id_of(key), "id_of is not deterministic");
    prop_assert!(!id.is_empty() && !id.contains('_'), "id '{id}'");
    let vk_form = key
        .strip_prefix("vk_")
        .and_then(|rest| rest.split_once('_'))
        .filter(|(id, secret)| !id.is_empty() && !secret.is_empty());
    match vk_form {
        Some((given, _)) => prop_assert_eq!(&id, given),
        None => prop_assert!(
            id.len() == 12 && id.starts_with('x') && id[1..].bytes().all(|b| b.is_ascii_hexdigit()),
            "the id '{id}' of a key in another form"
        ),
    }
    let stored = token::hash(key);
    prop_assert!(token::matches(key, &stored));
    let longer = token::hash(&format!("{key}x"));
    prop_assert!(!token::matches(key, &longer));
    prop_assert!(!token::matches(key, &stored[..31]));
    prop_assert!(!token::matches(key, &[]));
    Ok(())
}

fn parse(Input(text): Input) -> Result<(), TestCaseError> {
    check_key(&String::from_utf8_lossy(&text))?;
    let map = headers(&text);
    let bearer = as_text(map.get(AUTHORIZATION));
    let header = as_text(map.get(X_API_KEY));
    match token::from_headers(&map) {
        Ok(None) => prop_assert!(
            bearer.is_none() && header.is_none(),
            "a key header was missed"
        ),
        Ok(Some(key)) => {
            prop_assert!(!key.is_empty() && key.trim() == key, "key '{key}'");
            if let Some(h) = header {
                prop_assert_eq!(h, Some(key), "X-API-Key is not the key");
            }
            if let Some(b) = bearer {
                let b = b.expect("a key was found, so the header is text");
                let (scheme, rest) = b.split_once(' ').expect("a key was found after a space");
                prop_assert!(scheme.eq_ignore_ascii_case("bearer"), "scheme '{scheme}'");
                prop_assert_eq!(rest.trim(), key, "Authorization does not carry the key");
            }
            check_key(key)?;
        }
        Err(e) => {
            prop_assert!(!e.to_string().is_empty());
            match e {
                Malformed::NotText => prop_assert!(
                    bearer == Some(None) || header == Some(None),
                    "NotText, but both headers are text"
                ),
                Malformed::NotBearer => prop_assert!(bearer.is_some_and(|b| b.is_some())),
                Malformed::TwoKeys => prop_assert!(bearer.is_some() && header.is_some()),
            }
        }
    }
    Ok(())
}

#[test]
fn api_key() {
    harness::fuzz("api_key", inputs(), parse);
}
