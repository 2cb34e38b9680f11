//! How long a push of a large model holds up other writes to the same database.
//!
//! `cargo run --release -p vatic-store --example push_lock -- <database-url> [MiB]`
//!
//! Pushes a file of MiB pseudo-random bytes (default 256) as a new model version while another
//! task writes one small audit record every 5 ms, then prints how long the push took and the
//! slowest of those writes. The database is migrated first; use a scratch database.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vatic_schema::admin::Signature;
use vatic_store::Actor;
use vatic_store::{ConnectOptions, NewVersion, Store};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: push_lock <database-url> [MiB]"))?;
    let mib: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(256);
    let store = Store::open(&ConnectOptions::new(&url), true).await?;

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("model.onnx");
    // Different bytes on every run, so the file is never already stored.
    let seed = run_id() as u64;
    let bytes: Vec<u8> = (0..mib << 20)
        .map(|i| ((i ^ seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &bytes)?;
    let (sha256, size) = vatic_store::sha256_file(&path)?;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut worst, mut writes, mut failed) = (Duration::ZERO, 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                if store
                    .audit(&Actor::named("push_lock"), "probe", None, "{}")
                    .await
                    .is_err()
                {
                    failed += 1;
                }
                worst = worst.max(started.elapsed());
                writes += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (worst, writes, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let signature = Signature {
        inputs: Vec::new(),
        outputs: Vec::new(),
        batched: true,
    };
    let started = Instant::now();
    let model = format!("push-lock-{seed}");
    store
        .push_version(&NewVersion {
            model: &model,
            version: None,
            file: &path,
            sha256: &sha256,
            size,
            signature: &signature,
            config: "",
            actor: &Actor::named("push_lock"),
        })
        .await?;
    let push = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (worst, writes, failed) = writer.await?;
    println!(
        "push of {mib} MiB: {:.2} s; {writes} other writes meanwhile, slowest {:.0} ms, {failed} failed",
        push.as_secs_f64(),
        worst.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// A number that differs between runs.
fn run_id() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}
