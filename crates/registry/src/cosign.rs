//! Cosign signatures, checked against an app's image policy
//! ([`contract::image_policy`]) before anything of an image is fetched.
//!
//! Where cosign puts a signature of `repo@sha256:<hex>`: a manifest tagged
//! `sha256-<hex>.sig` in the same repository, one layer per signature; each
//! layer is a *simple-signing* JSON payload whose
//! `critical.image.docker-manifest-digest` names the signed digest, and
//! carries the annotation `dev.cosignproject.cosign/signature`: the base64
//! of an ASN.1 DER ECDSA signature (SHA-256) over the payload's bytes. An
//! image passes when one layer's payload verifies under one of the keys its
//! scope names *and* names the image's pinned digest. Nothing is trusted
//! before that: the signature manifest and each payload are read with size
//! caps (`SIGNATURE_MANIFEST`, `PAYLOAD`), a payload must hash to its
//! descriptor, and its JSON is read only once its signature verifies.
//!
//! Why RustCrypto's `p256` (ECDSA P-256 verification, already in the
//! workspace through `agent`) and not the `sigstore` crate: `sigstore`
//! brings its own OCI client (`oci-distribution`), TUF, x509 and several
//! crypto stacks — hundreds of crates in a binary that runs inside every
//! CVM — and its OCI client would bypass this crate's pull engine, and with
//! it the registry credentials' rules, the private-address guard, the retry
//! budget and the body caps every other request keeps. Key-based
//! verification is a few dozen lines on top of `p256`. Keyless signatures
//! (a Fulcio certificate and a Rekor bundle) are not supported: verifying
//! them soundly offline needs a pinned trusted root, certificate-chain and
//! SCT checks and the Rekor inclusion proof, which is the part `sigstore`
//! would be worth its weight for; a policy names keys only. The OCI 1.1
//! referrers API is not consulted either: cosign writes the `.sig` tag by
//! default, and the registries Berth is tested against do not serve
//! referrers.

use crate::error::{Category, PullError};
use crate::manifest::Descriptor;
use crate::reference::{Digest, ImageReference};
use base64::Engine as _;
use contract::image_policy::{ImagePolicy, key_fingerprint, p256_public_key_point};
use p256::ecdsa::signature::Verifier as _;
use std::time::Duration;

/// The annotation that carries a layer's signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The `critical.type` of a cosign simple-signing payload.
pub const PAYLOAD_TYPE: &str = "cosign container image signature";

/// The signature manifest: cosign's are well under 10 KiB per signature.
pub(crate) const SIGNATURE_MANIFEST: crate::body::Cap = crate::body::Cap {
    bytes: 256 << 10,
    deadline: Duration::from_secs(30),
};
/// One simple-signing payload (cosign's are a few hundred bytes).
pub(crate) const PAYLOAD: crate::body::Cap = crate::body::Cap {
    bytes: 64 << 10,
    deadline: Duration::from_secs(30),
};
/// Most signature layers looked at in one signature manifest.
pub const MAX_SIGNATURES: usize = 32;
/// Longest base64 signature annotation read (a P-256 DER signature is at
/// most 72 bytes, 96 in base64).
const MAX_SIGNATURE_B64: usize = 1024;

/// A key of the policy, parsed.
#[derive(Clone)]
pub(crate) struct TrustedKey {
    pub(crate) key: p256::ecdsa::VerifyingKey,
    pub(crate) fingerprint: String,
}

/// An image policy with its keys parsed: what a [`crate::Puller`] checks
/// every image against ([`crate::PullOptions::signatures`]).
#[derive(Clone)]
pub struct SignaturePolicy {
    policy: ImagePolicy,
    /// The keys of each of `policy.signatures`, in order.
    keys: Vec<Vec<TrustedKey>>,
}

impl std::fmt::Debug for SignaturePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scopes: Vec<String> = self
            .policy
            .signatures
            .iter()
            .zip(&self.keys)
            .map(|(r, keys)| {
                let fps: Vec<&str> = keys.iter().map(|k| k.fingerprint.as_str()).collect();
                format!("{} [{}]", r.scope, fps.join(", "))
            })
            .collect();
        f.debug_struct("SignaturePolicy")
            .field("scopes", &scopes)
            .finish()
    }
}

/// A signature that verified: which key, for which scope.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Verified {
    /// The policy scope that required it.
    pub scope: String,
    /// The key's fingerprint ([`key_fingerprint`]).
    pub key: String,
}

impl SignaturePolicy {
    /// Parses every key of `policy` (checked again: the policy may come
    /// from a manifest altered on the host). A key that is not a point of
    /// P-256 is refused with a sentence.
    pub fn new(policy: &ImagePolicy) -> Result<Self, PullError> {
        policy
            .check()
            .map_err(|e| PullError::new(Category::Config, e.to_string()))?;
        let mut keys = Vec::with_capacity(policy.signatures.len());
        for (i, rule) in policy.signatures.iter().enumerate() {
            let mut parsed = Vec::with_capacity(rule.keys.len());
            for (k, pem) in rule.keys.iter().enumerate() {
                let bad = |why: &str| {
                    PullError::new(
                        Category::Config,
                        format!(
                            "the image policy (berth_image_policy) is not valid: signature rule {} (scope `{}`): key {} {why}",
                            i + 1,
                            rule.scope,
                            k + 1
                        ),
                    )
                };
                let point = p256_public_key_point(pem).map_err(|e| bad(&e.to_string()))?;
                let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                    .map_err(|_| bad("is not a point of the P-256 curve"))?;
                parsed.push(TrustedKey {
                    key,
                    fingerprint: key_fingerprint(&point),
                });
            }
            keys.push(parsed);
        }
        Ok(Self {
            policy: policy.clone(),
            keys,
        })
    }

    /// The policy.
    pub fn policy(&self) -> &ImagePolicy {
        &self.policy
    }

    /// The scope and keys that govern `image`, if a signature is required.
    pub(crate) fn rule_for(&self, image: &ImageReference) -> Option<(&str, &[TrustedKey])> {
        let rule = self.policy.rule_for(image)?;
        let i = self
            .policy
            .signatures
            .iter()
            .position(|r| std::ptr::eq(r, rule))?;
        Some((rule.scope.as_str(), &self.keys[i]))
    }

    /// Whether `image` needs a signature under this policy.
    pub fn requires_signature(&self, image: &ImageReference) -> bool {
        self.rule_for(image).is_some()
    }
}

/// One signature layer of a signature manifest.
#[derive(Clone, Debug)]
pub(crate) struct SignatureLayer {
    /// The payload's descriptor.
    pub(crate) payload: Descriptor,
    /// The DER signature, or why it could not be read.
    pub(crate) signature: Result<Vec<u8>, &'static str>,
}

/// Why an image is untrusted: the end of the sentence "`image@digest` is
/// untrusted: …".
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Distrust {
    /// No signature manifest, or one without a signature layer.
    NoSignature { tag: String },
    /// Signatures, none of which verifies under the scope's keys.
    UnknownKey { signatures: usize, scope: String },
    /// A signature verified, but its payload names another digest.
    OtherDigest { key: String, signed: String },
    /// A signature verified, but its payload is not a cosign payload.
    NotAPayload { key: String, why: String },
    /// The signature manifest or a payload is malformed or too big.
    Malformed(String),
}

impl Distrust {
    /// How specific the reason is: when no signature passes, the most
    /// specific reason among them is the one told.
    pub(crate) fn rank(&self) -> u8 {
        match self {
            Distrust::OtherDigest { .. } => 5,
            Distrust::NotAPayload { .. } => 4,
            Distrust::UnknownKey { .. } => 3,
            Distrust::Malformed(_) => 2,
            Distrust::NoSignature { .. } => 1,
        }
    }

    fn sentence(&self, digest: &Digest) -> String {
        match self {
            Distrust::NoSignature { tag } => format!(
                "it has no cosign signature (no signature layer under the tag {tag} of its repository), and the app's image policy requires one"
            ),
            Distrust::UnknownKey { signatures, scope } => format!(
                "{} under none of the keys the app's image policy names for {scope} (signed by another key, or the payload was altered)",
                match signatures {
                    1 => "its signature verifies".to_owned(),
                    n => format!("none of its {n} signatures verifies"),
                }
            ),
            Distrust::OtherDigest { key, signed } => format!(
                "its signature by key {key} is for digest {signed}, not for the pinned digest {digest}"
            ),
            Distrust::NotAPayload { key, why } => {
                format!("the payload signed by key {key} {why}")
            }
            Distrust::Malformed(why) => format!("its signature {why}"),
        }
    }
}

/// The untrusted-image failure of `image` pinned at `digest`.
pub(crate) fn untrusted(image: &str, digest: &Digest, why: &Distrust) -> PullError {
    PullError::new(
        Category::UntrustedImage,
        format!("{image}@{digest} is untrusted: {}", why.sentence(digest)),
    )
}

/// The tag cosign stores the signatures of `digest` under.
pub fn signature_tag(digest: &Digest) -> String {
    format!("{}-{}.sig", digest.algorithm().name(), digest.hex())
}

/// Reads a signature manifest: its signature layers (at most
/// [`MAX_SIGNATURES`]).
pub(crate) fn parse_signature_manifest(bytes: &[u8]) -> Result<Vec<SignatureLayer>, Distrust> {
    #[derive(serde::Deserialize)]
    struct Layer {
        #[serde(flatten)]
        descriptor: Descriptor,
        #[serde(default)]
        annotations: std::collections::BTreeMap<String, String>,
    }
    #[derive(serde::Deserialize)]
    struct SigManifest {
        #[serde(default)]
        layers: Vec<Layer>,
    }
    let malformed = || Distrust::Malformed("manifest is not a valid image manifest".into());
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| malformed())?;
    if !value.is_object() {
        return Err(malformed());
    }
    let m: SigManifest = serde_json::from_value(value).map_err(|_| malformed())?;
    let signed: Vec<Layer> = m
        .layers
        .into_iter()
        .filter(|l| l.annotations.contains_key(SIGNATURE_ANNOTATION))
        .collect();
    if signed.len() > MAX_SIGNATURES {
        return Err(Distrust::Malformed(format!(
            "manifest holds {} signatures, more than the {MAX_SIGNATURES} Berth reads",
            signed.len()
        )));
    }
    Ok(signed
        .into_iter()
        .map(|l| {
            let b64 = &l.annotations[SIGNATURE_ANNOTATION];
            let signature = if b64.len() > MAX_SIGNATURE_B64 {
                Err("is longer than any ECDSA P-256 signature")
            } else {
                base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|_| "is not base64")
            };
            SignatureLayer {
                payload: l.descriptor,
                signature,
            }
        })
        .collect())
}

/// Checks one signature over `payload` against `keys`, then the payload's
/// digest against `digest`: the key that signed it, or why not.
pub(crate) fn check_signature(
    payload: &[u8],
    signature_der: &[u8],
    keys: &[TrustedKey],
    digest: &Digest,
    scope: &str,
) -> Result<String, Distrust> {
    let unknown = || Distrust::UnknownKey {
        signatures: 1,
        scope: scope.to_owned(),
    };
    let signature = p256::ecdsa::Signature::from_der(signature_der).map_err(|_| unknown())?;
    let key = keys
        .iter()
        .find(|k| k.key.verify(payload, &signature).is_ok())
        .map(|k| k.fingerprint.clone())
        .ok_or_else(unknown)?;
    // Signed by a trusted key: now (only now) read what it says.
    let not_a_payload = |why: &str| Distrust::NotAPayload {
        key: key.clone(),
        why: why.to_owned(),
    };
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|_| not_a_payload("is not JSON"))?;
    let critical = &value["critical"];
    if critical["type"].as_str() != Some(PAYLOAD_TYPE) {
        return Err(not_a_payload(&format!(
            "is not a cosign simple-signing payload (critical.type is not \"{PAYLOAD_TYPE}\")"
        )));
    }
    let signed = critical["image"]["docker-manifest-digest"]
        .as_str()
        .ok_or_else(|| not_a_payload("names no critical.image.docker-manifest-digest"))?;
    if signed != digest.as_str() {
        return Err(Distrust::OtherDigest {
            key,
            signed: signed.chars().take(80).collect(),
        });
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer as _;

    fn digest(c: char) -> Digest {
        Digest::sha256(&c.to_string().repeat(64)).unwrap()
    }

    fn payload(d: &Digest) -> Vec<u8> {
        format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"r.io/a/b"}},"image":{{"docker-manifest-digest":"{d}"}},"type":"{PAYLOAD_TYPE}"}},"optional":null}}"#
        )
        .into_bytes()
    }

    fn key(seed: u8) -> (p256::ecdsa::SigningKey, TrustedKey) {
        let sk = p256::ecdsa::SigningKey::from_bytes(&[seed; 32].into()).unwrap();
        let key = *sk.verifying_key();
        let fingerprint = key_fingerprint(key.to_encoded_point(false).as_bytes());
        (sk, TrustedKey { key, fingerprint })
    }

    fn sign(sk: &p256::ecdsa::SigningKey, payload: &[u8]) -> Vec<u8> {
        let s: p256::ecdsa::Signature = sk.sign(payload);
        s.to_der().as_bytes().to_vec()
    }

    #[test]
    fn a_signature_by_a_policy_key_over_the_digest_passes() {
        let (sk, vk) = key(7);
        let d = digest('a');
        let p = payload(&d);
        let got = check_signature(&p, &sign(&sk, &p), std::slice::from_ref(&vk), &d, "r.io");
        assert_eq!(got, Ok(vk.fingerprint.clone()));
    }

    #[test]
    fn each_way_of_failing_has_its_reason() {
        let (sk, vk) = key(7);
        let (other, _) = key(8);
        let d = digest('a');
        let p = payload(&d);
        let keys = std::slice::from_ref(&vk);
        // Another key.
        let r = check_signature(&p, &sign(&other, &p), keys, &d, "r.io");
        assert!(matches!(r, Err(Distrust::UnknownKey { .. })), "{r:?}");
        // A tampered payload.
        let mut tampered = p.clone();
        tampered[20] ^= 1;
        let r = check_signature(&tampered, &sign(&sk, &p), keys, &d, "r.io");
        assert!(matches!(r, Err(Distrust::UnknownKey { .. })), "{r:?}");
        // A signature over another digest.
        let o = payload(&digest('b'));
        let r = check_signature(&o, &sign(&sk, &o), keys, &d, "r.io");
        assert!(
            matches!(&r, Err(Distrust::OtherDigest { signed, .. }) if signed == digest('b').as_str()),
            "{r:?}"
        );
        let sentence = r.unwrap_err().sentence(&d);
        assert!(sentence.contains("is for digest sha256:bbbb"), "{sentence}");
        // A signed payload that is not JSON, or not cosign's.
        let r = check_signature(b"\x00\xff", &sign(&sk, b"\x00\xff"), keys, &d, "r.io");
        assert!(
            matches!(&r, Err(Distrust::NotAPayload { why, .. }) if why == "is not JSON"),
            "{r:?}"
        );
        let r = check_signature(b"{}", &sign(&sk, b"{}"), keys, &d, "r.io");
        assert!(matches!(r, Err(Distrust::NotAPayload { .. })), "{r:?}");
        // A signature that is not DER.
        let r = check_signature(&p, b"garbage", keys, &d, "r.io");
        assert!(matches!(r, Err(Distrust::UnknownKey { .. })), "{r:?}");
    }

    #[test]
    fn signature_manifests_are_read_with_limits() {
        let layer = |sig: &str| {
            serde_json::json!({
                "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                "digest": digest('c').to_string(), "size": 10,
                "annotations": {SIGNATURE_ANNOTATION: sig}
            })
        };
        let m = |layers: Vec<serde_json::Value>| {
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "layers": layers})).unwrap()
        };
        let read = parse_signature_manifest(&m(vec![layer("AAAA"), layer("!!")])).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].signature, Ok(vec![0, 0, 0]));
        assert_eq!(read[1].signature, Err("is not base64"));
        let long = "A".repeat(2000);
        assert!(
            parse_signature_manifest(&m(vec![layer(&long)])).unwrap()[0]
                .signature
                .is_err()
        );
        let many = m((0..40).map(|_| layer("AAAA")).collect());
        assert!(matches!(
            parse_signature_manifest(&many),
            Err(Distrust::Malformed(_))
        ));
        for bad in [&b"not json"[..], b"[]", b"{\"layers\": 3}", b""] {
            assert!(
                matches!(parse_signature_manifest(bad), Err(Distrust::Malformed(_))),
                "{bad:?}"
            );
        }
        // Layers without the annotation are not signatures.
        let none = m(vec![
            serde_json::json!({"mediaType": "x", "digest": digest('c').to_string(), "size": 1}),
        ]);
        assert!(parse_signature_manifest(&none).unwrap().is_empty());
    }

    proptest::proptest! {
        /// Whatever a registry answers as a signature manifest, a payload or
        /// a signature: a reason, never a panic.
        #[test]
        fn hostile_signature_bytes_never_panic(
            manifest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024),
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            signature in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128),
        ) {
            let _ = parse_signature_manifest(&manifest);
            let (_, vk) = key(3);
            let d = digest('a');
            proptest::prop_assert!(check_signature(&payload, &signature, std::slice::from_ref(&vk), &d, "*").is_err());
        }
    }

    #[test]
    fn a_key_off_the_curve_is_refused_with_a_sentence() {
        // A well-formed SPKI whose point is not on P-256.
        let mut der = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
        ];
        der.extend([1u8; 64]);
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        let policy = ImagePolicy {
            require_digests: false,
            signatures: vec![contract::image_policy::SignatureRule {
                scope: "*".into(),
                keys: vec![pem],
            }],
        };
        let err = SignaturePolicy::new(&policy).unwrap_err();
        assert_eq!(err.category, Category::Config);
        assert!(
            err.message
                .contains("key 1 is not a point of the P-256 curve"),
            "{}",
            err.message
        );
    }
}
