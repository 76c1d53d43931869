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
use crate::client::{Expect, RegistryClient, RequestCounts, error_codes};
use crate::credentials::{Credential, CredentialSet};
use crate::docker_config::DockerConfig;
use crate::download::{Answer, BlobDownload, CommitError, Finished, WriteError};
use crate::ecr::EcrTokenSource;
use crate::endpoint::{Endpoint, Endpoints};
use crate::error::{Category, Hint, PullError};
use crate::events::{EventSink, PullEvent, retrying};
use crate::manifest::{self, Descriptor, ImageManifest, Manifest, Platform};
use crate::ratelimit::RateLimit;
use crate::reference::{Digest, ImageReference};
use crate::retry::{Budget, RetryPolicy};
use crate::store::OciStore;
use crate::targets::{GuardedResolver, PrivateTargets, TargetGuard, refused_error};
use crate::transport::{Transport, classify};
use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use url::Url;

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
}

impl Puller {
    /// A puller with `opts`, reporting to `events`.
    pub fn new(opts: PullOptions, events: EventSink) -> Result<Self, PullError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
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
        Ok(Self {
            opts,
            transport: Transport { http, guard },
            store,
            events,
            clients: Mutex::new(HashMap::new()),
            jobs,
            inflight: Mutex::new(HashMap::new()),
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
        let (top_digest, top_bytes, cached) =
            self.manifest_bytes(&client, reference, top_digest).await?;
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

    async fn head(
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
    async fn head_digest(
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
    async fn manifest_bytes(
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
            return Err(PullError::new(
                Category::Integrity,
                format!("the manifest of {image} does not match its digest {expected}"),
            ));
        }
        self.store.put_blob(&expected, &bytes)?;
        Ok((expected, bytes, false))
    }

    /// Downloads one blob into the store unless it is there. Returns
    /// `(bytes downloaded, bytes reused)`. `image_needs` is what the whole
    /// image needs on disk, for the message if the disk fills up.
    ///
    /// The blob loop: one [`Budget`] for the whole download, shared with the
    /// requests it sends; bytes arriving restore it.
    async fn fetch_blob(
        &self,
        client: &RegistryClient,
        repo: &str,
        desc: &Descriptor,
        image_needs: u64,
    ) -> Result<(u64, u64), PullError> {
        let _permit = self.jobs.acquire().await.expect("semaphore never closed");
        let lock = self
            .inflight
            .lock()
            .unwrap()
            .entry(desc.digest.clone())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        if self.store.has_blob(&desc.digest, Some(desc.size)) {
            return Ok((0, desc.size));
        }
        let digest = &desc.digest;
        let size = desc.size;
        let io = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::StorageFull {
                // Something else filled the disk during the download. What
                // was written stays in ingest/ and is resumed next time.
                return self.store.disk_full(image_needs, self.store.free_space());
            }
            PullError::config(format!(
                "cannot write {}: {e}",
                self.store.partial_path(digest).display()
            ))
            .with_hint(Hint::StoreWritable)
        };
        let mut download = BlobDownload::open(&self.store, digest, size).map_err(io)?;
        let resumed_from = download.resumed_from();
        let mut downloaded = 0u64;
        let budget = Budget::new(self.opts.retry);
        let mut integrity_failures = 0;
        let path = format!("/v2/{repo}/blobs/{digest}");
        loop {
            while !download.is_complete() {
                let mut headers = HeaderMap::new();
                if let Some(range) = download.range() {
                    headers.insert(header::RANGE, range);
                }
                let resp = client
                    .send(Method::GET, &path, repo, headers, Expect::Blob, &budget)
                    .await?;
                let status = resp.status();
                if status.is_success() || status == StatusCode::RANGE_NOT_SATISFIABLE {
                    let content_range = resp
                        .headers()
                        .get(header::CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok());
                    match download.accept(status, content_range).map_err(io)? {
                        Ok(Answer::Body | Answer::Restarted) => {}
                        Ok(Answer::AskAgain) => continue,
                        Err(_wrong_range) => {
                            return Err(PullError::new(
                                Category::RegistryError,
                                format!(
                                    "{} answered a resumed download of {digest} with the wrong range",
                                    client.registry
                                ),
                            ));
                        }
                    }
                } else if status == StatusCode::NOT_FOUND {
                    return Err(PullError::new(
                        Category::RegistryError,
                        format!("{} lists blob {digest} in the manifest of {repo} but does not have it (BLOB_UNKNOWN)", client.registry),
                    )
                    .hint("the image in the registry is incomplete: push it again"));
                } else {
                    let body = error_codes(resp).await;
                    return Err(PullError::new(
                        Category::RegistryError,
                        format!(
                            "{} answered {} to the download of blob {digest}",
                            client.registry,
                            body.summary(status.as_str())
                        ),
                    ));
                }
                let dropped = match self
                    .read_body(&mut download, resp, &budget, &mut downloaded)
                    .await
                {
                    Ok(dropped) => dropped,
                    Err(WriteError::Io(e)) => return Err(io(e)),
                    Err(WriteError::TooLarge) => {
                        download.discard();
                        return Err(PullError::new(
                            Category::Integrity,
                            format!(
                                "blob {digest} from {} is larger than the {size} bytes its manifest declares",
                                client.registry
                            ),
                        ));
                    }
                };
                if !download.is_complete() {
                    let reason = dropped.unwrap_or_else(|| "the connection ended early".to_owned());
                    let offset = download.offset();
                    let on_retry = |attempt, delay| {
                        let what = format!("blob {digest} from byte {offset}");
                        retrying(
                            &self.events,
                            &client.registry,
                            what,
                            attempt,
                            delay,
                            &reason,
                        )
                    };
                    if budget.retry(None, on_retry).await.is_err() {
                        download.flush().map_err(io)?;
                        return Err(PullError::new(
                            Category::Unreachable,
                            format!(
                                "the download of blob {digest} from {} kept failing ({reason}); {offset} of {size} bytes are kept for the next attempt",
                                client.registry
                            ),
                        ));
                    }
                }
            }
            // Verify, then commit.
            download = match download.commit(&self.store).await {
                Ok(Finished::Committed) => {
                    (self.events)(&PullEvent::BlobDone {
                        digest: digest.clone(),
                        size,
                        downloaded,
                    });
                    return Ok((downloaded, resumed_from));
                }
                Ok(Finished::Mismatch(download)) => *download,
                Err(CommitError::Io(e)) => return Err(io(e)),
                Err(CommitError::Store(e)) => return Err(e),
            };
            // Corrupted: never committed. Try once more from scratch.
            integrity_failures += 1;
            if integrity_failures >= 2 {
                download.discard();
                return Err(PullError::new(
                    Category::Integrity,
                    format!(
                        "blob {digest} from {} does not match its digest (twice); it was not stored",
                        client.registry
                    ),
                ));
            }
            retrying(
                &self.events,
                &client.registry,
                format!("blob {digest}"),
                integrity_failures + 1,
                Duration::ZERO,
                "the content did not match its digest",
            );
        }
    }

    /// Streams a blob body into `download` until it ends, stalls or drops:
    /// `Ok(Some(reason))` when it was cut short. Bytes arriving restore the
    /// budget; a body silent for the budget (at most [`BODY_IDLE`]) is cut.
    async fn read_body(
        &self,
        download: &mut BlobDownload,
        resp: reqwest::Response,
        budget: &Budget,
        downloaded: &mut u64,
    ) -> Result<Option<String>, WriteError> {
        let (digest, size) = (download.digest().clone(), download.size());
        let mut stream = resp.bytes_stream();
        let mut last_report = download.offset();
        // A registry that stops sending mid-body is given the budget (at
        // most BODY_IDLE), then the connection is dropped; with no byte
        // since the last progress, the budget is spent and the retry gives
        // up.
        let idle = BODY_IDLE.min(budget.total());
        loop {
            let bytes = match tokio::time::timeout(idle, stream.next()).await {
                Ok(Some(Ok(bytes))) => bytes,
                Ok(Some(Err(e))) => return Ok(Some(classify(&e).1)),
                Ok(None) => return Ok(None),
                Err(_) => {
                    return Ok(Some(format!(
                        "the registry sent nothing for {}",
                        crate::client::human_duration(idle)
                    )));
                }
            };
            download.write(&bytes)?;
            *downloaded += bytes.len() as u64;
            if !bytes.is_empty() {
                budget.progressed();
            }
            let done = download.offset();
            if done - last_report >= 1 << 20 || done == size {
                last_report = done;
                (self.events)(&PullEvent::BlobProgress {
                    digest: digest.clone(),
                    done,
                    size,
                });
            }
        }
    }
}

fn accept_manifests() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::ACCEPT, HeaderValue::from_static(manifest::ACCEPT));
    h
}

fn media_type_of(bytes: &[u8], fallback: &str) -> String {
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

fn header_digest(headers: &HeaderMap, image: &str) -> Result<Option<Digest>, PullError> {
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

fn digest_mismatch(image: &str, want: &Digest, got: &Digest) -> PullError {
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

/// Longest silence within a blob body before the connection is dropped and
/// the download resumed (never more than the retry budget).
const BODY_IDLE: Duration = Duration::from_secs(60);
