//! Gathering an [`Env`] from `-e FILE|KEY=VALUE` arguments.

use crate::failure::Failure;
use envseal::{Env, EnvVar, Limits, Origin, SecretValue, parse_dotenv};
use std::path::Path;

/// Reads every `-e` argument in order: an existing file is parsed as a `.env`
/// file, `KEY=VALUE` sets one variable; later arguments override earlier
/// ones. The merged env is validated against the guest's limits.
pub fn load(args: &[String]) -> Result<Env, Failure> {
    let mut env = Env::new();
    for arg in args {
        let path = Path::new(arg);
        if arg == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| Failure::io("cannot read the env from standard input", &e))?;
            let text = zeroize::Zeroizing::new(text);
            env.merge(parse(arg, "standard input", &text)?);
        } else if path.is_file() {
            let bytes = zeroize::Zeroizing::new(
                std::fs::read(path).map_err(|e| Failure::io(format!("cannot read {arg}"), &e))?,
            );
            let text = std::str::from_utf8(&bytes).map_err(|e| {
                Failure::config(format!(
                    "{arg} is not UTF-8 text (invalid byte at offset {})",
                    e.valid_up_to()
                ))
                .hint("save the .env file as UTF-8")
            })?;
            env.merge(parse(arg, arg, text)?);
        } else if let Some((key, value)) = arg.split_once('=') {
            env.set(EnvVar::new(key, SecretValue::from(value), Origin::Argument));
        } else if path.exists() {
            return Err(Failure::config(format!("{arg} is not a regular file")));
        } else {
            return Err(Failure::config(format!(
                "-e {arg}: no such file, and not a KEY=VALUE pair"
            ))
            .hint("pass a .env file path or KEY=VALUE"));
        }
    }
    env.validate(&Limits::GUEST).map_err(|e| {
        Failure::config(e).hint("fix the variable named above; values are never printed")
    })?;
    Ok(env)
}

fn parse(_arg: &str, name: &str, text: &str) -> Result<Env, Failure> {
    parse_dotenv(name, text)
        .map_err(|e| Failure::config(e).hint("see README.md for the .env syntax Berth reads"))
}
