//! What the commands that talk to a control plane share (`berth deploy`,
//! `berth cvms`, `berth users`, `berth attest`): the API flags and client,
//! an API failure as a [`Failure`], and the KMS key the client trusts.

use crate::failure::Failure;
use clap::Args;
use cloud::{ApiClient, ClientError};

#[derive(Args)]
pub struct ApiArgs {
    /// API base URL (…/api/v1). Default: BERTH_API_URL, else PHALA_CLOUD_API_PREFIX.
    #[arg(long, value_name = "URL")]
    pub(crate) api_url: Option<String>,
}

pub(crate) fn client(args: &ApiArgs) -> Result<ApiClient, Failure> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let url = args
        .api_url
        .clone()
        .or_else(|| env("BERTH_API_URL"))
        .or_else(|| env("PHALA_CLOUD_API_PREFIX"))
        .ok_or_else(|| {
            Failure::config("no API URL: set BERTH_API_URL (or PHALA_CLOUD_API_PREFIX)")
                .hint("`berth up` prints it, e.g. http://127.0.0.1:8000/api/v1")
        })?;
    let key = env("BERTH_API_KEY")
        .or_else(|| env("PHALA_CLOUD_API_KEY"))
        .ok_or_else(|| {
            Failure::config("no API key: set BERTH_API_KEY (or PHALA_CLOUD_API_KEY)")
                .hint("`berth up` prints the admin key")
        })?;
    Ok(ApiClient::new(&url, &key))
}

pub(crate) fn api_failure(e: ClientError) -> Failure {
    let code = if e.is_client_error() { 2 } else { 1 };
    Failure {
        message: e.to_string(),
        hint: None,
        code,
    }
}

/// The KMS key the client trusts.
pub(crate) fn trusted_kms_key(arg: Option<&str>) -> Result<kms::KmsPublicKey, Failure> {
    let text = arg
        .map(str::to_owned)
        .or_else(|| std::env::var("BERTH_KMS_PUBKEY").ok().filter(|v| !v.is_empty()))
        .or_else(|| {
            std::fs::read_to_string(crate::upcmd::default_state().join("kms-public-key"))
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .ok_or_else(|| {
            Failure::config("no trusted KMS public key: pass --kms-pubkey or set BERTH_KMS_PUBKEY")
                .hint("`berth up` prints the KMS public key; Berth checks the env key's signature against it before sealing anything")
        })?;
    kms::KmsPublicKey::from_hex(&text)
        .map_err(|e| Failure::config(format!("the trusted KMS public key: {e}")))
}

/// Why `berth deploy` sealed nothing, in its own terms.
pub(crate) fn trust_failure(e: kms::trust::TrustError) -> Failure {
    use kms::trust::TrustError;
    match e {
        TrustError::Unsigned => Failure::config(
            "the API returned the env public key without a KMS signature; refusing to seal",
        )
        .hint("is this a Berth server? the official Phala Cloud does not sign keys of its default KMS"),
        e if e.is_verification_failure() => Failure::config(format!(
            "the env public key is not signed by the trusted KMS: {e}"
        ))
        .hint("nothing was sealed or sent; check --kms-pubkey / BERTH_KMS_PUBKEY against `berth up`'s output"),
        e => Failure::config(format!("the API's answer cannot be sealed to: {e}"))
            .hint("nothing was sealed or sent"),
    }
}
