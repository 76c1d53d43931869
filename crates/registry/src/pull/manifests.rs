//! The manifest stage of a [`Puller`]: `HEAD` first, `GET` only what the
//! store lacks, every manifest verified against its digest.

use super::Puller;
use crate::client::{Expect, RegistryClient, error_codes};
use crate::error::{Category, PullError};
use crate::manifest;
use crate::reference::{Digest, ImageReference};
use crate::retry::Budget;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};

impl Puller {
    pub(super) async fn head(
        &self,
        client: &RegistryClient,
        reference: &ImageReference,
        what: &str,
    ) -> Result<reqwest::Response, PullError> {
        let repo = reference.repository();
        let resp = client
            .send(
                Method::HEAD,
                &format!("/v2/{repo}/manifests/{what}"),
                repo,
                accept_manifests(),
                Expect::Manifest,
                &Budget::new(self.opts.retry),
            )
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(resp),
            StatusCode::NOT_FOUND => Err(not_found(reference, &client.registry)),
            s => Err(PullError::new(
                Category::RegistryError,
                format!(
                    "{} answered {s} to a manifest request for {reference}",
                    client.registry
                ),
            )),
        }
    }

    /// The tag's digest from a HEAD, or `None` if the registry does not say.
    pub(super) async fn head_digest(
        &self,
        client: &RegistryClient,
        reference: &ImageReference,
    ) -> Result<Option<Digest>, PullError> {
        let resp = self
            .head(client, reference, reference.reference_for_manifest())
            .await?;
        if let Some(len) = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            && len > manifest::MAX_MANIFEST_BYTES
        {
            return Err(too_big(&reference.to_string(), len));
        }
        header_digest(resp.headers(), &reference.to_string())
    }

    /// A manifest's bytes: from the store when `digest` is known and present,
    /// else one GET, verified against the digest.
    pub(super) async fn manifest_bytes(
        &self,
        client: &RegistryClient,
        reference: &ImageReference,
        digest: Option<Digest>,
    ) -> Result<(Digest, Vec<u8>, bool), PullError> {
        let image = reference.to_string();
        if let Some(d) = &digest
            && let Some(bytes) = self.store.read_blob(d)?
        {
            return Ok((d.clone(), bytes, true));
        }
        let repo = reference.repository();
        let what = match &digest {
            Some(d) => d.to_string(),
            None => reference.reference_for_manifest().to_owned(),
        };
        let resp = client
            .send(
                Method::GET,
                &format!("/v2/{repo}/manifests/{what}"),
                repo,
                accept_manifests(),
                Expect::Manifest,
                &Budget::new(self.opts.retry),
            )
            .await?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => return Err(not_found(reference, &client.registry)),
            s => {
                let body = error_codes(resp).await;
                return Err(PullError::new(
                    Category::RegistryError,
                    format!(
                        "{} answered {} to a manifest request for {image}",
                        client.registry,
                        body.summary(s.as_str())
                    ),
                ));
            }
        }
        let header_dig = header_digest(resp.headers(), &image)?;
        let cap = crate::body::MANIFEST.within(self.opts.retry.budget);
        let bytes = match crate::body::read_capped(resp, cap).await {
            Ok(mut b) => std::mem::take(&mut *b),
            Err(crate::body::BodyError::TooLarge(len)) => return Err(too_big(&image, len)),
            Err(e) => {
                return Err(PullError::new(
                    Category::Unreachable,
                    format!(
                        "cannot read the manifest of {image} from {}: {}",
                        client.registry,
                        e.reason(cap)
                    ),
                ));
            }
        };
        // Asked by digest: the bytes must hash to it (this is also how a
        // digest pinned in the reference is enforced). Asked by tag: to the
        // digest the registry announced, or else to their own sha256.
        let expected = digest
            .or(header_dig)
            .unwrap_or_else(|| crate::store::sha256_digest(&bytes));
        if !crate::store::verify(&expected, &bytes) {
            let got = crate::store::sha256_digest(&bytes);
            return Err(PullError::new(
                Category::Integrity,
                format!(
                    "{} answered a manifest of digest {got} for {image}, not the digest {expected} it was asked for",
                    client.registry
                ),
            ));
        }
        self.store.put_blob(&expected, &bytes)?;
        Ok((expected, bytes, false))
    }
}

fn accept_manifests() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::ACCEPT, HeaderValue::from_static(manifest::ACCEPT));
    h
}

pub(super) fn media_type_of(bytes: &[u8], fallback: &str) -> String {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct M {
        media_type: Option<String>,
    }
    serde_json::from_slice::<M>(bytes)
        .ok()
        .and_then(|m| m.media_type)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| {
            if fallback.is_empty() {
                manifest::OCI_MANIFEST.to_owned()
            } else {
                fallback.to_owned()
            }
        })
}

pub(super) fn header_digest(headers: &HeaderMap, image: &str) -> Result<Option<Digest>, PullError> {
    match headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
    {
        None => Ok(None),
        Some(v) => v.parse::<Digest>().map(Some).map_err(|_| {
            PullError::new(
                Category::RegistryError,
                format!("the registry sent an invalid Docker-Content-Digest for {image}"),
            )
        }),
    }
}

fn not_found(reference: &ImageReference, registry: &str) -> PullError {
    let what = match (reference.tag(), reference.digest()) {
        (_, Some(d)) => format!("digest {d}"),
        (Some(t), None) => format!("tag {t}"),
        (None, None) => "the image".into(),
    };
    PullError::new(
        Category::NotFound,
        format!(
            "{reference} was not found: {registry} has no {what} in repository {}",
            reference.repository()
        ),
    )
    .hint("check the image path and tag (a typo, or an image that was never pushed or was deleted)")
}

pub(super) fn digest_mismatch(image: &str, want: &Digest, got: &Digest) -> PullError {
    PullError::new(
        Category::Integrity,
        format!("{image} resolved to {got}, not the digest {want} the reference pins"),
    )
}

/// A manifest over the cap: `len` bytes declared, or at least `len` seen
/// when reading stopped.
fn too_big(image: &str, len: u64) -> PullError {
    PullError::new(
        Category::RegistryError,
        format!(
            "the manifest of {image} is larger than the {} Berth accepts (at least {len} bytes); \
             Berth stopped reading it",
            crate::body::human_bytes(manifest::MAX_MANIFEST_BYTES)
        ),
    )
}
