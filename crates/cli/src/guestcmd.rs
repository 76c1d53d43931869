//! `berth guest boot`: the CVM boot agent.

use crate::failure::Failure;
use clap::{Args, Subcommand};
use guest::{BootOptions, KeyFile, Kms, SerialLog};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Subcommand)]
pub enum GuestCommand {
    /// Boot the app: open the env, pull the images, start the compose app.
    Boot(BootArgs),
}

#[derive(Args)]
pub struct BootArgs {
    /// The host-shared folder (app-compose.json, encrypted-env, sys-config.json).
    #[arg(long, value_name = "DIR")]
    shared: PathBuf,
    /// The CVM's persistent state folder (kept across restarts).
    #[arg(long, value_name = "DIR")]
    state: PathBuf,
    /// Read the env private key from this file (standalone use; otherwise the KMS).
    #[arg(long, value_name = "FILE")]
    env_key_file: Option<PathBuf>,
    /// Compose project name (default: from sys-config.json, else the app's name).
    #[arg(long, value_name = "NAME")]
    project: Option<String>,
    /// Longest time one registry request may spend retrying transient failures.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    max_retry_time: u64,
}

pub fn run(cmd: GuestCommand) -> Result<(), Failure> {
    match cmd {
        GuestCommand::Boot(args) => boot(args),
    }
}

fn boot(args: BootArgs) -> Result<(), Failure> {
    let started = Instant::now();
    let serial = SerialLog::new(Box::new(std::io::stdout()));
    serial.line(&format!(
        "berth guest boot {} (simulated TEE: measurements are computed, not attested)",
        env!("CARGO_PKG_VERSION")
    ));
    let key_provider: Box<dyn guest::EnvKeyProvider> = match args.env_key_file {
        Some(path) => Box::new(KeyFile(path)),
        None => {
            let kms_url = std::fs::read(args.shared.join("sys-config.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["kms_url"].as_str().map(str::to_owned));
            match kms_url {
                Some(url) => Box::new(Kms { url }),
                None => {
                    let line = "BOOT FAILED: config: no env key provider: sys-config.json names no kms_url and no --env-key-file was given";
                    serial.line(line);
                    return Err(Failure::silent(crate::failure::exit_code(
                        registry::Category::Config,
                    )));
                }
            }
        }
    };
    let opts = BootOptions {
        shared: args.shared,
        state: args.state,
        key_provider,
        project: args.project,
        retry_budget: Duration::from_secs(args.max_retry_time),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(guest::boot(opts, &serial));
    for line in guest::final_line(&result, started.elapsed()) {
        serial.line(&line);
    }
    match result {
        Ok(_) => Ok(()),
        Err(e) => Err(Failure::silent(crate::failure::exit_code(e.category))),
    }
}
