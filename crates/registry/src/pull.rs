//! [`Puller`]: pulls images into an [`OciStore`], and checks them.
//!
//! The pull is a pipeline of named stages: resolve the endpoint and login
//! ([`crate::endpoint`], [`crate::credentials`]), resolve the manifest (HEAD
//! first; GET only what the store lacks), select the platform
//! ([`crate::manifest`]), fetch blobs (bounded concurrency, streamed to disk
//! with a running hash, resumed with `Range` after a dropped connection,
//! verified, then renamed into place), and record the reference in the
//! layout's `index.json`.

use crate::auth::Login;
use crate::client::{RegistryClient, RequestCounts};
use crate::credentials::{Credential, CredentialSet};
use crate::docker_config::DockerConfig;
use crate::ecr::EcrTokenSource;
use crate::endpoint::{Endpoint, Endpoints};
use crate::error::{Category, Hint, PullError};
use crate::events::{EventSink, PullEvent};
use crate::manifest::{self, Descriptor, ImageManifest, Manifest, Platform};
use crate::ratelimit::RateLimit;
use crate::reference::{Digest, ImageReference};
use crate::retry::RetryPolicy;
use crate::store::OciStore;
use crate::targets::{GuardedResolver, PrivateTargets, TargetGuard, refused_error};
use crate::transport::Transport;
use reqwest::header;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use url::Url;

mod blobs;
mod manifests;
mod signatures;

pub use blobs::RangedOptions;

use manifests::{digest_mismatch, header_digest, media_type_of};

/// Everything a [`Puller`] needs to know.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// The OCI layout directory images go into.
    pub store: PathBuf,
    /// The platform to select from multi-platform images.
    pub platform: Platform,
    /// Most blob downloads at once.
    pub jobs: usize,
    /// Registry-name to endpoint mappings.
    pub endpoints: Endpoints,
    /// Extra trusted CA certificates (PEM), on top of the system roots.
    pub ca_certs_pem: Vec<Vec<u8>>,
    /// Retry policy for every request.
    pub retry: RetryPolicy,
    /// Logins from the `DSTACK_*` variables.
    pub credentials: CredentialSet,
    /// The Docker client's configuration, consulted for registries that the
    /// `DSTACK_*` variables do not cover (developer machines only).
    pub docker_config: Option<DockerConfig>,
    /// ECR API endpoint override (`AWS_ENDPOINT_URL_ECR` / `AWS_ENDPOINT_URL`).
    pub ecr_endpoint: Option<Url>,
    /// Whether requests may go to loopback and private addresses:
    /// [`PrivateTargets::Allow`] (the default, a developer machine) or
    /// [`PrivateTargets::OnlyMapped`] (inside a CVM: only the `host:port` of
    /// an [`Endpoints`] URL, or of `ecr_endpoint` when
    /// `ecr_endpoint_mapped`).
    pub private_targets: PrivateTargets,
    /// Whether `ecr_endpoint` was given by the operator (sys-config), so
    /// that [`PrivateTargets::OnlyMapped`] lets its `host:port` through even
    /// if it is private. Leave `false` when the override came from the
    /// tenant's env. Default `false`.
    pub ecr_endpoint_mapped: bool,
    /// How big blobs are fetched in `Range` parts, and how many blob
    /// connections one registry sees at most.
    pub ranged: RangedOptions,
    /// The app's image policy with its keys: an image under a scope that
    /// requires a signature is pulled only once a cosign signature by one
    /// of the scope's keys, over its digest, is verified
    /// ([`crate::cosign`]); `None`: no signature is required.
    pub signatures: Option<crate::cosign::SignaturePolicy>,
}

impl PullOptions {
    /// Defaults for the store at `store`: the host platform, 4 jobs, no
    /// credentials, default retries.
    pub fn new(store: impl Into<PathBuf>) -> Self {
        Self {
            store: store.into(),
            platform: Platform::host(),
            jobs: 4,
            endpoints: Endpoints::new(),
            ca_certs_pem: Vec::new(),
            retry: RetryPolicy::default(),
            credentials: CredentialSet::default(),
            docker_config: None,
            ecr_endpoint: None,
            private_targets: PrivateTargets::Allow,
            ecr_endpoint_mapped: false,
            ranged: RangedOptions::default(),
            signatures: None,
        }
    }
}

/// The outcome of pulling one image.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PulledImage {
    /// The full normalised reference.
    pub reference: String,
    /// The digest of the platform's image manifest.
    pub digest: Digest,
    /// The digest of the index it was selected from, for multi-platform images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<Digest>,
    /// The platform, when selected from an index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Number of layers.
    pub layers: usize,
    /// Bytes downloaded by this pull.
    pub bytes_downloaded: u64,
    /// Bytes that were already in the store.
    pub bytes_reused: u64,
    /// Whether every manifest came from the store (no manifest GET).
    pub manifest_cached: bool,
    /// The signature the image policy required, verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<crate::cosign::Verified>,
}

/// The outcome of checking one image (HEAD only).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CheckedImage {
    /// The full normalised reference.
    pub reference: String,
    /// The registry.
    pub registry: String,
    /// The manifest digest the tag points at, when the registry said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// The manifest's media type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// How the registry was accessed: `anonymous` or the credentials' source.
    pub auth: String,
}

/// Pulls images. Cheap to share: one per process or boot.
pub struct Puller {
    opts: PullOptions,
    transport: Transport,
    store: OciStore,
    events: EventSink,
    /// One client per registry, created once (its login may run a
    /// credential helper; no lock is held meanwhile but that registry's).
    clients: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Arc<RegistryClient>>>>>,
    jobs: tokio::sync::Semaphore,
    inflight: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    connections: blobs::Connections,
}

impl Puller {
    /// A puller with `opts`, reporting to `events`.
    pub fn new(opts: PullOptions, events: EventSink) -> Result<Self, PullError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            // HTTP/1.1 only: the ranged parts of a blob must travel on
            // separate connections (a CDN caps each one); HTTP/2 would
            // multiplex them all on one.
            .http1_only()
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")));
        let mapped_ecr = opts
            .ecr_endpoint
            .iter()
            .filter(|_| opts.ecr_endpoint_mapped);
        let guard = Arc::new(TargetGuard::new(
            opts.private_targets,
            opts.endpoints.urls().chain(mapped_ecr),
        ));
        // Always: it refuses private addresses when enforcing, and types
        // the failure to resolve a name.
        builder = builder.dns_resolver(Arc::new(GuardedResolver::new(&guard)));
        for pem in &opts.ca_certs_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|_| {
                PullError::config("a trusted CA certificate given is not a PEM certificate")
                    .hint("give a PEM file with -----BEGIN CERTIFICATE-----")
            })?;
            if certs.is_empty() {
                return Err(PullError::config(
                    "a trusted CA certificate file given holds no PEM certificate",
                )
                .hint("give a PEM file with -----BEGIN CERTIFICATE-----"));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .build()
            .map_err(|_| PullError::config("cannot set up the HTTP client (TLS configuration)"))?;
        let store = OciStore::open(&opts.store)?;
        let jobs = tokio::sync::Semaphore::new(opts.jobs.max(1));
        let connections = blobs::Connections::new(opts.ranged.connections_per_registry);
        Ok(Self {
            opts,
            transport: Transport { http, guard },
            store,
            events,
            clients: Mutex::new(HashMap::new()),
            jobs,
            inflight: Mutex::new(HashMap::new()),
            connections,
        })
    }

    /// The store images are pulled into.
    pub fn store(&self) -> &OciStore {
        &self.store
    }

    /// The last rate limit each registry reported.
    pub async fn rate_limits(&self) -> Vec<(String, RateLimit)> {
        let mut out: Vec<_> = self
            .ready_clients()
            .iter()
            .filter_map(|c| c.rate_limit().map(|rl| (c.registry.clone(), rl)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Requests sent so far, all registries together.
    pub async fn request_counts(&self) -> RequestCounts {
        self.ready_clients()
            .iter()
            .fold(RequestCounts::default(), |mut acc, c| {
                let n = c.counts();
                acc.manifest_heads += n.manifest_heads;
                acc.manifest_gets += n.manifest_gets;
                acc.token_fetches += n.token_fetches;
                acc
            })
    }

    /// Pulls every image concurrently; the first failure (in `refs` order)
    /// is returned if any fails.
    pub async fn pull_all(&self, refs: &[ImageReference]) -> Result<Vec<PulledImage>, PullError> {
        let results = futures_util::future::join_all(refs.iter().map(|r| self.pull(r))).await;
        results.into_iter().collect()
    }

    /// Pulls one image into the store.
    pub async fn pull(&self, reference: &ImageReference) -> Result<PulledImage, PullError> {
        let image = reference.to_string();
        self.pull_inner(reference, &image)
            .await
            .map_err(|e| e.context(reference.registry(), &image))
    }

    async fn pull_inner(
        &self,
        reference: &ImageReference,
        image: &str,
    ) -> Result<PulledImage, PullError> {
        let client = self.client_for(reference).await?;
        let repo = reference.repository();
        let mut all_cached = true;

        // Stage: resolve the top-level manifest (HEAD first).
        let top_digest = match reference.digest() {
            Some(d) => Some(d.clone()),
            None => self.head_digest(&client, reference).await?,
        };
        // Stage: the image policy's signature, before the manifest is
        // fetched and before any blob (so nothing of an untrusted image
        // reaches the store's blobs or, through the hand-off, the engine).
        let mut signed_by = match &top_digest {
            Some(d) => self.verify_signature(&client, reference, d).await?,
            None => None,
        };
        let verified_early = top_digest.is_some();
        let (top_digest, top_bytes, cached) =
            self.manifest_bytes(&client, reference, top_digest).await?;
        if !verified_early {
            // The registry named no digest: the manifest's own.
            signed_by = self
                .verify_signature(&client, reference, &top_digest)
                .await?;
        }
        all_cached &= cached;
        let (manifest_desc, image_manifest, index_digest, platform) =
            match Manifest::parse(&top_bytes, None)? {
                Manifest::Image(m) => (
                    Descriptor {
                        media_type: media_type_of(&top_bytes, manifest::OCI_MANIFEST),
                        digest: top_digest.clone(),
                        size: top_bytes.len() as u64,
                        platform: None,
                    },
                    m,
                    None,
                    None,
                ),
                Manifest::Index(index) => {
                    // Stage: select the platform.
                    let want = &self.opts.platform;
                    let chosen = want.select(&index).cloned().ok_or_else(|| {
                        let have: Vec<String> = index
                            .manifests
                            .iter()
                            .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                            .filter(|p| !p.starts_with("unknown"))
                            .collect();
                        PullError::new(
                            Category::NotFound,
                            format!(
                                "{image} has no image for platform {want} (it has: {})",
                                have.join(", ")
                            ),
                        )
                        .with_hint(Hint::PickPlatform)
                    })?;
                    let (digest, bytes, cached) = self
                        .manifest_bytes(&client, reference, Some(chosen.digest.clone()))
                        .await?;
                    all_cached &= cached;
                    let Manifest::Image(m) = Manifest::parse(&bytes, Some(&chosen.media_type))?
                    else {
                        return Err(PullError::new(
                            Category::RegistryError,
                            format!("{image}: the index entry for {want} is itself an index"),
                        ));
                    };
                    let platform = chosen.platform.clone();
                    (
                        Descriptor {
                            media_type: media_type_of(&bytes, &chosen.media_type),
                            digest,
                            size: bytes.len() as u64,
                            platform: platform.clone(),
                        },
                        m,
                        Some(top_digest.clone()),
                        platform,
                    )
                }
            };
        // Stage: refuse what the engine could not run, before any blob.
        image_manifest.check_layer_count(image)?;
        (self.events)(&PullEvent::Resolved {
            image: image.to_owned(),
            digest: manifest_desc.digest.clone(),
            cached: all_cached,
        });

        // Stage: fetch the config and the layers.
        let ImageManifest { config, layers } = image_manifest;
        let blobs: Vec<Descriptor> = std::iter::once(config)
            .chain(layers.iter().cloned())
            .collect();
        for b in &blobs {
            (self.events)(&PullEvent::BlobQueued {
                image: image.to_owned(),
                digest: b.digest.clone(),
                size: b.size,
                cached: self.store.has_blob(&b.digest, Some(b.size)),
            });
        }
        // Stage: check the disk has room before downloading anything.
        let needed = self
            .store
            .bytes_needed(blobs.iter().map(|b| (&b.digest, b.size)));
        self.store.check_room(needed, blobs.len())?;
        let results = futures_util::future::join_all(
            blobs
                .iter()
                .map(|b| self.fetch_blob(&client, repo, b, needed)),
        )
        .await;
        let mut downloaded = 0;
        let mut reused = 0;
        for r in results {
            let (d, u) = r?;
            downloaded += d;
            reused += u;
        }

        // Stage: record the reference.
        self.store.add_ref(image, &manifest_desc)?;
        (self.events)(&PullEvent::Done {
            image: image.to_owned(),
            digest: manifest_desc.digest.clone(),
        });
        Ok(PulledImage {
            reference: image.to_owned(),
            digest: manifest_desc.digest,
            index_digest,
            platform: platform.map(|p| p.to_string()),
            layers: layers.len(),
            bytes_downloaded: downloaded,
            bytes_reused: reused,
            manifest_cached: all_cached,
            signed_by,
        })
    }

    /// Checks that `reference` can be pulled with the configured credentials,
    /// with HEAD requests only (no Docker Hub pull quota is used).
    pub async fn check(&self, reference: &ImageReference) -> Result<CheckedImage, PullError> {
        let image = reference.to_string();
        let result = async {
            let client = self.client_for(reference).await?;
            let resp = self
                .head(&client, reference, reference.reference_for_manifest())
                .await?;
            let digest = header_digest(resp.headers(), &image)?;
            if let (Some(want), Some(got)) = (reference.digest(), &digest)
                && want != got
            {
                return Err(digest_mismatch(&image, want, got));
            }
            let media_type = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.split(';').next().unwrap_or(s).trim().to_owned());
            Ok(CheckedImage {
                reference: image.clone(),
                registry: reference.registry().to_owned(),
                digest,
                media_type,
                auth: client.auth_description().to_owned(),
            })
        }
        .await;
        result.map_err(|e| e.context(reference.registry(), &image))
    }

    /// The clients created so far.
    fn ready_clients(&self) -> Vec<Arc<RegistryClient>> {
        self.clients
            .lock()
            .unwrap()
            .values()
            .filter_map(|cell| cell.get().cloned())
            .collect()
    }

    /// The client for the reference's registry, created on first use (once:
    /// pulls from the same registry wait for it, others do not).
    async fn client_for(
        &self,
        reference: &ImageReference,
    ) -> Result<Arc<RegistryClient>, PullError> {
        let registry = reference.registry();
        let cell = self
            .clients
            .lock()
            .unwrap()
            .entry(registry.to_owned())
            .or_default()
            .clone();
        cell.get_or_try_init(|| self.new_client(reference))
            .await
            .cloned()
    }

    async fn new_client(
        &self,
        reference: &ImageReference,
    ) -> Result<Arc<RegistryClient>, PullError> {
        let registry = reference.registry().to_owned();
        let endpoint = self
            .opts
            .endpoints
            .endpoint(&registry, reference.api_host());
        let first = match &endpoint {
            Endpoint::Explicit(u) | Endpoint::Https(u) => u,
            Endpoint::HttpsThenHttp { https, .. } => https,
        };
        // Refused before any request (the HTTP fallback has the same host:port).
        self.transport
            .guard
            .check(first)
            .await
            .map_err(|r| refused_error(&registry, "the endpoint", &r))?;
        let base = match endpoint {
            Endpoint::Explicit(u) | Endpoint::Https(u) => u,
            Endpoint::HttpsThenHttp { https, http } => {
                self.transport.probe_https(https, http).await
            }
        };
        let login = match self.opts.credentials.for_registry(&registry) {
            Some(Credential::Docker(d)) => Login::from_docker(
                d,
                "the DSTACK_DOCKER_USERNAME/DSTACK_DOCKER_PASSWORD credentials",
            ),
            Some(Credential::Ecr(e)) => Login::from_ecr(EcrTokenSource::new(
                e.clone(),
                self.opts.ecr_endpoint.clone(),
                self.transport.clone(),
            )),
            None => match &self.opts.docker_config {
                Some(cfg) => match cfg.login_for(&registry).await {
                    Ok(Some(d)) => {
                        Login::from_docker(&d, "the login from the Docker client's config.json")
                    }
                    Ok(None) => Login::Anonymous,
                    Err(e) => {
                        return Err(PullError::config(e.to_string())
                            .registry(&registry)
                            .hint("fix the Docker client's config.json or its credential helper, or set the DSTACK_DOCKER_* variables"));
                    }
                },
                None => Login::Anonymous,
            },
        };
        Ok(Arc::new(RegistryClient::new(
            registry,
            base,
            self.transport.clone(),
            login,
            self.events.clone(),
        )))
    }
}
