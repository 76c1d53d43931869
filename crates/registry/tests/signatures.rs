//! The image policy's cosign signatures (issue 20, parts 3–5), against
//! Debian's `docker-registry` with signatures made by test code in cosign's
//! format (and checked independently with Python's `cryptography`), and
//! against a hostile registry for what a real one refuses to store.
//!
//! Each failure is `untrusted_image` with a sentence naming the image and
//! why, and leaves nothing of the image in the store: the signature is
//! checked before the image's manifest and blobs are fetched.

mod common;

use common::{options, runtime};
use contract::image_policy::{ImagePolicy, SignatureRule};
use registry::cosign::SignaturePolicy;
use registry::{Category, ImageReference, PullError, PulledImage, Puller, no_events};
use std::path::Path;
use std::time::Duration;
use testkit::cosign::{CosignKey, Signature, payload, push_signatures, verify_with_python};
use testkit::images::{ImageSpec, PushTarget, PushedImage, push_image};
use testkit::{BlobAnswer, HostileRegistry, Registry};

fn policy(scope: &str, keys: &[&CosignKey]) -> ImagePolicy {
    ImagePolicy {
        require_digests: false,
        signatures: vec![SignatureRule {
            scope: scope.to_owned(),
            keys: keys.iter().map(|k| k.public_pem()).collect(),
        }],
    }
}

fn pull_with(
    policy: &ImagePolicy,
    store: &Path,
    reference: &str,
) -> Result<PulledImage, PullError> {
    let mut opts = options(store, Duration::from_secs(10));
    opts.signatures = Some(SignaturePolicy::new(policy).unwrap());
    let reference: ImageReference = reference.parse().unwrap();
    runtime().block_on(async {
        let puller = Puller::new(opts, no_events())?;
        puller.pull(&reference).await
    })
}

/// Nothing of `image` in the store: no manifest, config or layer blob.
fn assert_nothing_stored(store: &Path, image: &PushedImage) {
    let blobs = store.join("blobs/sha256");
    let mut digests = vec![image.digest.clone(), image.image.config.digest.clone()];
    digests.extend(image.image.layers.iter().map(|l| l.digest.clone()));
    for d in digests {
        let path = blobs.join(d.trim_start_matches("sha256:"));
        assert!(!path.exists(), "{d} of an untrusted image is in the store");
    }
}

struct Signed {
    registry: Registry,
    image: PushedImage,
    name: String,
}

fn pushed(tag: &str, seed: u64) -> Signed {
    let registry = Registry::start();
    let target = PushTarget::new(&registry.host_port());
    let image = push_image(
        &target,
        "acme/web",
        tag,
        &ImageSpec::new().seeded_layer(2048, seed),
    );
    let name = format!("{}/acme/web", registry.host_port());
    Signed {
        registry,
        image,
        name,
    }
}

#[test]
fn a_signed_image_pulls_and_python_agrees_with_the_signature() {
    let key = CosignKey::from_seed("owner");
    let s = pushed("v1", 1);
    let sig = Signature::by(&key, payload(&s.name, &s.image.digest));
    assert!(verify_with_python(
        &key.public_pem(),
        &sig.payload,
        &sig.signature
    ));
    // An unrelated signature layer first: the one that verifies wins.
    let stranger = Signature::by(&CosignKey::from_seed("stranger"), sig.payload.clone());
    push_signatures(&s.registry, "acme/web", &s.image.digest, &[stranger, sig]);
    let store = testkit::tempdir("signed-pull");
    let p = policy(&s.registry.host_port(), &[&key]);
    // Pinned, and by tag (resolved by HEAD, then verified).
    for reference in [
        format!("{}:v1@{}", s.name, s.image.digest),
        format!("{}:v1", s.name),
    ] {
        let pulled = pull_with(&p, &store, &reference).unwrap();
        assert_eq!(pulled.digest.to_string(), s.image.digest);
        let by = pulled.signed_by.expect("verified");
        assert_eq!(by.scope, s.registry.host_port());
        assert!(by.key.starts_with("sha256:"), "{}", by.key);
    }
    // An image no scope covers needs no signature.
    let other = policy("ghcr.io/acme", &[&key]);
    let pulled = pull_with(
        &other,
        &testkit::tempdir("signed-pull-other"),
        &format!("{}:v1", s.name),
    )
    .unwrap();
    assert_eq!(pulled.signed_by, None);
}

fn assert_untrusted(err: &PullError, name: &str, digest: &str, why: &str) {
    assert_eq!(err.category, Category::UntrustedImage, "{}", err.message);
    assert!(
        err.message
            .starts_with(&format!("{name}@{digest} is untrusted: ")),
        "{}",
        err.message
    );
    assert!(err.message.contains(why), "{}", err.message);
}

#[test]
fn an_unsigned_image_is_untrusted_and_nothing_of_it_is_stored() {
    let key = CosignKey::from_seed("owner");
    let s = pushed("v1", 2);
    let store = testkit::tempdir("unsigned");
    let err = pull_with(
        &policy(&s.registry.host_port(), &[&key]),
        &store,
        &format!("{}:v1@{}", s.name, s.image.digest),
    )
    .unwrap_err();
    assert_untrusted(
        &err,
        &s.name,
        &s.image.digest,
        "has no cosign signature (no signature layer under the tag sha256-",
    );
    assert_nothing_stored(&store, &s.image);
}

#[test]
fn a_signature_by_another_key_is_untrusted() {
    let key = CosignKey::from_seed("owner");
    let other = CosignKey::from_seed("someone else");
    let s = pushed("v1", 3);
    let sig = Signature::by(&other, payload(&s.name, &s.image.digest));
    // Python agrees: valid under the signer's key, not under the policy's.
    assert!(verify_with_python(
        &other.public_pem(),
        &sig.payload,
        &sig.signature
    ));
    assert!(!verify_with_python(
        &key.public_pem(),
        &sig.payload,
        &sig.signature
    ));
    push_signatures(&s.registry, "acme/web", &s.image.digest, &[sig]);
    let store = testkit::tempdir("other-key");
    let err = pull_with(
        &policy(&s.registry.host_port(), &[&key]),
        &store,
        &format!("{}:v1@{}", s.name, s.image.digest),
    )
    .unwrap_err();
    assert_untrusted(
        &err,
        &s.name,
        &s.image.digest,
        "its signature verifies under none of the keys the app's image policy names",
    );
    assert_nothing_stored(&store, &s.image);
}

#[test]
fn a_signature_for_another_digest_is_untrusted() {
    let key = CosignKey::from_seed("owner");
    let s = pushed("v1", 4);
    // The owner signed another image (v0); its signature is copied under
    // v1's signature tag.
    let elsewhere = "sha256:".to_owned() + &"ab".repeat(32);
    let sig = Signature::by(&key, payload(&s.name, &elsewhere));
    assert!(verify_with_python(
        &key.public_pem(),
        &sig.payload,
        &sig.signature
    ));
    push_signatures(&s.registry, "acme/web", &s.image.digest, &[sig]);
    let store = testkit::tempdir("other-digest");
    let err = pull_with(
        &policy(&s.registry.host_port(), &[&key]),
        &store,
        &format!("{}:v1@{}", s.name, s.image.digest),
    )
    .unwrap_err();
    assert_untrusted(
        &err,
        &s.name,
        &s.image.digest,
        &format!(
            "is for digest {elsewhere}, not for the pinned digest {}",
            s.image.digest
        ),
    );
    assert_nothing_stored(&store, &s.image);
}

#[test]
fn a_tampered_payload_is_untrusted() {
    let key = CosignKey::from_seed("owner");
    let s = pushed("v1", 5);
    // Signed for another digest, then the payload edited to name v1's.
    let original = payload(&s.name, &("sha256:".to_owned() + &"cd".repeat(32)));
    let mut sig = Signature::by(&key, original);
    sig.payload = payload(&s.name, &s.image.digest);
    assert!(!verify_with_python(
        &key.public_pem(),
        &sig.payload,
        &sig.signature
    ));
    push_signatures(&s.registry, "acme/web", &s.image.digest, &[sig]);
    let store = testkit::tempdir("tampered");
    let err = pull_with(
        &policy(&format!("{}/acme", s.registry.host_port()), &[&key]),
        &store,
        &format!("{}:v1@{}", s.name, s.image.digest),
    )
    .unwrap_err();
    assert_untrusted(
        &err,
        &s.name,
        &s.image.digest,
        "verifies under none of the keys",
    );
    assert_nothing_stored(&store, &s.image);
}

/// A hostile registry answers every manifest request with `manifest`
/// (the image is pinned, so the signature manifest is the only one asked
/// for before the verdict).
fn hostile_pull(manifest: Vec<u8>, blobs: &[&[u8]]) -> PullError {
    let reg = HostileRegistry::start();
    reg.set_manifest(manifest);
    for b in blobs {
        reg.put_blob(b.to_vec(), BlobAnswer::Whole);
    }
    let key = CosignKey::from_seed("owner");
    let digest = "sha256:".to_owned() + &"ee".repeat(32);
    let store = testkit::tempdir("hostile-signature");
    let err = pull_with(
        &policy("*", &[&key]),
        &store,
        &format!("{}/lib/app@{digest}", reg.host_port()),
    )
    .unwrap_err();
    assert_eq!(err.category, Category::UntrustedImage, "{}", err.message);
    assert!(
        err.message.contains(&format!(
            "{}/lib/app@{digest} is untrusted: ",
            reg.host_port()
        )),
        "{}",
        err.message
    );
    err
}

#[test]
fn a_huge_signature_manifest_is_refused_at_the_cap() {
    let huge = vec![b' '; 5 << 20];
    let err = hostile_pull(huge, &[]);
    assert!(
        err.message.contains("larger than the 256 KiB"),
        "{}",
        err.message
    );
}

#[test]
fn a_malformed_signature_manifest_is_refused() {
    let err = hostile_pull(b"{\"layers\": \"nope\"".to_vec(), &[]);
    assert!(
        err.message
            .contains("manifest is not a valid image manifest"),
        "{}",
        err.message
    );
}

#[test]
fn a_signed_payload_that_is_not_json_is_refused() {
    let key = CosignKey::from_seed("owner");
    let sig = Signature::by(&key, b"\x01 not json".to_vec());
    let (manifest, config) = testkit::cosign::signature_manifest(std::slice::from_ref(&sig));
    let err = hostile_pull(manifest, &[&config, &sig.payload]);
    assert!(err.message.contains("is not JSON"), "{}", err.message);
}

#[test]
fn a_payload_missing_from_the_repository_is_refused() {
    let key = CosignKey::from_seed("owner");
    let sig = Signature::by(&key, b"{}".to_vec());
    let (manifest, _) = testkit::cosign::signature_manifest(std::slice::from_ref(&sig));
    // The manifest names the payload's digest; the registry has no such
    // blob.
    let err = hostile_pull(manifest, &[]);
    assert!(err.message.contains("is missing"), "{}", err.message);
}

#[test]
fn a_payload_that_does_not_match_its_descriptor_is_refused() {
    let key = CosignKey::from_seed("owner");
    let sig = Signature::by(&key, b"{}".to_vec());
    let (manifest, config) = testkit::cosign::signature_manifest(std::slice::from_ref(&sig));
    // The descriptor announces one byte more than the blob the registry
    // serves under its digest.
    let mut manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    manifest["layers"][0]["size"] = (sig.payload.len() + 1).into();
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let err = hostile_pull(manifest, &[&config, &sig.payload]);
    assert!(
        err.message.contains("payload does not match its digest"),
        "{}",
        err.message
    );
}
