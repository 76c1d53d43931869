//! `berth attest verify`: checks a quote of a Berth CVM the way a user's
//! verification code would — signed by this cloud's attestation key, for
//! the expected compose hash, its event log replaying to its RTMRs, and
//! the report data asked for — so an attestation flow can be tested
//! locally. Quotes of a Berth CVM are simulated (no TDX hardware): the
//! key is Berth's, not Intel's, and a real DCAP verifier refuses them.

use crate::cloudapi::{ApiArgs, api_failure, client};
use crate::failure::Failure;
use clap::{Args, Subcommand};
use std::io::Read;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum AttestCommand {
    /// Check a quote from a CVM's guest agent (GetQuote / Tappd.TdxQuote).
    Verify(VerifyArgs),
}

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The quote: a file (`-`: standard input) holding the agent's JSON
    /// answer (its `quote` and `event_log` are used), the quote as hex, or
    /// its raw bytes.
    #[arg(long, value_name = "FILE")]
    quote: PathBuf,
    /// The compose hash the quote must be for (hex).
    #[arg(long, value_name = "HEX")]
    compose_hash: String,
    /// The report data the quote must carry (hex, at most 64 bytes,
    /// zero-padded as the agent pads it).
    #[arg(long, value_name = "HEX")]
    report_data: Option<String>,
    /// The event log (JSON) to replay against the quote's RTMRs; default:
    /// the one in the agent's answer, if the file is one.
    #[arg(long, value_name = "FILE")]
    event_log: Option<PathBuf>,
    /// The attestation public key (hex, 128 characters). Default: asked of
    /// the cloud (`GET /berth/attestation-key`, BERTH_API_URL and
    /// BERTH_API_KEY); `berth up` prints it too.
    #[arg(long, value_name = "HEX", env = "BERTH_ATTESTATION_KEY")]
    attestation_key: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: AttestCommand) -> Result<(), Failure> {
    match cmd {
        AttestCommand::Verify(args) => verify(args),
    }
}

/// The quote's bytes and the event log, from what the user gave.
fn read_quote(args: &VerifyArgs) -> Result<(Vec<u8>, Option<String>), Failure> {
    let mut bytes = Vec::new();
    let name = args.quote.display().to_string();
    if name == "-" {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| Failure::io("cannot read the quote from standard input", &e))?;
    } else {
        bytes = std::fs::read(&args.quote)
            .map_err(|e| Failure::io(format!("cannot read {name}"), &e))?;
    }
    let text = String::from_utf8(bytes.clone()).ok();
    let trimmed = text.as_deref().map(str::trim).unwrap_or_default();
    if trimmed.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(trimmed)
            .map_err(|_| Failure::config(format!("{name} starts like JSON but is not JSON")))?;
        let quote = v["quote"].as_str().ok_or_else(|| {
            Failure::config(format!("{name} is JSON without a `quote` field"))
                .hint("give the guest agent's GetQuote answer, or the quote as hex")
        })?;
        let event_log = v["event_log"].as_str().map(str::to_owned);
        return Ok((hex_bytes(quote, "the quote")?, event_log));
    }
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_hexdigit() || b == b'x') {
        return Ok((hex_bytes(trimmed, "the quote")?, None));
    }
    Ok((bytes, None))
}

fn hex_bytes(text: &str, what: &str) -> Result<Vec<u8>, Failure> {
    let t = text.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    hex::decode(t).map_err(|_| Failure::config(format!("{what} is not valid hex")))
}

fn verify(args: VerifyArgs) -> Result<(), Failure> {
    let (quote, answer_log) = read_quote(&args)?;
    let key_hex = match &args.attestation_key {
        Some(k) => k.clone(),
        None => {
            let api = client(&args.api)?;
            crate::runtime()
                .block_on(api.attestation_key())
                .map_err(api_failure)?
        }
    };
    let key = agent::AttestationPublicKey::from_raw(&hex_bytes(&key_hex, "the attestation key")?)
        .ok_or_else(|| {
        Failure::config("the attestation key is not a P-256 public key (128 hex characters, x ‖ y)")
    })?;
    let integrity = |message: String| Failure {
        message,
        hint: None,
        code: contract::Category::Integrity.exit_code(),
    };
    let verified = agent::verify_quote(&quote, &key, &args.compose_hash)
        .map_err(|e| integrity(format!("the quote does not verify: {e}")))?;
    let event_log = match &args.event_log {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| Failure::io(format!("cannot read {}", path.display()), &e))?,
        ),
        None => answer_log,
    };
    if let Some(log) = &event_log {
        verified
            .check_event_log(log)
            .map_err(|e| integrity(format!("the event log does not match the quote: {e}")))?;
    }
    if let Some(expected) = &args.report_data {
        let want = hex_bytes(expected, "--report-data")?;
        if want.len() > 64 {
            return Err(Failure::config("--report-data is longer than 64 bytes"));
        }
        let mut padded = [0u8; 64];
        padded[..want.len()].copy_from_slice(&want);
        if padded != verified.report_data {
            return Err(integrity(format!(
                "the quote's report data is {}, not the one expected",
                hex::encode(verified.report_data)
            )));
        }
    }
    let rtmrs: Vec<String> = verified.rtmrs.iter().map(hex::encode).collect();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "verified": true,
                "simulated": true,
                "compose_hash": hex::encode(verified.compose_hash),
                "report_data": hex::encode(verified.report_data),
                "mrtd": hex::encode(verified.mrtd),
                "rtmrs": rtmrs,
                "event_log_replayed": event_log.is_some(),
            })
        );
    } else {
        println!(
            "Quote verified (simulated TEE: signed by this cloud's attestation key, not by TDX hardware)."
        );
        println!("compose hash: {}", hex::encode(verified.compose_hash));
        println!("report data:  {}", hex::encode(verified.report_data));
        for (i, r) in rtmrs.iter().enumerate() {
            println!("rtmr{i}:        {r}");
        }
        println!(
            "event log:    {}",
            if event_log.is_some() {
                "replays to the RTMRs"
            } else {
                "not given (RTMRs not checked against one)"
            }
        );
    }
    Ok(())
}
