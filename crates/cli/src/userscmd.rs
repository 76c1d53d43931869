//! `berth users create|rotate|revoke NAME`: the API's users and their keys.
//!
//! A new key is printed alone on standard output (for `$(…)` in scripts);
//! what happened goes to standard error.

use crate::cloudapi::{ApiArgs, api_failure, client};
use crate::failure::Failure;
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum UsersCommand {
    /// Create a user (admin only); prints its API key, shown this once.
    Create(UserArgs),
    /// Give a user a new API key (the old one stops working); prints it.
    /// The admin may rotate any user's key, a user their own.
    Rotate(UserArgs),
    /// Revoke a user's API key (admin only); the user's CVMs keep running,
    /// and `berth users rotate` gives the user a key again.
    Revoke(UserArgs),
}

#[derive(Args)]
pub struct UserArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The user's name.
    name: String,
}

pub fn run(cmd: UsersCommand) -> Result<(), Failure> {
    let rt = crate::runtime();
    rt.block_on(async {
        match cmd {
            UsersCommand::Create(a) => {
                let key = client(&a.api)?
                    .create_user(&a.name)
                    .await
                    .map_err(api_failure)?;
                eprintln!("created user {}; its API key (shown this once):", a.name);
                println!("{key}");
            }
            UsersCommand::Rotate(a) => {
                let key = client(&a.api)?
                    .rotate_key(&a.name)
                    .await
                    .map_err(api_failure)?;
                eprintln!(
                    "new API key of {} (the old one no longer works; shown this once):",
                    a.name
                );
                println!("{key}");
            }
            UsersCommand::Revoke(a) => {
                client(&a.api)?
                    .revoke_user(&a.name)
                    .await
                    .map_err(api_failure)?;
                eprintln!(
                    "revoked the API key of {}; `berth users rotate {}` gives them a new one",
                    a.name, a.name
                );
            }
        }
        Ok(())
    })
}
