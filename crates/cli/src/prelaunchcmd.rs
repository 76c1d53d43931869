//! `berth guest prelaunch` (Berth's pull in a real dstack CVM, run by the
//! pre-launch script) and `berth prelaunch-script` (prints that script).

use crate::failure::Failure;
use clap::Args;
use guest::SerialLog;
use guest::prelaunch::{PrelaunchOptions, PrelaunchOutcome};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct PrelaunchArgs {
    /// The guest's root: `/` in a CVM (dstack's files are under ROOT/dstack).
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// The image store [default: ROOT/dstack/persistent/berth/images].
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Longest time the whole step may take.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 1200,
        env = "BERTH_PRELAUNCH_DEADLINE"
    )]
    deadline: u64,
    /// Longest time one registry request may spend retrying transient failures.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 120,
        env = "BERTH_PRELAUNCH_MAX_RETRY_TIME"
    )]
    max_retry_time: u64,
    /// Longest time one `dstack-util notify-host` may take.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 5,
        env = "BERTH_PRELAUNCH_NOTIFY_TIMEOUT"
    )]
    notify_timeout: u64,
}

#[derive(Args)]
pub struct PrelaunchScriptArgs {
    /// Where the CVM downloads the static `berth` binary (`make release`).
    #[arg(long, value_name = "URL")]
    url: String,
    /// The binary's sha256 [default: this binary's own, when it is the one
    /// published at URL].
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
}

/// `berth guest prelaunch`.
pub fn prelaunch(args: PrelaunchArgs) -> Result<(), Failure> {
    let serial = SerialLog::new(Box::new(std::io::stdout()));
    serial.line(&format!(
        "berth guest prelaunch {}: pulling the app's images before compose up",
        env!("CARGO_PKG_VERSION")
    ));
    let opts = PrelaunchOptions {
        root: args.root,
        store: args.store,
        retry_budget: Duration::from_secs(args.max_retry_time),
        deadline: Duration::from_secs(args.deadline),
        notify_timeout: Duration::from_secs(args.notify_timeout),
    };
    // The environment the script was sourced with: read here, passed on as
    // values (never as arguments to anything).
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let result = crate::runtime().block_on(guest::prelaunch::run(&opts, &env, &serial));
    match result {
        Ok(PrelaunchOutcome::Ready { .. }) => {
            serial.line("PRELAUNCH OK");
            Ok(())
        }
        Ok(PrelaunchOutcome::NotForThisRunner(runner)) => {
            serial.line(&format!(
                "runner {runner}: leaving the images to the default flow"
            ));
            Err(Failure::silent(guest::prelaunch::NOT_FOR_THIS_RUNNER))
        }
        Err(e) => {
            for line in guest::prelaunch::failure_lines(&e) {
                serial.line(&line);
            }
            Err(Failure::silent(crate::failure::exit_code(e.category)))
        }
    }
}

/// `berth prelaunch-script`.
pub fn script(args: PrelaunchScriptArgs) -> Result<(), Failure> {
    let sha = match args.sha256 {
        Some(s) => s,
        None => {
            let exe = std::fs::read("/proc/self/exe")
                .map_err(|e| Failure::io("cannot read this binary to pin its sha256", &e))?;
            eprintln!(
                "pinning this binary's own sha256: publish this very file at the URL (or pass --sha256)"
            );
            use sha2::Digest as _;
            hex::encode(sha2::Sha256::digest(&exe))
        }
    };
    let text = guest::prelaunch::script::render(&args.url, &sha).map_err(|e| {
        Failure::config(e)
            .hint("e.g. --url https://github.com/OWNER/REPO/releases/download/v1/berth --sha256 $(sha256sum berth)")
    })?;
    print!("{text}");
    Ok(())
}
