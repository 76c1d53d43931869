//! Cosign signatures made by test code, in cosign's own format, pushed to a
//! real registry where cosign puts them.
//!
//! A [`CosignKey`] is an ECDSA P-256 key (RustCrypto's `p256`, as
//! `cosign generate-key-pair` makes them); [`payload`] is cosign's
//! simple-signing JSON; [`CosignKey::sign`] is the DER signature over the
//! payload's bytes (SHA-256), as cosign stores it base64 in the
//! `dev.cosignproject.cosign/signature` annotation; [`push_signatures`]
//! pushes the payloads and a manifest with one layer per signature to the
//! tag `sha256-<hex>.sig` of the image's repository, over the distribution
//! API (with `curl`, credentials in a config file, never in arguments).
//! [`verify_with_python`] checks a signature independently with Python's
//! `cryptography` (the project's venv, installed by `scripts/deps.sh`).

use crate::registry::Registry;
use crate::util::sha256_digest;
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use sha2::Digest as _;
use std::path::Path;
use std::process::Command;

/// The layer media type of a cosign signature.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation holding a layer's signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// An ECDSA P-256 signing key.
pub struct CosignKey(p256::ecdsa::SigningKey);

impl CosignKey {
    /// A key derived from `seed` (the same seed, the same key).
    pub fn from_seed(seed: &str) -> Self {
        let mut counter = 0u32;
        loop {
            let mut h = sha2::Sha256::new();
            h.update(b"berth-testkit-cosign\0");
            h.update(seed.as_bytes());
            h.update(counter.to_be_bytes());
            let bytes: [u8; 32] = h.finalize().into();
            if let Ok(k) = p256::ecdsa::SigningKey::from_bytes(&bytes.into()) {
                return CosignKey(k);
            }
            counter += 1;
        }
    }

    /// The public key as `cosign.pub` holds it: PEM `PUBLIC KEY`
    /// (SubjectPublicKeyInfo, uncompressed point).
    pub fn public_pem(&self) -> String {
        const SPKI_P256: [u8; 26] = [
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        let mut der = SPKI_P256.to_vec();
        der.extend_from_slice(self.0.verifying_key().to_encoded_point(false).as_bytes());
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("ascii"));
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }

    /// The ASN.1 DER ECDSA signature (SHA-256) over `payload`.
    pub fn sign(&self, payload: &[u8]) -> Vec<u8> {
        let s: p256::ecdsa::Signature = self.0.sign(payload);
        s.to_der().as_bytes().to_vec()
    }
}

/// Cosign's simple-signing payload for `docker_reference` (`host/repo`)
/// at `digest` (`sha256:…`), byte for byte as cosign writes it.
pub fn payload(docker_reference: &str, digest: &str) -> Vec<u8> {
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{docker_reference}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
    )
    .into_bytes()
}

/// One signature layer: the payload and its DER signature.
#[derive(Clone, Debug)]
pub struct Signature {
    /// The simple-signing payload (the layer's blob).
    pub payload: Vec<u8>,
    /// The DER signature (base64 in the annotation).
    pub signature: Vec<u8>,
}

impl Signature {
    /// `key`'s signature of `payload`.
    pub fn by(key: &CosignKey, payload: Vec<u8>) -> Self {
        let signature = key.sign(&payload);
        Signature { payload, signature }
    }
}

/// The tag cosign stores the signatures of `digest` under.
pub fn signature_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1) + ".sig"
}

/// The signature manifest of `signatures` (OCI, one layer each, cosign's
/// media types and annotation) and its config blob.
pub fn signature_manifest(signatures: &[Signature]) -> (Vec<u8>, Vec<u8>) {
    let config = br#"{"architecture":"","config":{},"created":"0001-01-01T00:00:00Z","history":[{"created":"0001-01-01T00:00:00Z"}],"os":"","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
    let layers: Vec<serde_json::Value> = signatures
        .iter()
        .map(|s| {
            serde_json::json!({
                "mediaType": SIMPLE_SIGNING,
                "size": s.payload.len(),
                "digest": sha256_digest(&s.payload),
                "annotations": {
                    SIGNATURE_ANNOTATION: base64::engine::general_purpose::STANDARD.encode(&s.signature)
                }
            })
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "size": config.len(),
            "digest": sha256_digest(&config),
        },
        "layers": layers,
    }))
    .expect("json");
    (manifest, config)
}

/// Pushes `signatures` of `repo@digest` to `repo:sha256-<hex>.sig` on
/// `registry` (with its first user's credentials, if it has users).
/// Returns the signature manifest's digest.
pub fn push_signatures(
    registry: &Registry,
    repo: &str,
    digest: &str,
    signatures: &[Signature],
) -> String {
    let (manifest, config) = signature_manifest(signatures);
    push_blob(registry, repo, &config);
    for s in signatures {
        push_blob(registry, repo, &s.payload);
    }
    push_manifest(
        registry,
        repo,
        &signature_tag(digest),
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
    );
    sha256_digest(&manifest)
}

/// Uploads `bytes` as a blob of `repo` (POST, then PUT with the digest).
pub fn push_blob(registry: &Registry, repo: &str, bytes: &[u8]) {
    let work = crate::workdir("cosign-blob");
    let data = work.path().join("blob");
    std::fs::write(&data, bytes).expect("write blob");
    let (code, headers) = curl(
        registry,
        work.path(),
        &[
            "-X",
            "POST",
            &format!("{}/v2/{repo}/blobs/uploads/", registry.base_url()),
        ],
    );
    assert_eq!(code, "202", "testkit: blob upload start answered {code}");
    let location = headers
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("location")
                .then(|| value.trim().to_owned())
        })
        .expect("a Location header");
    let location = if location.starts_with('/') {
        format!("{}{location}", registry.base_url())
    } else {
        location
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let url = format!("{location}{sep}digest={}", sha256_digest(bytes));
    let (code, _) = curl(
        registry,
        work.path(),
        &[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", data.display()),
            &url,
        ],
    );
    assert_eq!(code, "201", "testkit: blob upload answered {code}");
}

/// Puts `bytes` as the manifest `repo:tag` of type `media_type`.
pub fn push_manifest(registry: &Registry, repo: &str, tag: &str, media_type: &str, bytes: &[u8]) {
    let work = crate::workdir("cosign-manifest");
    let data = work.path().join("manifest");
    std::fs::write(&data, bytes).expect("write manifest");
    let (code, _) = curl(
        registry,
        work.path(),
        &[
            "-X",
            "PUT",
            "-H",
            &format!("Content-Type: {media_type}"),
            "--data-binary",
            &format!("@{}", data.display()),
            &format!("{}/v2/{repo}/manifests/{tag}", registry.base_url()),
        ],
    );
    assert_eq!(
        code, "201",
        "testkit: manifest PUT of {repo}:{tag} answered {code}"
    );
}

/// Runs curl with `args` against `registry`: the status code and the
/// response headers. Credentials go in a config file in `work`.
fn curl(registry: &Registry, work: &Path, args: &[&str]) -> (String, String) {
    let headers = work.join("headers");
    let config = work.join("curl.cfg");
    let mut cfg = String::from("silent\ninsecure\n");
    if let Some((user, password)) = registry.users().first() {
        cfg.push_str(&format!("user = \"{user}:{password}\"\n"));
    }
    std::fs::write(&config, cfg).expect("write curl config");
    let out = Command::new("curl")
        .arg("-K")
        .arg(&config)
        .arg("-o")
        .arg("/dev/null")
        .arg("-D")
        .arg(&headers)
        .arg("-w")
        .arg("%{http_code}")
        .args(args)
        .output()
        .expect("run curl");
    let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (code, std::fs::read_to_string(&headers).unwrap_or_default())
}

/// Whether Python's `cryptography` (the project venv) verifies `signature`
/// (DER) over `payload` under the PEM `public_key`: an implementation
/// independent of the one under test.
pub fn verify_with_python(public_key: &str, payload: &[u8], signature: &[u8]) -> bool {
    let python = crate::repo_root().join(".deps/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make test` (scripts/deps.sh makes the venv with cryptography)",
        python.display()
    );
    let work = crate::workdir("cosign-python");
    let (k, p, s) = (
        work.path().join("key.pem"),
        work.path().join("payload"),
        work.path().join("sig"),
    );
    std::fs::write(&k, public_key).unwrap();
    std::fs::write(&p, payload).unwrap();
    std::fs::write(&s, signature).unwrap();
    let script = r#"
import sys
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
key = serialization.load_pem_public_key(open(sys.argv[1], "rb").read())
assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
try:
    key.verify(open(sys.argv[3], "rb").read(), open(sys.argv[2], "rb").read(), ec.ECDSA(hashes.SHA256()))
    print("valid")
except InvalidSignature:
    print("invalid")
"#;
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(&k)
        .arg(&p)
        .arg(&s)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.trim() == "valid"
}
