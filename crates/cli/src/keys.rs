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
