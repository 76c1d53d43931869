//! `berth guest boot`: the CVM boot agent; `berth guest agent`: the CVM's
//! guest agent (dstack.sock / tappd.sock).

use crate::failure::Failure;
use clap::{Args, Subcommand};
use guest::{BootOptions, KeyFile, SerialLog};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Subcommand)]
pub enum GuestCommand {
    /// Boot the app: open the env, pull the images, start the compose app.
    Boot(BootArgs),
    /// Serve the guest agent API (dstack.sock, tappd.sock) to the CVM's containers.
    Agent(AgentArgs),
    /// In a dstack / Phala Cloud CVM, from the pre-launch script: pull the
    /// compose file's images into the Docker engine before compose up.
    Prelaunch(crate::prelaunchcmd::PrelaunchArgs),
}

#[derive(Args)]
pub struct AgentArgs {
    /// The host-shared folder (app-compose.json, sys-config.json).
    #[arg(long, value_name = "DIR")]
    shared: PathBuf,
    /// A private folder (0700) for the agent's sockets.
    #[arg(long, value_name = "DIR")]
    sockets_dir: PathBuf,
    /// A listening Unix socket inherited from the node, by descriptor
    /// number (repeatable). Without any, the agent binds dstack.sock and
    /// tappd.sock in --sockets-dir itself.
    #[arg(long = "listen-fd", value_name = "FD")]
    listen_fds: Vec<i32>,
    /// Read the one-time KMS ticket from the first line of standard input
    /// (how the node hands it over: never on the command line).
    #[arg(long)]
    kms_ticket_stdin: bool,
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
        GuestCommand::Agent(args) => agent(args),
        GuestCommand::Prelaunch(args) => crate::prelaunchcmd::prelaunch(args),
    }
}

fn read_ticket() -> Result<zeroize::Zeroizing<String>, Failure> {
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Failure::io("cannot read the ticket from standard input", &e))?;
    Ok(zeroize::Zeroizing::new(line.trim().to_owned()))
}

fn agent(args: AgentArgs) -> Result<(), Failure> {
    // One line once it serves, one if it fails, none when it is stopped:
    // the boot's final line stays the serial log's last after a boot.
    let serial = SerialLog::new(Box::new(std::io::stdout()));
    let kms_ticket = if args.kms_ticket_stdin {
        Some(read_ticket()?)
    } else {
        None
    };
    let mut listeners = Vec::new();
    for fd in args.listen_fds {
        // SAFETY: the node opened these descriptors for this process and
        // nothing else in it uses them.
        let l = unsafe { guest::agent_process::inherited_listener(fd) }
            .map_err(|e| Failure::io("cannot use a socket the node handed over", &e))?;
        listeners.push(l);
    }
    let opts = guest::agent_process::AgentProcessOptions {
        shared: args.shared,
        kms_ticket,
        listeners,
        sockets_dir: args.sockets_dir,
    };
    // One thread: an idle agent per CVM should cost little memory.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::io("cannot start the async runtime", &e))?;
    let result = rt.block_on(async {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        guest::agent_process::run(opts, &serial, shutdown).await
    });
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            serial.line(&format!(
                "guest agent failed: {}: {}",
                e.category.as_str(),
                e
            ));
            Err(Failure::silent(crate::failure::exit_code(e.category)))
        }
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
        Some(read_ticket()?)
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
