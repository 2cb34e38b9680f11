//! API keys at the api's start: whether callers must present keys, the key ring that holds
//! them, and the first admin key.

use crate::settings::{ApiSettings, Mode};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use vatic_server::auth::{default_burst, token, KeyRing, RateLimits, Role};
use vatic_store::{ApiKey, Store};

/// The environment variable whose value becomes the first admin key.
pub const BOOTSTRAP_KEY_ENV: &str = "VATIC_BOOTSTRAP_ADMIN_KEY";
/// The environment variable naming a file whose content becomes the first admin key.
pub const BOOTSTRAP_KEY_FILE_ENV: &str = "VATIC_BOOTSTRAP_ADMIN_KEY_FILE";

/// `[auth]`: API keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Whether callers must present API keys. Unset: yes in cluster mode and when standalone
    /// listens on an address other than loopback; no for standalone on 127.0.0.1 or ::1.
    pub enabled: Option<bool>,
    /// Milliseconds between reads of the key table (on PostgreSQL changes also arrive at once).
    pub poll_ms: u64,
    /// Requests per second of a key with no limit of its own; unlimited when unset.
    pub rate: Option<f64>,
    /// Requests a key may make at once above its rate; a second's worth when unset.
    pub burst: Option<u32>,
    /// The api replicas clients spread their requests over: each replica enforces
    /// 1/`replicas` of every key's rate and burst (see docs/security.md, "Rate limits").
    pub replicas: u32,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            enabled: None,
            poll_ms: 500,
            rate: None,
            burst: None,
            replicas: 1,
        }
    }
}

impl AuthSettings {
    /// Checks what serde cannot, naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.poll_ms == 0 {
            anyhow::bail!("auth.poll_ms must be at least 1");
        }
        if self.replicas == 0 {
            anyhow::bail!("auth.replicas must be at least 1");
        }
        if let Some(rate) = self.rate {
            check_rate(rate).map_err(|e| anyhow::anyhow!("auth.rate: {e}"))?;
        }
        if self.burst == Some(0) {
            anyhow::bail!("auth.burst must be at least 1");
        }
        if self.burst.is_some() && self.rate.is_none() {
            anyhow::bail!("auth.burst needs auth.rate");
        }
        Ok(())
    }

    /// The limits keys are held to on this replica.
    pub fn limits(&self) -> RateLimits {
        RateLimits {
            default: self
                .rate
                .map(|rate| (rate, self.burst.unwrap_or_else(|| default_burst(rate)))),
            replicas: self.replicas,
        }
    }
}

/// The slowest rate a key may have: one request a day.
pub const MIN_RATE: f64 = 1.0 / 86_400.0;

/// Checks a rate in requests per second.
pub fn check_rate(rate: f64) -> Result<(), String> {
    if rate.is_finite() && (MIN_RATE..=1e9).contains(&rate) {
        Ok(())
    } else {
        Err(format!(
            "{rate} is not a rate: from one request a day ({MIN_RATE:.6}/s) to 1e9 requests a second"
        ))
    }
}

/// Whether callers of the api `settings` describe must present keys.
pub fn required(settings: &ApiSettings) -> bool {
    settings.auth.enabled.unwrap_or(match settings.mode {
        Mode::Cluster => true,
        Mode::Standalone => !listens_on_loopback(&settings.server.listen),
    })
}

fn listens_on_loopback(listen: &str) -> bool {
    let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The key ring of the api, or `None` when it runs open (logged). With keys and no usable
/// admin key yet, makes the first one: from [`BOOTSTRAP_KEY_ENV`] or [`BOOTSTRAP_KEY_FILE_ENV`]
/// as given, else a new one printed once to stderr.
pub async fn start(
    settings: &ApiSettings,
    store: Option<&Store>,
) -> anyhow::Result<Option<Arc<KeyRing>>> {
    if !required(settings) {
        tracing::warn!(
            listen = %settings.server.listen,
            "API keys are off: anyone who can reach this address may use every route, the admin API included"
        );
        return Ok(None);
    }
    let Some(store) = store else {
        anyhow::bail!(
            "auth: API keys are kept in the database: set database.url, or set auth.enabled = false (only wise on a loopback address)"
        );
    };
    let ring = KeyRing::load(store, settings.auth.limits()).await?;
    if !ring.has_admin() {
        let given = given_bootstrap_key()?;
        if let Some(given) = &given {
            if let Err(e) = ring.authenticate(given) {
                if e != vatic_server::auth::Rejected::Unknown {
                    anyhow::bail!(
                        "{BOOTSTRAP_KEY_ENV}: that key exists and cannot be used ({e}); give another, or make an admin key with one that works"
                    );
                }
            }
        }
        let printed = given.is_none();
        let made = ring
            .create(
                new_key(Role::Admin, "first admin key", None, "bootstrap"),
                given,
            )
            .await;
        let (key, secret) = match made {
            Ok(made) => made,
            // Another replica made it first.
            Err(_)
                if {
                    ring.refresh().await?;
                    ring.has_admin()
                } =>
            {
                ring.follow(Duration::from_millis(settings.auth.poll_ms));
                return Ok(Some(ring));
            }
            Err(e) => return Err(e),
        };
        if printed {
            eprintln!(
                "vatic: made the first admin key, shown this once; keep it safe:\n  {secret}\n\
                 (vaticctl: export VATIC_API_KEY=...; make more with `vaticctl keys create`)"
            );
        }
        tracing::warn!(key = %key.id, "made the first admin key");
    }
    ring.follow(Duration::from_millis(settings.auth.poll_ms));
    tracing::info!("API keys are required");
    Ok(Some(ring))
}

/// The first admin key given by the environment, checked.
fn given_bootstrap_key() -> anyhow::Result<Option<String>> {
    let from_env = std::env::var(BOOTSTRAP_KEY_ENV).ok();
    let from_file = match std::env::var_os(BOOTSTRAP_KEY_FILE_ENV) {
        Some(path) => {
            let path = PathBuf::from(path);
            Some(std::fs::read_to_string(&path).map_err(|e| {
                anyhow::anyhow!(
                    "{BOOTSTRAP_KEY_FILE_ENV} {}: cannot read it: {e}",
                    path.display()
                )
            })?)
        }
        None => None,
    };
    let Some(key) = from_env.or(from_file).map(|k| k.trim().to_string()) else {
        return Ok(None);
    };
    // A key in the vk_<id>_<secret> form is judged by its secret part.
    let secret_part = key
        .strip_prefix("vk_")
        .and_then(|rest| rest.split_once('_'))
        .map_or(key.as_str(), |(_, secret)| secret);
    if secret_part.len() < token::MIN_GIVEN_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        anyhow::bail!(
            "{BOOTSTRAP_KEY_ENV}: the key must be at least {} printable characters without spaces",
            token::MIN_GIVEN_LEN
        );
    }
    Ok(Some(key))
}

/// A key record to store, its id and hash set when it is made.
pub fn new_key(role: Role, name: &str, models: Option<Vec<String>>, created_by: &str) -> ApiKey {
    ApiKey {
        id: String::new(),
        name: name.to_string(),
        role: role.as_str().to_string(),
        models,
        secret_hash: Vec::new(),
        rate: None,
        burst: None,
        created_at: chrono::Utc::now(),
        created_by: created_by.to_string(),
        expires_at: None,
        revoked_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_required_in_a_cluster_and_off_loopback() {
        let mut s = ApiSettings::standalone();
        for (listen, on) in [
            ("127.0.0.1:8080", false),
            ("[::1]:8080", false),
            ("localhost:8080", false),
            ("0.0.0.0:8080", true),
            ("10.0.0.5:8080", true),
        ] {
            s.server.listen = listen.into();
            assert_eq!(required(&s), on, "{listen}");
        }
        s.auth.enabled = Some(true);
        s.server.listen = "127.0.0.1:8080".into();
        assert!(required(&s));
        let mut cluster = ApiSettings::default();
        cluster.server.listen = "127.0.0.1:8080".into();
        assert!(required(&cluster));
        cluster.auth.enabled = Some(false);
        assert!(!required(&cluster));
    }

    #[test]
    fn limits_are_checked_and_shared_between_replicas() {
        let bad = |f: &dyn Fn(&mut AuthSettings)| {
            let mut a = AuthSettings::default();
            f(&mut a);
            a.validate().unwrap_err().to_string()
        };
        assert!(bad(&|a| a.rate = Some(0.0)).starts_with("auth.rate: 0 is not a rate"));
        assert!(bad(&|a| a.rate = Some(1e-25)).starts_with("auth.rate"));
        assert!(bad(&|a| a.rate = Some(f64::NAN)).starts_with("auth.rate"));
        assert_eq!(bad(&|a| a.burst = Some(5)), "auth.burst needs auth.rate");
        assert_eq!(bad(&|a| a.replicas = 0), "auth.replicas must be at least 1");
        let a = AuthSettings {
            rate: Some(100.0),
            replicas: 4,
            ..AuthSettings::default()
        };
        a.validate().unwrap();
        assert_eq!(
            a.limits(),
            RateLimits {
                default: Some((100.0, 100)),
                replicas: 4
            }
        );
    }
}
