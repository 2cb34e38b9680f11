//! `vaticctl keys`: make, list and revoke API keys (an admin key's work).

use crate::client::Client;
use crate::output::{self, OutputFormat};
use crate::GlobalArgs;
use clap::{Args, Subcommand};
use std::io::Write;
use std::time::Duration;
use vatic_schema::admin::{CreatedKey, KeyCreate, KeyInfo};

/// `vaticctl keys`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: KeysCommand,
}

/// The `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a key and print its secret, this once
    Create(CreateArgs),
    /// List the keys: id, name, role, models, life; never a secret
    List,
    /// Revoke a key: every api replica refuses it within a second
    Revoke {
        /// The key's id (the <id> of vk_<id>_<secret>)
        id: String,
    },
}

/// `vaticctl keys create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// admin (everything), deployer (push, retire, settings), predictor (inference and model
    /// metadata), viewer (read only)
    #[arg(long, value_parser = ["admin", "deployer", "predictor", "viewer"])]
    pub role: String,
    /// The models the key may use, comma separated; every model when not given
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub models: Option<Vec<String>>,
    /// How long the key works, e.g. 30d, 12h; for ever when not given
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub expires: Option<Duration>,
    /// What the key is for, shown in `keys list` and the audit log
    #[arg(long)]
    pub name: Option<String>,
    /// Its own rate limit: N/s, N/m or N/h; the server's default when not given
    #[arg(long, value_parser = parse_rate, value_name = "RATE")]
    pub rate: Option<f64>,
    /// Requests it may make at once above its rate; a second's worth when not given
    #[arg(long, requires = "rate", value_parser = clap::value_parser!(u32).range(1..))]
    pub burst: Option<u32>,
}

/// A rate as `200/s`, `600/m` or `1000/h`, in requests per second.
fn parse_rate(text: &str) -> Result<f64, String> {
    let (n, unit) = text
        .split_once('/')
        .ok_or_else(|| format!("'{text}' is not a rate: write N/s, N/m or N/h"))?;
    let n: f64 = n
        .trim()
        .parse()
        .map_err(|_| format!("'{text}': '{n}' is not a number"))?;
    let per = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("'{text}': '{other}' is not s, m or h")),
    };
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("'{text}': the rate must be more than 0"));
    }
    Ok(n / per)
}

/// Runs `vaticctl keys`.
pub fn run(global: &GlobalArgs, args: &KeysArgs) -> anyhow::Result<()> {
    let client = Client::new(global)?;
    let out = &mut std::io::stdout().lock();
    match &args.command {
        KeysCommand::Create(create) => {
            let body = KeyCreate {
                role: create.role.clone(),
                models: create.models.clone(),
                expires_in_secs: create.expires.map(|d| d.as_secs().max(1)),
                name: create.name.clone(),
                rate: create.rate,
                burst: create.burst,
            };
            print_created(&client.create_key(&body)?, global.output, out)
        }
        KeysCommand::List => print_keys(&client.keys()?, global.output, out),
        KeysCommand::Revoke { id } => {
            client.revoke_key(id)?;
            writeln!(out, "revoked {id}")?;
            Ok(())
        }
    }
}

fn print_created(
    created: &CreatedKey,
    format: OutputFormat,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return output::print_json(created, out);
    }
    writeln!(out, "{}", created.secret)?;
    eprintln!(
        "the key above ({} key {}) is shown this once: store it now",
        created.key.role, created.key.id
    );
    Ok(())
}

fn print_keys(keys: &[KeyInfo], format: OutputFormat, out: &mut impl Write) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return output::print_json(&keys, out);
    }
    let mut table = output::table([
        "id", "name", "role", "models", "created", "expires", "revoked",
    ]);
    for k in keys {
        table.add_row([
            k.id.clone(),
            k.name.clone(),
            k.role.clone(),
            k.models
                .as_ref()
                .map_or_else(|| "all".to_string(), |m| m.join(",")),
            k.created_at.clone(),
            k.expires_at.clone().unwrap_or_else(|| "never".into()),
            k.revoked_at.clone().unwrap_or_default(),
        ]);
    }
    writeln!(out, "{table}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn rates_are_read_per_second() {
        assert_eq!(parse_rate("200/s"), Ok(200.0));
        assert_eq!(parse_rate("120/m"), Ok(2.0));
        assert_eq!(parse_rate("36/h"), Ok(0.01));
        for bad in ["200", "x/s", "0/s", "5/d", "-1/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
