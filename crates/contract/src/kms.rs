//! The KMS's HTTP messages: paths, requests and answers, shared by the KMS
//! server, the node (which asks for boot tickets), the boot agent (which
//! redeems one for its env key) and the control plane (public keys only).
//!
//! The KMS listens on a Unix socket in a folder only its owner can enter:
//! [`KMS_SOCKET_URL_SCHEME`] URLs name it.

/// `unix:/path/kms.sock`: a KMS reached over a Unix socket.
pub const KMS_SOCKET_URL_SCHEME: &str = "unix:";

/// `GET`: the KMS public key ([`KmsPublicKeyAnswer`]).
pub const PUBKEY_PATH: &str = "/kms/v1/pubkey";
/// `POST` [`TicketRequest`] → [`TicketAnswer`]; node only (bearer secret).
pub const TICKET_PATH: &str = "/kms/v1/boot-tickets";
/// `POST` [`EnvKeyRequest`] → [`EnvKeyAnswer`]; redeems a boot ticket once.
pub const ENV_KEY_PATH: &str = "/kms/v1/env-key";
/// `POST` [`EnvKeyRequest`] → [`AppKeyAnswer`]; redeems a guest agent's
/// ticket ([`TicketPurpose::Agent`]) once.
pub const APP_KEY_PATH: &str = "/kms/v1/app-key";

/// `GET` path of an app's signed env public key ([`EnvPublicKeyAnswer`]).
pub fn env_pubkey_path(app_id: &str) -> String {
    format!("/kms/v1/apps/{app_id}/env-pubkey")
}

/// `POST` [`ComposeHashRegistration`] → [`AppUpgradeState`]: the app's
/// compose hash from now on; `GET` → [`AppUpgradeState`] (404 until the app's
/// first update: until then only its first manifest's hash is accepted).
pub fn compose_hash_path(app_id: &str) -> String {
    format!("/kms/v1/apps/{app_id}/compose-hash")
}

/// A request to make `compose_hash` the one compose hash the KMS gives the
/// app's env key to. Cloud-authorized apps need no `authorization`;
/// owner-authorized apps need the owner's signature
/// ([`crate::upgrade`]).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ComposeHashRegistration {
    /// The app's first manifest, the hex of its exact bytes: the app id
    /// measures it, and it names the owner key (if any).
    pub genesis_app_compose: String,
    /// The new compose hash, 64 hex.
    pub compose_hash: String,
    /// The owner's signature, for an owner-authorized app.
    #[serde(default)]
    pub authorization: Option<crate::upgrade::OwnerAuthorization>,
}

/// Which compose hash the KMS gives an app's env key to, and who may change it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppUpgradeState {
    /// The app id, 40 hex.
    pub app_id: String,
    /// `cloud` or `owner` ([`crate::upgrade::UpgradeAuthority::model`]).
    pub model: String,
    /// The owner's public key, for an owner-authorized app.
    #[serde(default)]
    pub owner_key: Option<String>,
    /// The compose hash whose boots get the env key, 64 hex.
    pub compose_hash: String,
    /// The counter of the last accepted owner authorization (0: none yet).
    pub counter: u64,
}

/// Answer of [`PUBKEY_PATH`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct KmsPublicKeyAnswer {
    /// Compressed secp256k1 public key, hex.
    pub kms_public_key: String,
    /// The simulated TEE's attestation public key (P-256, raw `x ‖ y`,
    /// hex), which checks the quotes of this KMS's CVMs. Not Intel's.
    #[serde(default)]
    pub attestation_public_key: String,
}

/// Answer of [`env_pubkey_path`]: dstack's two signatures over the key.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EnvPublicKeyAnswer {
    /// The app id, 40 hex.
    pub app_id: String,
    /// The app's X25519 env public key, hex.
    pub public_key: String,
    /// Unix seconds covered by `signature`.
    pub timestamp: u64,
    /// Timestamped signature, hex (65 bytes).
    pub signature: String,
    /// Legacy signature without a timestamp, hex.
    pub signature_v1: String,
    /// The signer, hex.
    pub kms_public_key: String,
}

/// The node asks for a one-time boot ticket for an app's registered hash.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TicketRequest {
    /// The app id, 40 hex.
    pub app_id: String,
    /// The compose hash registered for the app at provisioning, 64 hex.
    pub compose_hash: String,
    /// Which key the ticket may be redeemed for (a boot's env key by
    /// default).
    #[serde(default)]
    pub purpose: TicketPurpose,
}

/// What a ticket may be redeemed for: each process of a CVM gets the one key
/// it needs, and a ticket of one kind is refused at the other's path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketPurpose {
    /// The boot agent: the env key ([`ENV_KEY_PATH`]).
    #[default]
    Boot,
    /// The guest agent: the app key ([`APP_KEY_PATH`]).
    Agent,
}

/// A ticket: redeemable once, for that app and hash, before it expires.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct TicketAnswer {
    /// The ticket, 64 hex (a secret until it is redeemed).
    pub ticket: String,
    /// Seconds until it expires.
    pub expires_in: u64,
}

impl std::fmt::Debug for TicketAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TicketAnswer([redacted], {} s)", self.expires_in)
    }
}

/// How the caller proves what it runs. Local mode: `simulated` (the
/// measurement is computed by the boot agent and taken on trust); with TDX
/// this carries a quote whose event log holds the compose hash.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Attestation {
    /// `simulated`, or in the future `tdx`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// The boot agent redeems its ticket for the env key.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct EnvKeyRequest {
    /// The measured app id.
    pub app_id: String,
    /// The measured compose hash.
    pub compose_hash: String,
    /// The ticket the node handed to this boot.
    #[serde(default)]
    pub ticket: String,
    /// The evidence of what runs.
    pub attestation: Attestation,
}

impl std::fmt::Debug for EnvKeyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EnvKeyRequest(app {}, hash {}, ticket [redacted])",
            self.app_id, self.compose_hash
        )
    }
}

/// The env private key.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct EnvKeyAnswer {
    /// The app id.
    pub app_id: String,
    /// The X25519 private key, hex.
    pub env_private_key: String,
}

impl std::fmt::Debug for EnvKeyAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EnvKeyAnswer(app {}, key [redacted])", self.app_id)
    }
}

/// The app's secp256k1 key and the KMS's signature over it (dstack's
/// `k256_key` and `k256_signature`): what the guest agent derives the app's
/// keys from.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct AppKeyAnswer {
    /// The app id, 40 hex.
    pub app_id: String,
    /// The app key's secret scalar, 64 hex.
    pub app_key: String,
    /// The KMS's recoverable signature over `keccak256("dstack-kms-issued"
    /// || ":" || app_id || app public key (compressed))`, 130 hex.
    pub app_key_signature: String,
    /// The signer: the KMS public key, compressed, 66 hex.
    pub kms_public_key: String,
    /// The seed of the simulated TEE's attestation key (the same for every
    /// CVM of this KMS), 64 hex. Simulated: not Intel's key.
    #[serde(default)]
    pub attestation_seed: String,
}

impl std::fmt::Debug for AppKeyAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AppKeyAnswer(app {}, key [redacted])", self.app_id)
    }
}

/// Every error answer of the KMS.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ErrorAnswer {
    /// One sentence.
    pub detail: String,
}

/// Where a KMS listens, parsed from a `kms_url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KmsEndpoint {
    /// A Unix socket (`unix:/path/kms.sock`): requests go to
    /// `http://kms/...` over it.
    Unix(std::path::PathBuf),
    /// An HTTP(S) base URL.
    Http(String),
}

impl KmsEndpoint {
    /// Parses `unix:/abs/path` or `http(s)://…`.
    pub fn parse(url: &str) -> Option<Self> {
        if let Some(p) = url.strip_prefix(KMS_SOCKET_URL_SCHEME) {
            let p = p.strip_prefix("//").unwrap_or(p);
            return p
                .starts_with('/')
                .then(|| KmsEndpoint::Unix(std::path::PathBuf::from(p)));
        }
        (url.starts_with("http://") || url.starts_with("https://"))
            .then(|| KmsEndpoint::Http(url.trim_end_matches('/').to_owned()))
    }

    /// The URL of `path` on this KMS (for a socket, the host part is a
    /// placeholder: the connection goes to the socket).
    pub fn url(&self, path: &str) -> String {
        match self {
            KmsEndpoint::Unix(_) => format!("http://kms{path}"),
            KmsEndpoint::Http(base) => format!("{base}{path}"),
        }
    }

    /// The `kms_url` form.
    pub fn render(&self) -> String {
        match self {
            KmsEndpoint::Unix(p) => format!("{KMS_SOCKET_URL_SCHEME}{}", p.display()),
            KmsEndpoint::Http(base) => base.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_purpose_defaults_to_boot_and_secrets_are_redacted() {
        let t: TicketRequest =
            serde_json::from_str(r#"{"app_id":"a","compose_hash":"h"}"#).unwrap();
        assert_eq!(t.purpose, TicketPurpose::Boot);
        let t: TicketRequest =
            serde_json::from_str(r#"{"app_id":"a","compose_hash":"h","purpose":"agent"}"#).unwrap();
        assert_eq!(t.purpose, TicketPurpose::Agent);
        let a = AppKeyAnswer {
            app_id: "a".into(),
            app_key: "s3cr3t".into(),
            app_key_signature: "sig".into(),
            kms_public_key: "pk".into(),
            attestation_seed: "seed".into(),
        };
        assert!(!format!("{a:?}").contains("s3cr3t"));
    }

    #[test]
    fn endpoints() {
        let u = KmsEndpoint::parse("unix:/s/kms.sock").unwrap();
        assert_eq!(u, KmsEndpoint::Unix("/s/kms.sock".into()));
        assert_eq!(u.url(PUBKEY_PATH), "http://kms/kms/v1/pubkey");
        assert_eq!(KmsEndpoint::parse(&u.render()), Some(u));
        assert_eq!(
            KmsEndpoint::parse("http://127.0.0.1:9/")
                .unwrap()
                .url(PUBKEY_PATH),
            "http://127.0.0.1:9/kms/v1/pubkey"
        );
        assert!(KmsEndpoint::parse("unix:relative").is_none());
        assert!(KmsEndpoint::parse("ftp://x").is_none());
    }
}
