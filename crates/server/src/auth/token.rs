//! API key strings: made here as `vk_<id>_<secret>`, found in a request's headers, hashed for
//! storage and compared in constant time.

use rand::distributions::{Alphanumeric, DistString};
use sha2::{Digest, Sha256};

/// Length of a key's public id.
const ID_LEN: usize = 12;
/// Length of a key's secret part (about 190 bits).
const SECRET_LEN: usize = 32;
/// The shortest key accepted as given (`VATIC_BOOTSTRAP_ADMIN_KEY`).
pub const MIN_GIVEN_LEN: usize = 24;

/// A new key: its public id and the whole key, shown once.
#[derive(Debug)]
pub struct NewToken {
    /// The public id.
    pub id: String,
    /// The whole key, `vk_<id>_<secret>`.
    pub secret: String,
}

/// Makes a new random key.
pub fn generate() -> NewToken {
    let mut rng = rand::thread_rng();
    let id = Alphanumeric
        .sample_string(&mut rng, ID_LEN)
        .to_ascii_lowercase();
    let secret = Alphanumeric.sample_string(&mut rng, SECRET_LEN);
    NewToken {
        secret: format!("vk_{id}_{secret}"),
        id,
    }
}

/// The public id of a key: the `<id>` of `vk_<id>_<secret>`, or for a key given in another
/// form, one derived from its hash (so it is found the same way).
pub fn id_of(key: &str) -> String {
    if let Some(rest) = key.strip_prefix("vk_") {
        if let Some((id, secret)) = rest.split_once('_') {
            if !id.is_empty() && !secret.is_empty() {
                return id.to_string();
            }
        }
    }
    // A hash of its own, not the stored one: the id is public.
    let digest: [u8; 32] = Sha256::digest(format!("vatic key id\0{key}").as_bytes()).into();
    format!("x{}", &hex(&digest)[..ID_LEN - 1])
}

/// SHA-256 of a key, as stored.
pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Whether `key` hashes to `stored`, in time that does not depend on where they differ.
pub fn matches(key: &str, stored: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(hash(key).as_slice().ct_eq(stored))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Why a request's key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// `Authorization` is not `Bearer <key>`.
    #[error("the Authorization header must be 'Bearer <key>'")]
    NotBearer,
    /// The header holds bytes that are not text, or is empty.
    #[error("the API key header is empty or not text")]
    NotText,
    /// Both headers carry a key, and they differ.
    #[error("Authorization and X-API-Key carry different keys")]
    TwoKeys,
}

/// The key a request carries, from `Authorization: Bearer <key>` or `X-API-Key: <key>`; `None`
/// when it carries none.
pub fn from_headers(
    headers: &actix_web::http::header::HeaderMap,
) -> Result<Option<&str>, Malformed> {
    fn text(v: &actix_web::http::header::HeaderValue) -> Result<&str, Malformed> {
        match v.to_str().map(str::trim) {
            Ok(t) if !t.is_empty() => Ok(t),
            _ => Err(Malformed::NotText),
        }
    }
    let bearer = match headers.get(actix_web::http::header::AUTHORIZATION) {
        Some(v) => {
            let v = text(v)?;
            let (scheme, key) = v.split_once(' ').ok_or(Malformed::NotBearer)?;
            if !scheme.eq_ignore_ascii_case("bearer") || key.trim().is_empty() {
                return Err(Malformed::NotBearer);
            }
            Some(key.trim())
        }
        None => None,
    };
    let header = headers.get("x-api-key").map(text).transpose()?;
    match (bearer, header) {
        (Some(a), Some(b)) if a != b => Err(Malformed::TwoKeys),
        (a, b) => Ok(a.or(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn keys_are_made_found_and_compared() {
        let key = generate();
        assert!(key.secret.starts_with(&format!("vk_{}_", key.id)));
        assert_eq!(key.secret.len(), 3 + ID_LEN + 1 + SECRET_LEN);
        assert_eq!(id_of(&key.secret), key.id);
        assert_ne!(generate().secret, key.secret);
        let stored = hash(&key.secret);
        assert!(matches(&key.secret, &stored));
        assert!(!matches(&format!("{}x", key.secret), &stored));
        // A key given in another form gets an id of its own, always the same.
        let given = "a-long-secret-from-a-compose-secret-file";
        assert_eq!(id_of(given), id_of(given));
        assert_eq!(id_of(given).len(), ID_LEN);
        assert_eq!(id_of("vk__x"), id_of("vk__x"));
    }

    #[test]
    fn headers_carry_the_key_and_malformed_ones_are_named() {
        let found =
            |pairs: &[(&str, &str)]| from_headers(&headers(pairs)).map(|k| k.map(String::from));
        assert_eq!(found(&[]), Ok(None));
        assert_eq!(
            found(&[("authorization", "Bearer vk_a_b")]),
            Ok(Some("vk_a_b".into()))
        );
        assert_eq!(
            found(&[("authorization", "bearer  vk_a_b ")]),
            Ok(Some("vk_a_b".into()))
        );
        assert_eq!(found(&[("x-api-key", "vk_a_b")]), Ok(Some("vk_a_b".into())));
        assert_eq!(
            found(&[("authorization", "Bearer vk_a_b"), ("x-api-key", "vk_a_b")]),
            Ok(Some("vk_a_b".into()))
        );
        assert_eq!(
            found(&[("authorization", "Basic dXNlcjpwdw==")]),
            Err(Malformed::NotBearer)
        );
        assert_eq!(
            found(&[("authorization", "Bearer")]),
            Err(Malformed::NotBearer)
        );
        assert_eq!(
            found(&[("authorization", "Bearer ")]),
            Err(Malformed::NotBearer)
        );
        assert_eq!(found(&[("x-api-key", "")]), Err(Malformed::NotText));
        assert_eq!(
            found(&[("authorization", "Bearer vk_a_b"), ("x-api-key", "vk_a_c")]),
            Err(Malformed::TwoKeys)
        );
    }
}
