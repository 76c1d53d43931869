//! The signature stage of a [`Puller`]: the image policy's cosign
//! signature of an image's digest, fetched (capped) and verified
//! ([`crate::cosign`]) before the image's manifest and blobs.

use super::Puller;
use crate::client::{Expect, RegistryClient};
use crate::cosign::{
    Distrust, PAYLOAD, SIGNATURE_MANIFEST, Verified, check_signature, parse_signature_manifest,
    signature_tag, untrusted,
};
use crate::error::{Category, PullError};
use crate::manifest::Descriptor;
use crate::reference::{Digest, ImageReference};
use crate::retry::Budget;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};

impl Puller {
    /// Checks `reference` (resolved to `digest`) against the image policy:
    /// `Ok(None)` when no signature is required, `Ok(Some(_))` naming the
    /// key that signed it, else an [`Category::UntrustedImage`] failure.
    /// Runs before the image's manifest GET and before any of its blobs.
    pub(crate) async fn verify_signature(
        &self,
        client: &RegistryClient,
        reference: &ImageReference,
        digest: &Digest,
    ) -> Result<Option<Verified>, PullError> {
        let Some(policy) = &self.opts.signatures else {
            return Ok(None);
        };
        let Some((scope, keys)) = policy.rule_for(reference) else {
            return Ok(None);
        };
        let image = format!("{}/{}", reference.registry(), reference.repository());
        let tag = signature_tag(digest);
        let Some(bytes) = self.signature_manifest(client, reference, &tag).await? else {
            return Err(untrusted(&image, digest, &Distrust::NoSignature { tag }));
        };
        let layers =
            parse_signature_manifest(&bytes).map_err(|why| untrusted(&image, digest, &why))?;
        if layers.is_empty() {
            return Err(untrusted(&image, digest, &Distrust::NoSignature { tag }));
        }
        let mut worst: Option<Distrust> = None;
        let signatures = layers.len();
        for layer in layers {
            let outcome = match &layer.signature {
                Err(why) => Err(Distrust::Malformed(format!("annotation {why}"))),
                Ok(der) => match self.payload(client, reference, &layer.payload).await? {
                    Err(why) => Err(why),
                    Ok(payload) => check_signature(&payload, der, keys, digest, scope),
                },
            };
            match outcome {
                Ok(key) => {
                    return Ok(Some(Verified {
                        scope: scope.to_owned(),
                        key,
                    }));
                }
                Err(why) => {
                    if worst.as_ref().is_none_or(|w| why.rank() > w.rank()) {
                        worst = Some(why);
                    }
                }
            }
        }
        let why = match worst {
            Some(Distrust::UnknownKey { scope, .. }) => Distrust::UnknownKey { signatures, scope },
            Some(w) => w,
            None => Distrust::NoSignature { tag },
        };
        Err(untrusted(&image, digest, &why))
    }

    /// The signature manifest under `tag`, capped; `None` when the
    /// repository has no such tag.
    async fn signature_manifest(
        &self,
        client: &RegistryClient,
        reference: &ImageReference,
        tag: &str,
    ) -> Result<Option<Vec<u8>>, PullError> {
        let repo = reference.repository();
        let mut accept = HeaderMap::new();
        accept.insert(
            header::ACCEPT,
            HeaderValue::from_static(
                "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
            ),
        );
        let resp = client
            .send(
                Method::GET,
                &format!("/v2/{repo}/manifests/{tag}"),
                repo,
                accept,
                Expect::Manifest,
                &Budget::new(self.opts.retry),
            )
            .await?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => return Ok(None),
            s => {
                return Err(PullError::new(
                    Category::RegistryError,
                    format!(
                        "{} answered {s} to the request for the signatures of {reference} (tag {tag})",
                        client.registry
                    ),
                ));
            }
        }
        let cap = SIGNATURE_MANIFEST.within(self.opts.retry.budget);
        match crate::body::read_capped(resp, cap).await {
            Ok(mut b) => Ok(Some(std::mem::take(&mut *b))),
            Err(crate::body::BodyError::TooLarge(len)) => Err(PullError::new(
                Category::UntrustedImage,
                format!(
                    "{reference} is untrusted: its signature manifest (tag {tag}) is larger than the {} Berth reads (at least {len} bytes)",
                    crate::body::human_bytes(SIGNATURE_MANIFEST.bytes)
                ),
            )),
            Err(e) => Err(PullError::new(
                Category::Unreachable,
                format!(
                    "cannot read the signatures of {reference} from {}: {}",
                    client.registry,
                    e.reason(cap)
                ),
            )),
        }
    }

    /// A signature payload, capped and checked against its descriptor (an
    /// `Err(Distrust)` for a payload that is too big or does not match).
    async fn payload(
        &self,
        client: &RegistryClient,
        reference: &ImageReference,
        d: &Descriptor,
    ) -> Result<Result<Vec<u8>, Distrust>, PullError> {
        if d.size > PAYLOAD.bytes {
            return Ok(Err(Distrust::Malformed(format!(
                "payload is declared {} bytes, more than the {} Berth reads",
                d.size,
                crate::body::human_bytes(PAYLOAD.bytes)
            ))));
        }
        let repo = reference.repository();
        let resp = client
            .send(
                Method::GET,
                &format!("/v2/{repo}/blobs/{}", d.digest),
                repo,
                HeaderMap::new(),
                Expect::Blob,
                &Budget::new(self.opts.retry),
            )
            .await?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => {
                return Ok(Err(Distrust::Malformed(format!(
                    "payload {} is missing from the repository",
                    d.digest
                ))));
            }
            s => {
                return Err(PullError::new(
                    Category::RegistryError,
                    format!(
                        "{} answered {s} to the request for a signature payload of {reference}",
                        client.registry
                    ),
                ));
            }
        }
        let cap = PAYLOAD.within(self.opts.retry.budget);
        let bytes = match crate::body::read_capped(resp, cap).await {
            Ok(mut b) => std::mem::take(&mut *b),
            Err(crate::body::BodyError::TooLarge(len)) => {
                return Ok(Err(Distrust::Malformed(format!(
                    "payload is larger than the {} Berth reads (at least {len} bytes)",
                    crate::body::human_bytes(PAYLOAD.bytes)
                ))));
            }
            Err(e) => {
                return Err(PullError::new(
                    Category::Unreachable,
                    format!(
                        "cannot read a signature payload of {reference} from {}: {}",
                        client.registry,
                        e.reason(cap)
                    ),
                ));
            }
        };
        if bytes.len() as u64 != d.size || !crate::store::verify(&d.digest, &bytes) {
            return Ok(Err(Distrust::Malformed(format!(
                "payload does not match its digest {}",
                d.digest
            ))));
        }
        Ok(Ok(bytes))
    }
}
