//! The app's image policy: which images its boots may run.
//!
//! The policy travels in the app's manifest (`app-compose.json`, field
//! [`IMAGE_POLICY_FIELD`]), so the compose hash measures it: the KMS gives
//! the env key only to boots of a hash it accepts, and for an
//! owner-authorized app only the owner can make it accept a manifest with a
//! weaker policy ([`crate::upgrade`]). Two rules:
//!
//! - `require_digests`: every image must be written `name@sha256:…` (a tag
//!   names whatever was pushed to it last);
//! - `signatures`: images under a scope (`*`, a registry, or a registry and
//!   repository prefix; the longest scope that matches wins) must carry a
//!   cosign signature, over their pinned manifest digest, by one of the
//!   scope's public keys (ECDSA P-256, PEM `PUBLIC KEY`).
//!
//! This module is the policy's grammar and its checks that need no
//! cryptography (the PEM armour and the key's type are read here, so the
//! control plane refuses a malformed policy at provisioning); the signatures
//! themselves are verified by the boot agent's pull (`registry::cosign`).

use crate::reference::ImageReference;
use base64::Engine as _;

/// The manifest field that holds the policy.
pub const IMAGE_POLICY_FIELD: &str = "berth_image_policy";

/// Most signature rules a policy may hold.
pub const MAX_RULES: usize = 64;
/// Most keys one rule may name.
pub const MAX_KEYS_PER_RULE: usize = 16;
/// Longest PEM text of one key.
pub const MAX_KEY_PEM_BYTES: usize = 4096;
/// Longest scope.
pub const MAX_SCOPE_BYTES: usize = 255;

/// An app's image policy (see the module's documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePolicy {
    /// Every image must be pinned to a digest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_digests: bool,
    /// Images that must be signed, and by whom.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signatures: Vec<SignatureRule>,
}

/// Images under `scope` must carry a cosign signature by one of `keys`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureRule {
    /// `*` (every image), a registry (`ghcr.io`, `127.0.0.1:5000`), or a
    /// registry and a repository prefix (`ghcr.io/acme`, matching
    /// `ghcr.io/acme/web` but not `ghcr.io/acme-corp/web`).
    pub scope: String,
    /// ECDSA P-256 public keys, PEM (`-----BEGIN PUBLIC KEY-----`), as
    /// `cosign generate-key-pair` writes `cosign.pub`.
    pub keys: Vec<String>,
}

/// Why a policy is refused: one sentence.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the image policy ({IMAGE_POLICY_FIELD}) is not valid: {0}")]
pub struct ImagePolicyError(pub String);

/// Why a key is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No `-----BEGIN PUBLIC KEY-----` … `-----END PUBLIC KEY-----` block.
    #[error("is not a PEM public key (-----BEGIN PUBLIC KEY----- … -----END PUBLIC KEY-----)")]
    NotPem,
    /// The PEM body is not base64.
    #[error("has a PEM body that is not base64")]
    Base64,
    /// Not an ECDSA P-256 SubjectPublicKeyInfo.
    #[error("is not an ECDSA P-256 public key (cosign's default key type)")]
    NotP256,
    /// Longer than [`MAX_KEY_PEM_BYTES`].
    #[error("is longer than {MAX_KEY_PEM_BYTES} bytes")]
    TooLong,
}

/// The DER prefix of a P-256 SubjectPublicKeyInfo with an uncompressed
/// point (91 bytes in all: this prefix, then `04 || X || Y`).
const SPKI_P256_UNCOMPRESSED: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// The same with a compressed point (59 bytes: this, then `02|03 || X`).
const SPKI_P256_COMPRESSED: [u8; 26] = [
    0x30, 0x39, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x22, 0x00,
];

/// The SEC1 point of a PEM P-256 public key (`04 || X || Y`, or the
/// compressed form), read from its SubjectPublicKeyInfo. Whether the point
/// is on the curve is for the verifier to say.
pub fn p256_public_key_point(pem: &str) -> Result<Vec<u8>, KeyError> {
    if pem.len() > MAX_KEY_PEM_BYTES {
        return Err(KeyError::TooLong);
    }
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    let text = pem.trim();
    let body = text
        .strip_prefix(BEGIN)
        .and_then(|t| t.strip_suffix(END))
        .ok_or(KeyError::NotPem)?;
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|_| KeyError::Base64)?;
    let spki_p256 = (der.len() == 91 && der.starts_with(&SPKI_P256_UNCOMPRESSED))
        || (der.len() == 59 && der.starts_with(&SPKI_P256_COMPRESSED));
    if !spki_p256 {
        return Err(KeyError::NotP256);
    }
    let point = &der[26..];
    match point.first() {
        Some(0x04) if point.len() == 65 => Ok(point.to_vec()),
        Some(0x02 | 0x03) if point.len() == 33 => Ok(point.to_vec()),
        _ => Err(KeyError::NotP256),
    }
}

/// A short, stable name for a key in messages: `sha256:` and the first 16
/// hex characters of the sha256 of its SEC1 point.
pub fn key_fingerprint(point: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", &hex::encode(sha2::Sha256::digest(point))[..16])
}

impl ImagePolicy {
    /// Reads and checks a policy from the manifest's JSON value.
    pub fn from_value(value: &serde_json::Value) -> Result<Self, ImagePolicyError> {
        if !value.is_object() {
            return Err(ImagePolicyError(
                "it must be a JSON object (`{\"require_digests\": true, \"signatures\": [...]}`)"
                    .into(),
            ));
        }
        let policy: ImagePolicy =
            serde_json::from_value(value.clone()).map_err(|e| ImagePolicyError(e.to_string()))?;
        policy.check()?;
        Ok(policy)
    }

    /// Reads and checks a policy from JSON text (a file the user gives).
    pub fn parse(text: &str) -> Result<Self, ImagePolicyError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ImagePolicyError(format!("not JSON: {e}")))?;
        Self::from_value(&value)
    }

    /// Whether the policy asks for nothing (rendered as no field at all).
    pub fn is_empty(&self) -> bool {
        !self.require_digests && self.signatures.is_empty()
    }

    /// The checks that need no cryptography: sizes, scope grammar, each key
    /// a PEM P-256 public key, no scope twice.
    pub fn check(&self) -> Result<(), ImagePolicyError> {
        if self.signatures.len() > MAX_RULES {
            return Err(ImagePolicyError(format!(
                "{} signature rules, more than the {MAX_RULES} allowed",
                self.signatures.len()
            )));
        }
        for (i, rule) in self.signatures.iter().enumerate() {
            let n = i + 1;
            check_scope(&rule.scope).map_err(|why| {
                ImagePolicyError(format!(
                    "signature rule {n}: scope `{}` {why}",
                    escape(&rule.scope)
                ))
            })?;
            if self.signatures[..i].iter().any(|r| r.scope == rule.scope) {
                return Err(ImagePolicyError(format!(
                    "signature rule {n}: scope `{}` is named twice",
                    escape(&rule.scope)
                )));
            }
            if rule.keys.is_empty() {
                return Err(ImagePolicyError(format!(
                    "signature rule {n} (scope `{}`) names no key",
                    escape(&rule.scope)
                )));
            }
            if rule.keys.len() > MAX_KEYS_PER_RULE {
                return Err(ImagePolicyError(format!(
                    "signature rule {n} (scope `{}`) names {} keys, more than the {MAX_KEYS_PER_RULE} allowed",
                    escape(&rule.scope),
                    rule.keys.len()
                )));
            }
            for (k, key) in rule.keys.iter().enumerate() {
                p256_public_key_point(key).map_err(|e| {
                    ImagePolicyError(format!(
                        "signature rule {n} (scope `{}`): key {} {e}",
                        escape(&rule.scope),
                        k + 1
                    ))
                })?;
            }
        }
        Ok(())
    }

    /// The rule that governs `image` (its normalised `registry/repository`
    /// is matched): the longest scope that is the name itself or a prefix
    /// of it ending at a `/`, else `*`, else none.
    pub fn rule_for(&self, image: &ImageReference) -> Option<&SignatureRule> {
        let name = format!("{}/{}", image.registry(), image.repository());
        self.signatures
            .iter()
            .filter(|r| scope_matches(&r.scope, &name))
            .max_by_key(|r| if r.scope == "*" { 0 } else { r.scope.len() })
    }

    /// One line for logs: what the policy asks.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.require_digests {
            parts.push("every image pinned to a digest".to_owned());
        }
        for r in &self.signatures {
            parts.push(format!(
                "cosign signatures for {} by {} key{}",
                if r.scope == "*" {
                    "every image".to_owned()
                } else {
                    escape(&r.scope)
                },
                r.keys.len(),
                if r.keys.len() == 1 { "" } else { "s" }
            ));
        }
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join("; ")
        }
    }
}

/// The sentence of an image that is not pinned where a digest is required
/// (the policy's `require_digests`, or the operator's `--require-digests`):
/// `subject` is what [`first_unpinned`] names, `who` what requires it.
pub fn unpinned_sentence(subject: &str, who: &str) -> String {
    format!("{subject} is not pinned to a digest, and {who} requires every image as name@sha256:…")
}

/// The first image of `compose` that has no digest (a service's image,
/// then the base images of the builds in the CVM), named for a sentence:
/// `service web's image ghcr.io/acme/web:v1`.
pub fn first_unpinned(compose: &crate::ComposeFile) -> Option<String> {
    if let Some(i) = compose
        .images
        .iter()
        .find(|i| i.reference.digest().is_none())
    {
        return Some(format!(
            "service {}'s image {}",
            escape(&i.service),
            escape(&i.written)
        ));
    }
    compose
        .base_images()
        .into_iter()
        .find(|b| b.reference.digest().is_none())
        .map(|b| format!("the build base image {}", escape(&b.written)))
}

fn scope_matches(scope: &str, name: &str) -> bool {
    scope == "*"
        || name == scope
        || (name.len() > scope.len()
            && name.starts_with(scope)
            && name.as_bytes()[scope.len()] == b'/')
}

fn check_scope(scope: &str) -> Result<(), &'static str> {
    if scope == "*" {
        return Ok(());
    }
    if scope.is_empty() || scope.len() > MAX_SCOPE_BYTES {
        return Err("must be `*` or a registry, optionally followed by a repository prefix");
    }
    let ok_chars = scope
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/:".contains(&b));
    if !ok_chars {
        return Err("may hold only lowercase letters, digits and . _ - / :");
    }
    if scope.split('/').any(str::is_empty) {
        return Err("has an empty path segment");
    }
    let host = scope.split('/').next().unwrap_or_default();
    if !(host.contains('.') || host.contains(':') || host == "localhost") {
        return Err(
            "must start with a registry name (`docker.io/library`, `ghcr.io/acme`, `localhost:5000`)",
        );
    }
    Ok(())
}

/// Control characters escaped, at most 120 characters.
fn escape(s: &str) -> String {
    s.chars()
        .take(120)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A P-256 public key, PEM as `cosign generate-key-pair` writes it.
    const KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEKXsCvS7Ehnjssz5QFdHF7kBc8Szi
jfgc/KiybBv6uA5RMTJZgP2mi9uS0Uicj5E96tQFpBNyYfoQLzgeteh4NQ==
-----END PUBLIC KEY-----
";

    fn policy(json: serde_json::Value) -> Result<ImagePolicy, ImagePolicyError> {
        ImagePolicy::from_value(&json)
    }

    #[test]
    fn a_valid_policy_reads_and_round_trips() {
        let p = policy(serde_json::json!({
            "require_digests": true,
            "signatures": [{"scope": "ghcr.io/acme", "keys": [KEY]}, {"scope": "*", "keys": [KEY]}]
        }))
        .unwrap();
        assert!(p.require_digests);
        let back = ImagePolicy::from_value(&serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        assert_eq!(
            p.describe(),
            "every image pinned to a digest; cosign signatures for ghcr.io/acme by 1 key; cosign signatures for every image by 1 key"
        );
        assert!(ImagePolicy::default().is_empty());
        assert_eq!(
            serde_json::to_string(&ImagePolicy::default()).unwrap(),
            "{}"
        );
    }

    #[test]
    fn the_longest_scope_wins_and_prefixes_end_at_a_slash() {
        let p = policy(serde_json::json!({"signatures": [
            {"scope": "*", "keys": [KEY]},
            {"scope": "ghcr.io", "keys": [KEY]},
            {"scope": "ghcr.io/acme", "keys": [KEY]},
        ]}))
        .unwrap();
        let scope = |r: &str| {
            p.rule_for(&r.parse().unwrap())
                .map(|r| r.scope.clone())
                .unwrap()
        };
        assert_eq!(scope("ghcr.io/acme/web:v1"), "ghcr.io/acme");
        assert_eq!(scope("ghcr.io/acme-corp/web:v1"), "ghcr.io");
        assert_eq!(scope("busybox"), "*");
        let only = policy(
            serde_json::json!({"signatures": [{"scope": "docker.io/library", "keys": [KEY]}]}),
        )
        .unwrap();
        assert!(only.rule_for(&"busybox".parse().unwrap()).is_some());
        assert!(only.rule_for(&"ghcr.io/x/y".parse().unwrap()).is_none());
    }

    #[test]
    fn malformed_policies_are_refused_with_a_sentence() {
        let cases = [
            (serde_json::json!({"require_digest": true}), "unknown field"),
            (serde_json::json!({"signatures": {}}), "invalid type"),
            (serde_json::json!([]), "must be a JSON object"),
            (
                serde_json::json!({"signatures": [{"scope": "acme", "keys": [KEY]}]}),
                "must start with a registry name",
            ),
            (
                serde_json::json!({"signatures": [{"scope": "Ghcr.io", "keys": [KEY]}]}),
                "lowercase",
            ),
            (
                serde_json::json!({"signatures": [{"scope": "ghcr.io//x", "keys": [KEY]}]}),
                "empty path segment",
            ),
            (
                serde_json::json!({"signatures": [{"scope": "ghcr.io", "keys": []}]}),
                "names no key",
            ),
            (
                serde_json::json!({"signatures": [{"scope": "ghcr.io", "keys": ["hello"]}]}),
                "key 1 is not a PEM public key",
            ),
            (
                serde_json::json!({"signatures": [{"scope": "ghcr.io", "keys": ["-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----"]}]}),
                "not base64",
            ),
            (
                // An Ed25519 key.
                serde_json::json!({"signatures": [{"scope": "ghcr.io", "keys": ["-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAsVbEwmfBPnVNIRYm3E8FAeHF413b3jFwBh544LtpHsI=\n-----END PUBLIC KEY-----"]}]}),
                "not an ECDSA P-256 public key",
            ),
            (
                serde_json::json!({"signatures": [{"scope": "ghcr.io", "keys": [KEY]}, {"scope": "ghcr.io", "keys": [KEY]}]}),
                "named twice",
            ),
            (
                serde_json::json!({"signatures": [{"scope": "ghcr.io", "keys": ["x".repeat(5000)]}]}),
                "longer than",
            ),
        ];
        for (json, want) in cases {
            let err = policy(json.clone()).unwrap_err().to_string();
            assert!(err.starts_with("the image policy (berth_image_policy) is not valid: "));
            assert!(err.contains(want), "{json}: {err}");
        }
        let many = serde_json::json!({"signatures": (0..65).map(|i| serde_json::json!({"scope": format!("r{i}.io"), "keys": [KEY]})).collect::<Vec<_>>()});
        assert!(policy(many).unwrap_err().to_string().contains("more than"));
        assert!(
            ImagePolicy::parse("{not json")
                .unwrap_err()
                .to_string()
                .contains("not JSON")
        );
    }

    #[test]
    fn the_policy_is_part_of_the_compose_hash() {
        let envs = vec![];
        let input = crate::AppComposeInput {
            name: "signed-app",
            docker_compose_file: "services: {}\n",
            allowed_envs: &envs,
            public_logs: true,
            public_sysinfo: true,
            owner: Some("aa11"),
            owner_key: None,
        };
        let strict = policy(serde_json::json!({"require_digests": true, "signatures": [{"scope": "ghcr.io/acme", "keys": [KEY]}]})).unwrap();
        let digests_only = policy(serde_json::json!({"require_digests": true})).unwrap();
        let none = crate::Measurement::of(&input.render());
        let a = crate::Measurement::of(&input.render_with_policy(Some(&strict)));
        let b = crate::Measurement::of(&input.render_with_policy(Some(&digests_only)));
        assert_ne!(a, none);
        assert_ne!(a, b);
        assert_ne!(b, none);
        // An empty policy is no policy: the same bytes as none.
        assert_eq!(
            input.render_with_policy(Some(&ImagePolicy::default())),
            input.render()
        );
        // The boot agent reads back what was measured.
        let manifest: crate::AppCompose =
            serde_json::from_slice(&input.render_with_policy(Some(&strict))).unwrap();
        assert_eq!(manifest.image_policy().unwrap(), Some(strict));
        let plain: crate::AppCompose = serde_json::from_slice(&input.render()).unwrap();
        assert_eq!(plain.image_policy().unwrap(), None);
        let broken: crate::AppCompose = serde_json::from_str(
            r#"{"name":"a","runner":"docker-compose","berth_image_policy":{"signatures":[{"scope":"ghcr.io","keys":["nope"]}]}}"#,
        )
        .unwrap();
        assert!(broken.image_policy().is_err());
    }

    proptest::proptest! {
        /// Whatever a user or a tampered manifest holds: a sentence, never
        /// a panic.
        #[test]
        fn any_text_is_a_policy_or_a_sentence(text in "\\PC{0,300}") {
            let _ = ImagePolicy::parse(&text);
            let _ = p256_public_key_point(&text);
            let wrapped = format!("-----BEGIN PUBLIC KEY-----\n{text}\n-----END PUBLIC KEY-----");
            let _ = p256_public_key_point(&wrapped);
            let _ = ImagePolicy::from_value(&serde_json::json!({"signatures": [{"scope": text, "keys": [wrapped]}]}));
        }
    }

    #[test]
    fn keys_are_read_from_their_spki() {
        let point = p256_public_key_point(KEY).unwrap();
        assert_eq!(point.len(), 65);
        assert_eq!(point[0], 4);
        assert_eq!(key_fingerprint(&point).len(), "sha256:".len() + 16);
        assert_eq!(
            p256_public_key_point("-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----"),
            Err(KeyError::NotP256)
        );
    }

    #[test]
    fn unpinned_images_are_named() {
        let compose = crate::ComposeFile::parse_and_check(
            "services:\n  a:\n    image: busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000\n  web:\n    image: ghcr.io/acme/web:v1\n",
        )
        .unwrap();
        let subject = first_unpinned(&compose).unwrap();
        assert_eq!(subject, "service web's image ghcr.io/acme/web:v1");
        assert_eq!(
            unpinned_sentence(&subject, "the app's image policy"),
            "service web's image ghcr.io/acme/web:v1 is not pinned to a digest, and the app's image policy requires every image as name@sha256:…"
        );
        let pinned = crate::ComposeFile::parse_and_check(
            "services:\n  a:\n    image: busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000\n",
        )
        .unwrap();
        assert_eq!(first_unpinned(&pinned), None);
    }
}
