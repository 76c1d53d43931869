//! `berth keygen`, `berth seal`, `berth unseal`.

use crate::envargs;
use crate::failure::Failure;
use clap::Args;
use envseal::{EnvPrivateKey, EnvPublicKey, SealedEnv, plaintext_json, render_dotenv};
use std::io::{Read, Write};
use std::path::PathBuf;
use zeroize::Zeroizing;

#[derive(Args)]
pub struct KeygenArgs {
    /// Where to write the private key (hex, mode 0600). Never overwritten.
    #[arg(long, value_name = "KEYFILE")]
    out: PathBuf,
}

#[derive(Args)]
pub struct SealArgs {
    /// The app's env public key (64 hex characters).
    #[arg(long, value_name = "HEX")]
    pubkey: String,
    /// A .env file, `-` for standard input, or KEY=VALUE (visible to other local
    /// users in the process list: prefer a file for secrets). Repeatable; later wins.
    #[arg(short = 'e', long = "env", value_name = "FILE|KEY=VALUE")]
    env: Vec<String>,
}

#[derive(Args)]
pub struct UnsealArgs {
    /// The private key file written by `berth keygen`.
    #[arg(long, value_name = "KEYFILE")]
    key_file: PathBuf,
    /// The sealed env (hex or raw bytes); `-` or nothing for standard input.
    #[arg(value_name = "FILE|-")]
    input: Option<String>,
    /// Print `{"env":[{"key":..,"value":..}]}` instead of .env lines.
    #[arg(long)]
    json: bool,
}

pub fn keygen(args: KeygenArgs) -> Result<(), Failure> {
    let key = EnvPrivateKey::generate();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let shown = args.out.display();
    let mut file = opts.open(&args.out).map_err(|e| {
        let f = Failure::io(format!("cannot create the key file {shown}"), &e);
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            f.hint("keygen never overwrites a key; choose another path or remove the old key first")
        } else {
            f
        }
    })?;
    let mut text = key.to_hex();
    text.push('\n');
    if let Err(e) = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
    {
        drop(file);
        let _ = std::fs::remove_file(&args.out);
        return Err(Failure::io(
            format!("cannot write the key file {shown}"),
            &e,
        ));
    }
    println!("{}", key.public_key().to_hex());
    Ok(())
}

pub fn seal(args: SealArgs) -> Result<(), Failure> {
    let pubkey = EnvPublicKey::from_hex(&args.pubkey).map_err(|e| {
        Failure::config(format!("--pubkey: {e}"))
            .hint("pass the app's env public key as printed by `berth keygen`")
    })?;
    if !pubkey.is_usable() {
        return Err(Failure::config(
            "--pubkey is a low-order X25519 point; anything sealed to it could be read by anyone",
        )
        .hint("check that the key is really the app's env public key"));
    }
    let env = envargs::load(&args.env)?;
    println!("{}", pubkey.seal(&env).to_hex());
    Ok(())
}

pub fn unseal(args: UnsealArgs) -> Result<(), Failure> {
    let shown = args.key_file.display();
    let key_text = Zeroizing::new(
        std::fs::read_to_string(&args.key_file)
            .map_err(|e| Failure::io(format!("cannot read the key file {shown}"), &e))?,
    );
    let key = EnvPrivateKey::from_hex(&key_text).map_err(|e| {
        Failure::config(format!("{shown}: {e}")).hint("pass the file written by `berth keygen`")
    })?;
    let input = args.input.unwrap_or_else(|| "-".into());
    let bytes = if input == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| Failure::io("cannot read standard input", &e))?;
        buf
    } else {
        std::fs::read(&input).map_err(|e| Failure::io(format!("cannot read {input}"), &e))?
    };
    let name = if input == "-" {
        "standard input".to_owned()
    } else {
        input
    };
    let sealed = SealedEnv::from_file_contents(bytes).map_err(|e| {
        Failure::config(format!("{name}: {e}"))
            .hint("pass the hex printed by `berth seal` or the raw bytes")
    })?;
    let env = key.open(&sealed).map_err(|e| {
        Failure::config(format!("{name}: {e}"))
            .hint("check that the key file belongs to the app the env was sealed for")
    })?;
    let out: Zeroizing<Vec<u8>> = if args.json {
        let mut json = plaintext_json(&env);
        json.push(b'\n');
        json
    } else {
        Zeroizing::new(render_dotenv(&env).as_bytes().to_vec())
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&out)
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::io("cannot write to standard output", &e))
}
