//! `berth`: the command-line front of Berth. Thin: it parses arguments, calls
//! the libraries, and turns their typed errors into one sentence, a hint and
//! an exit code. It is the only crate that knows about terminals and exit codes.

mod attestcmd;
mod cloudapi;
mod cloudcmd;
mod deploysteps;
mod envargs;
mod envcmd;
mod failure;
mod guestcmd;
mod prelaunchcmd;
mod pullcmd;
mod upcmd;
mod updatecmd;
mod userscmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Deploy Docker Compose apps into confidential VMs, with private images pulled
/// at boot using registry credentials only the CVM can read.
#[derive(Parser)]
#[command(name = "berth", version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create an X25519 env key pair: writes the private key, prints the public key.
    Keygen(envcmd::KeygenArgs),
    /// Seal environment variables to an app's env public key; prints hex.
    Seal(envcmd::SealArgs),
    /// Open a sealed env with a private key; prints `.env` lines (or JSON).
    Unseal(envcmd::UnsealArgs),
    /// Pull images from private registries into an OCI layout directory.
    Pull(pullcmd::PullArgs),
    /// Pre-flight: can these images be pulled with these credentials? (HEAD only.)
    Check(pullcmd::CheckArgs),
    /// Inside a CVM.
    #[command(subcommand)]
    Guest(guestcmd::GuestCommand),
    /// Print the pre-launch script that runs Berth's boot agent in a dstack / Phala Cloud CVM.
    PrelaunchScript(prelaunchcmd::PrelaunchScriptArgs),
    /// Start the local confidential cloud: API, KMS and node.
    Up(upcmd::UpArgs),
    /// The KMS (started by `berth up`).
    #[command(subcommand)]
    Kms(KmsCommand),
    /// The node that runs CVMs (started by `berth up`).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Deploy a compose app with a sealed env (verifies the KMS signature first).
    Deploy(deploysteps::DeployArgs),
    /// Manage your CVMs.
    #[command(subcommand)]
    Cvms(cloudcmd::CvmsCommand),
    /// Manage the API's users and their keys.
    #[command(subcommand)]
    Users(userscmd::UsersCommand),
    /// Check a CVM's attestation (its guest agent's simulated quote).
    #[command(subcommand)]
    Attest(attestcmd::AttestCommand),
}

#[derive(Subcommand)]
enum KmsCommand {
    /// Serve the KMS over HTTP on a Unix socket.
    Serve(upcmd::KmsServeArgs),
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Serve the node on a Unix socket (its settings come on standard input).
    Serve(upcmd::NodeServeArgs),
}

/// The async runtime every networked command runs on.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

/// Berth's folder in the user's data directory (`$XDG_DATA_HOME/berth`,
/// else `~/.local/share/berth`).
fn data_dir() -> std::path::PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/share"))
        })
        .unwrap_or_else(|| std::path::PathBuf::from("."))
        .join("berth")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen(args) => envcmd::keygen(args),
        Command::Seal(args) => envcmd::seal(args),
        Command::Unseal(args) => envcmd::unseal(args),
        Command::Pull(args) => pullcmd::pull(args),
        Command::Check(args) => pullcmd::check(args),
        Command::Guest(cmd) => guestcmd::run(cmd),
        Command::PrelaunchScript(args) => prelaunchcmd::script(args),
        Command::Up(args) => upcmd::up(args),
        Command::Kms(KmsCommand::Serve(args)) => upcmd::kms_serve(args),
        Command::Node(NodeCommand::Serve(args)) => upcmd::node_serve(args),
        Command::Deploy(args) => cloudcmd::deploy(args),
        Command::Cvms(cmd) => cloudcmd::cvms(cmd),
        Command::Users(cmd) => userscmd::run(cmd),
        Command::Attest(cmd) => attestcmd::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}
