//! `berth guest boot`: the CVM boot agent.

use crate::failure::Failure;
use clap::{Args, Subcommand};
use guest::{BootOptions, KeyFile, SerialLog};
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
    /// Read the one-time KMS boot ticket from the first line of standard
    /// input (how the node hands it over: never on the command line).
    #[arg(long)]
    kms_ticket_stdin: bool,
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
    // Without a key file, the boot agent asks the KMS that sys-config.json names.
    let key_provider = args
        .env_key_file
        .map(|path| Box::new(KeyFile(path)) as Box<dyn guest::EnvKeyProvider>);
    let kms_ticket = if args.kms_ticket_stdin {
        let mut line = zeroize::Zeroizing::new(String::new());
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| Failure::io("cannot read the boot ticket from standard input", &e))?;
        Some(zeroize::Zeroizing::new(line.trim().to_owned()))
    } else {
        None
    };
    let opts = BootOptions {
        kms_ticket,
        shared: args.shared,
        state: args.state,
        key_provider,
        project: args.project,
        retry_budget: Duration::from_secs(args.max_retry_time),
    };
    let rt = crate::runtime();
    let result = rt.block_on(guest::boot(opts, &serial));
    for line in guest::final_lines(&result, started.elapsed(), &hint_words) {
        serial.line(&line);
    }
    match result {
        Ok(_) => Ok(()),
        Err(e) => Err(Failure::silent(crate::failure::exit_code(e.category))),
    }
}

/// A boot hint in `berth guest boot`'s terms: where the fix is one of its
/// options, the option is named.
fn hint_words(hint: &guest::Hint) -> String {
    match hint {
        guest::Hint::EnvKeySource => {
            "pass --env-key-file, or let the node write kms_url into sys-config.json".into()
        }
        other => other.to_string(),
    }
}
