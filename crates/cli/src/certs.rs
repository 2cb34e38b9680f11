//! `vaticctl certs init`: an internal CA and the certificates of one deployment, made with rcgen.

use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use vatic_tls::generate::{self, Authority, Usage};

/// `vaticctl certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// What to make.
    #[command(subcommand)]
    pub command: CertsCommand,
}

/// The `certs` subcommands.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Write ca.crt, ca.key and NAME.crt, NAME.key for nginx, haproxy, api, worker and api-client
    Init(InitArgs),
}

/// `vaticctl certs init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Folder to write the files to (made when missing)
    pub dir: PathBuf,
    /// More names (DNS names or IP addresses) for nginx's certificate, comma separated; it
    /// always covers localhost, 127.0.0.1, ::1 and nginx
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub nginx_names: Vec<String>,
    /// More names for HAProxy's certificate (what nginx connects to); it always covers
    /// localhost, 127.0.0.1, ::1 and haproxy
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub haproxy_names: Vec<String>,
    /// More names for the api's certificate; it always covers localhost, 127.0.0.1, ::1 and api
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub api_names: Vec<String>,
    /// More names for the workers' certificate; it always covers localhost, 127.0.0.1, ::1 and
    /// worker (the name the api checks workers' certificates for in the compose stack)
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub worker_names: Vec<String>,
    /// Days the server and client certificates are valid
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
    /// Days the CA is valid
    #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub ca_days: u32,
    /// Replace files that exist
    #[arg(long)]
    pub force: bool,
}

/// The certificates `certs init` makes besides the CA: file name, use, and default names.
const ISSUED: [(&str, Usage, &str); 5] = [
    ("nginx", Usage::Server, "nginx"),
    ("haproxy", Usage::Server, "haproxy"),
    ("api", Usage::Server, "api"),
    ("worker", Usage::Server, "worker"),
    ("api-client", Usage::Client, "api"),
];

/// Runs `vaticctl certs`.
pub fn run(global: &crate::GlobalArgs, args: &CertsArgs) -> anyhow::Result<()> {
    match &args.command {
        CertsCommand::Init(init) => run_init(init, global.output),
    }
}

/// One file `certs init` wrote, as `--output json` lists it.
#[derive(serde::Serialize)]
struct Written {
    /// The certificate's path.
    file: String,
    /// `ca`, `server` or `client`.
    kind: &'static str,
    /// The names it is valid for (none for the CA).
    names: Vec<String>,
}

fn run_init(args: &InitArgs, format: crate::output::OutputFormat) -> anyhow::Result<()> {
    let mut written = Vec::new();
    let names = |extra: &[String], own: &str| {
        let mut names = generate::local_names();
        names.push(own.to_string());
        names.extend(
            extra
                .iter()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty()),
        );
        names.dedup();
        names
    };
    let files = ["ca.crt", "ca.key"]
        .into_iter()
        .map(String::from)
        .chain(
            ISSUED
                .iter()
                .flat_map(|(name, ..)| [format!("{name}.crt"), format!("{name}.key")]),
        )
        .map(|f| args.dir.join(f))
        .collect::<Vec<_>>();
    if !args.force {
        if let Some(existing) = files.iter().find(|f| f.exists()) {
            anyhow::bail!(
                "{} already exists (pass --force to replace every certificate in {})",
                existing.display(),
                args.dir.display()
            );
        }
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot make the folder {}", args.dir.display()))?;
    // A name of its own, so that two deployments' CAs are told apart (by people and by TLS
    // libraries, which look a CA up by its name).
    let ca = Authority::new(
        &format!("vatic internal CA {:08x}", rand::random::<u32>()),
        args.ca_days,
    )?;
    write(&args.dir, "ca", ca.pair(), args.force)?;
    for (file, usage, own) in ISSUED {
        let names = match file {
            "nginx" => names(&args.nginx_names, own),
            "haproxy" => names(&args.haproxy_names, own),
            "worker" => names(&args.worker_names, own),
            _ => names(&args.api_names, own),
        };
        let pair = ca.issue(usage, &format!("vatic {file}"), &names, args.days)?;
        write(&args.dir, file, &pair, args.force)?;
        let kind = match usage {
            Usage::Server => "server",
            Usage::Client => "client",
        };
        written.push(Written {
            file: args.dir.join(format!("{file}.crt")).display().to_string(),
            kind,
            names,
        });
    }
    written.push(Written {
        file: args.dir.join("ca.crt").display().to_string(),
        kind: "ca",
        names: Vec::new(),
    });
    if format == crate::output::OutputFormat::Json {
        return crate::output::print_json(&written, &mut std::io::stdout().lock());
    }
    for w in &written {
        match w.kind {
            "ca" => println!(
                "{}: the CA; clients trust it with --cacert. Keep {} offline.",
                w.file,
                args.dir.join("ca.key").display()
            ),
            kind => println!("{}: {kind} certificate for {}", w.file, w.names.join(", ")),
        }
    }
    Ok(())
}

fn write(dir: &Path, name: &str, pair: &generate::Pair, force: bool) -> anyhow::Result<()> {
    generate::write_pair(
        pair,
        &dir.join(format!("{name}.crt")),
        &dir.join(format!("{name}.key")),
        force,
    )
}
