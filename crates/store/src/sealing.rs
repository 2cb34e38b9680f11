//! Encryption at rest of prediction-log payloads: AES-256-GCM with a random 96-bit nonce per
//! record and the record's id as associated data, so a sealed payload opens only on the row it
//! was written for. The data keys come from a file or the environment, never from the database;
//! each record names the key that sealed it, so old records stay readable after a rotation as
//! long as their key is still configured.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Bytes of a nonce, stored in front of the ciphertext.
const NONCE_LEN: usize = 12;
/// Bytes of an AES-256 key.
pub const DATA_KEY_LEN: usize = 32;
/// Longest key id.
const MAX_ID_LEN: usize = 64;

/// A record's inputs and outputs as stored when a data key is configured: the id of the key, and
/// the nonce followed by the AES-GCM ciphertext and tag of both payloads.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// Id of the data key that sealed it.
    pub key: String,
    /// Nonce, ciphertext and tag.
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key", &self.key)
            .field("bytes", &self.data.len())
            .finish()
    }
}

mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// Why data keys could not be read or a payload could not be opened. Messages name key ids and
/// positions, never key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The key list is malformed.
    #[error("{origin}: {why}")]
    Keys {
        /// Where the list came from (a file path or an environment variable).
        origin: String,
        /// What is wrong, by entry.
        why: String,
    },
    /// The record was sealed with a key that is not configured.
    #[error("sealed with data key {0}, which is not configured")]
    UnknownKey(String),
    /// The ciphertext does not open with its key: altered, moved to another row, or the key
    /// with that id is not the one that sealed it.
    #[error("the payload sealed with data key {0} does not authenticate (altered, or the key with that id has changed)")]
    Corrupt(String),
}

/// The configured data keys: the newest seals new records, all of them open old ones.
#[derive(Clone)]
pub struct DataKeys {
    /// In the order given; the last one seals.
    keys: Vec<(String, Aes256Gcm)>,
}

impl fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKeys")
            .field("ids", &self.ids())
            .finish()
    }
}

impl DataKeys {
    /// Reads a key list: entries `ID=BASE64`, one per line or separated by commas, where BASE64
    /// is the standard encoding of 32 random bytes and ID is 1 to 64 letters, digits, `.`, `_`
    /// or `-`. Blank lines and lines starting with `#` are skipped. The last entry seals new
    /// records. `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<DataKeys, SealError> {
        let bad = |why: String| SealError::Keys {
            origin: origin.to_string(),
            why,
        };
        let mut keys: Vec<(String, Aes256Gcm)> = Vec::new();
        let entries = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty());
        // Until an entry has been read whole, errors name it by its position only: an entry
        // that is a bare key (no `ID=`) splits at the key's own `=` padding.
        for (n, entry) in entries.enumerate() {
            let at = n + 1;
            let Some((id, value)) = entry.split_once('=') else {
                return Err(bad(format!(
                    "entry {at} is not ID=BASE64 (no '=' after the id)"
                )));
            };
            let (id, value) = (id.trim(), value.trim());
            if value.is_empty() {
                return Err(bad(format!(
                    "entry {at} is not ID=BASE64 (nothing after the first '=')"
                )));
            }
            check_key_id(id).map_err(|why| bad(format!("entry {at}: {why}")))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value)
                .map_err(|_| bad(format!("entry {at}: the key is not standard base64")))?;
            if bytes.len() != DATA_KEY_LEN {
                return Err(bad(format!(
                    "entry {at}: the key is {} bytes; a data key is {DATA_KEY_LEN} random bytes, base64-encoded",
                    bytes.len()
                )));
            }
            if keys.iter().any(|(k, _)| k == id) {
                return Err(bad(format!("entry {at}: key id {id} is given twice")));
            }
            let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes));
            keys.push((id.to_string(), cipher));
        }
        if keys.is_empty() {
            return Err(bad("no data key in it".to_string()));
        }
        Ok(DataKeys { keys })
    }

    /// The key ids, oldest first; the last one seals.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(id, _)| id.as_str()).collect()
    }

    /// The id of the key new records are sealed with.
    pub fn current(&self) -> &str {
        &self.keys.last().expect("at least one key").0
    }

    /// Seals a record's payloads with the newest key; `record` is the record's id, bound to
    /// the ciphertext.
    pub fn seal(
        &self,
        record: &uuid::Uuid,
        request: Option<&str>,
        response: Option<&str>,
    ) -> Sealed {
        let (id, cipher) = self.keys.last().expect("at least one key");
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let plain = frame(request, response);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: record.as_bytes(),
                },
            )
            .expect("AES-GCM seals any message under 64 GiB");
        let mut data = Vec::with_capacity(NONCE_LEN + sealed.len());
        data.extend_from_slice(&nonce);
        data.extend_from_slice(&sealed);
        Sealed {
            key: id.clone(),
            data,
        }
    }

    /// Opens what [`DataKeys::seal`] made for the record `record`: its request and response.
    pub fn open(
        &self,
        record: &uuid::Uuid,
        sealed: &Sealed,
    ) -> Result<(Option<String>, Option<String>), SealError> {
        let Some((_, cipher)) = self.keys.iter().find(|(id, _)| *id == sealed.key) else {
            return Err(SealError::UnknownKey(sealed.key.clone()));
        };
        let corrupt = || SealError::Corrupt(sealed.key.clone());
        if sealed.data.len() < NONCE_LEN {
            return Err(corrupt());
        }
        let (nonce, body) = sealed.data.split_at(NONCE_LEN);
        let plain = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: record.as_bytes(),
                },
            )
            .map_err(|_| corrupt())?;
        unframe(&plain).ok_or_else(corrupt)
    }
}

/// Checks a data key's id: 1 to 64 letters, digits, `.`, `_` or `-`.
pub fn check_key_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the key id must be 1 to {MAX_ID_LEN} letters, digits, '.', '_' or '-'"
        ))
    }
}

/// Makes a new data key entry, `ID=BASE64`, from 32 bytes of the operating system's randomness.
pub fn new_data_key(id: &str) -> String {
    let key = Aes256Gcm::generate_key(&mut OsRng);
    format!(
        "{id}={}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// The plaintext of a sealed record: for the request, then the response, a presence byte
/// (0 or 1) and, when present, a 4-byte big-endian length and the UTF-8 text.
fn frame(request: Option<&str>, response: Option<&str>) -> Vec<u8> {
    let size = 10 + request.map_or(0, str::len) + response.map_or(0, str::len);
    let mut out = Vec::with_capacity(size);
    for part in [request, response] {
        match part {
            Some(text) => {
                // A payload is far under 4 GiB (the request body limit is much smaller).
                let len = u32::try_from(text.len()).expect("payload under 4 GiB");
                out.push(1);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(text.as_bytes());
            }
            None => out.push(0),
        }
    }
    out
}

fn unframe(mut bytes: &[u8]) -> Option<(Option<String>, Option<String>)> {
    let mut part = || -> Option<Option<String>> {
        let (&flag, rest) = bytes.split_first()?;
        bytes = rest;
        match flag {
            0 => Some(None),
            1 => {
                let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
                let text = bytes.get(4..4 + len)?;
                bytes = &bytes[4 + len..];
                Some(Some(String::from_utf8(text.to_vec()).ok()?))
            }
            _ => None,
        }
    };
    let request = part()?;
    let response = part()?;
    bytes.is_empty().then_some((request, response))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> DataKeys {
        DataKeys::parse(text, "test").unwrap()
    }

    fn entry(id: &str, byte: u8) -> String {
        format!(
            "{id}={}",
            base64::engine::general_purpose::STANDARD.encode([byte; DATA_KEY_LEN])
        )
    }

    #[test]
    fn seals_with_the_newest_key_and_opens_with_any_configured() {
        let old = keys(&entry("k1", 1));
        let both = keys(&format!(
            "# rotated\n{}\n\n{}\n",
            entry("k1", 1),
            entry("k2", 2)
        ));
        assert_eq!(both.ids(), ["k1", "k2"]);
        assert_eq!(both.current(), "k2");
        let id = uuid::Uuid::now_v7();
        let a = old.seal(&id, Some("{\"inputs\":[1]}"), None);
        assert_eq!(a.key, "k1");
        let b = both.seal(&id, Some("in"), Some("out"));
        assert_eq!(b.key, "k2");
        assert_eq!(
            both.open(&id, &a).unwrap(),
            (Some("{\"inputs\":[1]}".into()), None)
        );
        assert_eq!(
            both.open(&id, &b).unwrap(),
            (Some("in".into()), Some("out".into()))
        );
        assert_eq!(old.open(&id, &b), Err(SealError::UnknownKey("k2".into())));
        // Commas separate entries too (one environment variable).
        let env = keys(&format!("{}, {}", entry("k1", 1), entry("k2", 2)));
        assert_eq!(
            env.open(&id, &a).unwrap().0.as_deref(),
            Some("{\"inputs\":[1]}")
        );
    }

    #[test]
    fn the_plaintext_is_not_in_the_sealed_bytes_and_each_nonce_is_new() {
        let k = keys(&entry("k1", 1));
        let id = uuid::Uuid::now_v7();
        let text = "{\"inputs\":[{\"data\":[0.123456789]}]}";
        let a = k.seal(&id, Some(text), Some(text));
        let b = k.seal(&id, Some(text), Some(text));
        assert_ne!(a.data, b.data);
        assert_ne!(a.data[..NONCE_LEN], b.data[..NONCE_LEN]);
        let hay = String::from_utf8_lossy(&a.data);
        assert!(!hay.contains("0.123456789") && !hay.contains("inputs"));
        // Nonce, two framed payloads, tag.
        assert_eq!(a.data.len(), NONCE_LEN + 2 * (1 + 4 + text.len()) + 16);
    }

    #[test]
    fn a_sealed_payload_opens_only_on_its_own_row_and_unaltered() {
        let k = keys(&entry("k1", 1));
        let id = uuid::Uuid::now_v7();
        let sealed = k.seal(&id, Some("in"), None);
        let other = uuid::Uuid::now_v7();
        assert_eq!(
            k.open(&other, &sealed),
            Err(SealError::Corrupt("k1".into()))
        );
        for i in [0, NONCE_LEN, sealed.data.len() - 1] {
            let mut bad = sealed.clone();
            bad.data[i] ^= 1;
            assert_eq!(k.open(&id, &bad), Err(SealError::Corrupt("k1".into())));
        }
        let short = Sealed {
            key: "k1".into(),
            data: vec![0; 5],
        };
        assert_eq!(k.open(&id, &short), Err(SealError::Corrupt("k1".into())));
        // Same id, another key: does not authenticate.
        let swapped = keys(&entry("k1", 9));
        assert_eq!(
            swapped.open(&id, &sealed),
            Err(SealError::Corrupt("k1".into()))
        );
    }

    #[test]
    fn malformed_key_lists_are_refused_without_showing_key_material() {
        let secret = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        for (text, want) in [
            ("", "no data key"),
            ("# only a comment\n", "no data key"),
            ("k1", "entry 1 is not ID=BASE64"),
            (&format!("={secret}"), "entry 1: the key id"),
            (&format!("a b={secret}"), "entry 1: the key id"),
            ("k1=!!!notbase64", "entry 1: the key is not standard base64"),
            (&format!("k1={secret}"), "entry 1: the key is 16 bytes"),
            ("k1=", "entry 1 is not ID=BASE64 (nothing after"),
            (
                &format!("{},{}", entry("k1", 1), entry("k1", 2)),
                "entry 2: key id k1 is given twice",
            ),
        ] {
            let e = DataKeys::parse(text, "VATIC_DATA_KEYS")
                .map(|_| ())
                .unwrap_err();
            let msg = e.to_string();
            assert!(msg.starts_with("VATIC_DATA_KEYS: "), "{msg}");
            assert!(msg.contains(want), "{text:?}: {msg}");
            assert!(!msg.contains(&secret) && !msg.contains("!!!"), "{msg}");
        }
        // A bare key, without `ID=`: its own '=' padding must not make it an id that an error
        // then shows, in standard or URL-safe base64.
        for alphabet in [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::URL_SAFE,
        ] {
            for byte in 0..=255u8 {
                let bare = alphabet.encode([byte; DATA_KEY_LEN]);
                let msg = DataKeys::parse(&bare, "f")
                    .map(|_| ())
                    .unwrap_err()
                    .to_string();
                let body = bare.trim_end_matches('=');
                assert!(!msg.contains(body), "{msg}");
                assert!(msg.starts_with("f: entry 1"), "{msg}");
            }
        }
        let debug = format!("{:?}", keys(&entry("k1", 1)));
        assert_eq!(debug, "DataKeys { ids: [\"k1\"] }");
    }

    #[test]
    fn new_keys_parse_and_differ() {
        let a = new_data_key("2026-12");
        let b = new_data_key("2026-12");
        assert_ne!(a, b);
        assert_eq!(keys(&a).ids(), ["2026-12"]);
    }

    #[test]
    fn sealed_records_survive_a_json_round_trip() {
        let k = keys(&entry("k1", 1));
        let id = uuid::Uuid::now_v7();
        let sealed = k.seal(&id, None, Some("out"));
        let json = serde_json::to_string(&sealed).unwrap();
        let back: Sealed = serde_json::from_str(&json).unwrap();
        assert_eq!(k.open(&id, &back).unwrap(), (None, Some("out".into())));
    }
}
