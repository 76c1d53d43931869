//! The blob stage of a [`Puller`]: one [`BlobDownload`] per blob, bounded
//! concurrency, one retry [`Budget`] per download (restored whenever bytes
//! arrive) and a bound on its requests ([`REQUESTS_PER_BLOB_BEYOND_PLAN`]),
//! verified before it is committed. An answer whose length is not what was
//! asked for (a `Content-Length` other than the manifest's size or the
//! range's, a body that ends by itself short of it) is final, never retried.
//!
//! A blob of at least [`RangedOptions::threshold`] bytes is fetched as
//! `Range` parts on separate connections (`ranged`), one that is smaller, or
//! from a registry that answers a ranged request with the whole blob, as one
//! stream. Every blob request holds a permit of its registry's
//! [`Connections`], so a registry sees at most
//! [`RangedOptions::connections_per_registry`] blob connections from one
//! puller, whatever the number of blobs and parts.

use super::Puller;
use crate::client::{Expect, RegistryClient, error_codes};
use crate::download::{Answer, BlobDownload, CommitError, Finished, WriteError};
use crate::error::{Category, Hint, PullError};
use crate::events::{PullEvent, retrying};
use crate::manifest::Descriptor;
use crate::retry::Budget;
use crate::transport::classify;
use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, Response, StatusCode};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

mod ranged;

/// Requests a blob's download may send beyond those it plans (one per part,
/// one for a blob in one stream): resumes after a drop, restarts after the
/// registry ignored `Range`, the second try after a digest mismatch. Bytes
/// arriving restore the retry budget, so the budget alone lets a registry
/// that keeps answering and never completes the blob (each answer cut
/// short, `Range` ignored, one byte per answer) be asked forever: issue 23
/// saw 631 requests in 120 s. 32 resumes of one blob is far more than a
/// flaky link needs, and what arrived stays in `ingest/` for the next pull.
const REQUESTS_PER_BLOB_BEYOND_PLAN: u32 = 32;

/// How big blobs are fetched in parts ([`super::PullOptions::ranged`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangedOptions {
    /// Blobs of at least this many bytes are fetched as `Range` parts on
    /// separate connections; smaller ones as one stream. Default 128 MiB:
    /// an image's smaller layers already come on parallel connections of
    /// their own, and where the machine, not the link, is the limit (a
    /// registry on loopback), parts cost a second read of the file for the
    /// hash (4 × 100 MB in parts was ~0.3 s slower there, see
    /// BENCHMARKS.md). `u64::MAX`: never.
    pub threshold: u64,
    /// Most bytes of a part. Default 16 MiB. A blob is cut into the fewest
    /// equal parts of at most this size that fill every connection in each
    /// round (a multiple of `connections_per_registry`), so no round ends
    /// with a few parts on idle connections. A download resumed from an
    /// earlier run keeps the parts it was cut into.
    pub part_size: u64,
    /// Most blob requests in flight to one registry at once, all blobs and
    /// parts of the puller together (so at most this many blob
    /// connections). Default 8.
    pub connections_per_registry: usize,
}

impl Default for RangedOptions {
    fn default() -> Self {
        Self {
            threshold: 128 << 20,
            part_size: 16 << 20,
            connections_per_registry: 8,
        }
    }
}

/// The blob connections of each registry: a semaphore per registry shared by
/// every blob and part of the puller, and the registries that answered a
/// ranged request with the whole blob (asked in one stream from then on).
pub(super) struct Connections {
    limit: usize,
    per_registry: Mutex<HashMap<String, Arc<Semaphore>>>,
    ignore_range: Mutex<HashSet<String>>,
    /// One blob in parts at a time per registry, taken in the order the
    /// blobs asked (tokio's mutex is fair, and blobs start in layer
    /// order): each big layer gets every connection and is verified as
    /// early as it can be, so the engine can start on it while the next
    /// one downloads, instead of all big layers finishing together.
    in_parts: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Connections {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            per_registry: Mutex::new(HashMap::new()),
            ignore_range: Mutex::new(HashSet::new()),
            in_parts: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until no other blob of `registry` is downloading in parts.
    async fn one_in_parts(&self, registry: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .in_parts
            .lock()
            .unwrap()
            .entry(registry.to_owned())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// Waits for a connection to `registry`.
    async fn acquire(&self, registry: &str) -> OwnedSemaphorePermit {
        let semaphore = self
            .per_registry
            .lock()
            .unwrap()
            .entry(registry.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.limit)))
            .clone();
        semaphore
            .acquire_owned()
            .await
            .expect("semaphore never closed")
    }

    fn ignores_range(&self, registry: &str) -> bool {
        self.ignore_range.lock().unwrap().contains(registry)
    }

    fn note_ignores_range(&self, registry: &str) {
        self.ignore_range
            .lock()
            .unwrap()
            .insert(registry.to_owned());
    }
}

/// How a download in parts ended, short of a failure.
pub(super) enum PartsEnd {
    /// Every part is in the file and hashed.
    Done,
    /// The registry ignores `Range` (`200`, with the answer and its
    /// connection, whose body is the whole blob) or cannot serve it
    /// (`416`): fetch the blob in one stream.
    OneStream(Option<(Response, OwnedSemaphorePermit)>),
}

/// What one blob's download shares between its loops.
pub(super) struct Fetch<'a> {
    pub(super) client: &'a RegistryClient,
    pub(super) repo: &'a str,
    pub(super) path: String,
    pub(super) digest: &'a crate::Digest,
    /// The blob's size, as its manifest declares it.
    pub(super) size: u64,
    pub(super) budget: Budget,
    /// Requests sent for the blob, and how many it may send (those
    /// planned, plus [`REQUESTS_PER_BLOB_BEYOND_PLAN`]).
    pub(super) requests: AtomicU32,
    pub(super) allowed: AtomicU32,
    /// Bytes received by this pull.
    pub(super) downloaded: AtomicU64,
    /// A file-system failure, worded (a full disk names what the image needs).
    pub(super) io: &'a (dyn Fn(std::io::Error) -> PullError + Sync),
}

impl Fetch<'_> {
    /// The download plans `n` more requests: one per part, or one for the
    /// blob in one stream.
    pub(super) fn plan(&self, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        let _ = self
            .allowed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                Some(a.saturating_add(n))
            });
    }

    /// Sends a request for the blob (or part of it, as `headers` say),
    /// unless the blob has had every request it may have; `kept`: the bytes
    /// of it in the file, for the message.
    pub(super) async fn ask(&self, headers: HeaderMap, kept: u64) -> Result<Response, PullError> {
        let sent = self.requests.fetch_add(1, Ordering::Relaxed);
        if sent >= self.allowed.load(Ordering::Relaxed) {
            return Err(PullError::new(
                Category::RegistryError,
                format!(
                    "{} was asked for blob {} {sent} times and never sent all of it; \
                     {kept} of {} bytes are kept for the next attempt",
                    self.client.registry, self.digest, self.size
                ),
            ));
        }
        self.client
            .send(
                Method::GET,
                &self.path,
                self.repo,
                headers,
                Expect::Blob,
                &self.budget,
            )
            .await
    }
}

/// Whether an answer announces where its body ends (a length, or chunked
/// encoding's last chunk), so that a body ending early was ended by the
/// registry, not cut by the network. A body that ends only with its
/// connection ends the same way as a drop, and is resumed as one.
fn ends_by_itself(resp: &Response) -> bool {
    resp.content_length().is_some()
        || resp
            .headers()
            .get(header::TRANSFER_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
}

impl Puller {
    /// Downloads one blob into the store unless it is there. Returns
    /// `(bytes downloaded, bytes reused)`. `image_needs` is what the whole
    /// image needs on disk, for the message if the disk fills up.
    ///
    /// The blob loop: one [`Budget`] for the whole download, shared with the
    /// requests it sends and by all its parts; bytes arriving restore it.
    /// [`PullEvent::BlobDone`] is sent once the blob is verified, synced and
    /// under `blobs/`.
    pub(super) async fn fetch_blob(
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
        let fetch = Fetch {
            client,
            repo,
            path: format!("/v2/{repo}/blobs/{digest}"),
            digest,
            size,
            budget: Budget::new(self.opts.retry),
            requests: AtomicU32::new(0),
            allowed: AtomicU32::new(REQUESTS_PER_BLOB_BEYOND_PLAN),
            downloaded: AtomicU64::new(0),
            io: &io,
        };
        let mut integrity_failures = 0;
        let started = std::time::Instant::now();
        loop {
            let mut first = None;
            if size >= self.opts.ranged.threshold
                && !self.connections.ignores_range(&client.registry)
            {
                // No connection is held while waiting here (parts take
                // their own), so this cannot starve the blob in parts.
                let _turn = self.connections.one_in_parts(&client.registry).await;
                match self.fetch_parts(&fetch, &mut download).await? {
                    PartsEnd::Done => {}
                    PartsEnd::OneStream(answer) => {
                        if answer.is_some() {
                            self.connections.note_ignores_range(&client.registry);
                        }
                        first = answer;
                    }
                }
            }
            if !download.is_complete() {
                download.as_one_stream().map_err(io)?;
                self.fetch_stream(&fetch, &mut download, first).await?;
            }
            // Verify, then commit.
            download = match download.commit(&self.store).await {
                Ok(Finished::Committed) => {
                    (self.events)(&PullEvent::BlobDone {
                        digest: digest.clone(),
                        size,
                        downloaded: fetch.downloaded.load(Ordering::Relaxed),
                        elapsed: started.elapsed(),
                    });
                    return Ok((fetch.downloaded.load(Ordering::Relaxed), resumed_from));
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

    /// Fetches the rest of the blob in one stream, resuming with `Range`
    /// after a drop. `first`: an answer already received (a `200` to a
    /// ranged request), and its connection.
    async fn fetch_stream(
        &self,
        fetch: &Fetch<'_>,
        download: &mut BlobDownload,
        first: Option<(Response, OwnedSemaphorePermit)>,
    ) -> Result<(), PullError> {
        let Fetch {
            client, budget, io, ..
        } = fetch;
        let (digest, size) = (download.digest().clone(), download.size());
        // One connection, held until the stream ends.
        let (mut first, _connection) = match first {
            Some((resp, permit)) => (Some(resp), permit),
            None => {
                fetch.plan(1);
                (None, self.connections.acquire(&client.registry).await)
            }
        };
        while !download.is_complete() {
            let resp = match first.take() {
                Some(resp) => resp,
                None => {
                    let mut headers = HeaderMap::new();
                    if let Some(range) = download.range() {
                        headers.insert(header::RANGE, range);
                    }
                    fetch.ask(headers, download.offset()).await?
                }
            };
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
            } else {
                return Err(self.refused(fetch, &digest, resp).await);
            }
            // The body must be what is missing, no more, no less: a registry
            // announcing another length is not asked again.
            let from = download.offset();
            if let Some(len) = resp.content_length()
                && len != size - from
            {
                return Err(wrong_length(fetch, status, from, len));
            }
            let ends_by_itself = ends_by_itself(&resp);
            let dropped = match self.read_body(fetch, download, resp).await {
                Ok(dropped) => dropped,
                Err(WriteError::Io(e)) => return Err(io(e)),
                Err(WriteError::TooLarge) => {
                    download.reset().map_err(io)?;
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
                if dropped.is_none() && ends_by_itself {
                    return Err(PullError::new(
                        Category::Integrity,
                        format!(
                            "{} ended blob {digest} after {} bytes, short of the {size} bytes its manifest declares; it was not stored",
                            client.registry,
                            download.offset()
                        ),
                    ));
                }
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
                    return Err(self.kept_failing(fetch, &digest, &reason, offset, size));
                }
            }
        }
        Ok(())
    }

    /// The error for a blob request answered with neither the blob nor a
    /// transient failure.
    async fn refused(
        &self,
        fetch: &Fetch<'_>,
        digest: &crate::Digest,
        resp: Response,
    ) -> PullError {
        let (registry, repo) = (&fetch.client.registry, fetch.repo);
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return PullError::new(
                Category::RegistryError,
                format!("{registry} lists blob {digest} in the manifest of {repo} but does not have it (BLOB_UNKNOWN)"),
            )
            .hint("the image in the registry is incomplete: push it again");
        }
        let body = error_codes(resp).await;
        PullError::new(
            Category::RegistryError,
            format!(
                "{registry} answered {} to the download of blob {digest}",
                body.summary(status.as_str())
            ),
        )
    }

    /// The retries of a dropped download ran out.
    fn kept_failing(
        &self,
        fetch: &Fetch<'_>,
        digest: &crate::Digest,
        reason: &str,
        kept: u64,
        size: u64,
    ) -> PullError {
        PullError::new(
            Category::Unreachable,
            format!(
                "the download of blob {digest} from {} kept failing ({reason}); {kept} of {size} bytes are kept for the next attempt",
                fetch.client.registry
            ),
        )
    }

    /// Streams a blob body into `download` until it ends, stalls or drops:
    /// `Ok(Some(reason))` when it was cut short. Bytes arriving restore the
    /// budget; a body silent for the budget (at most [`BODY_IDLE`]) is cut.
    async fn read_body(
        &self,
        fetch: &Fetch<'_>,
        download: &mut BlobDownload,
        resp: Response,
    ) -> Result<Option<String>, WriteError> {
        let (digest, size) = (download.digest().clone(), download.size());
        let mut stream = resp.bytes_stream();
        let mut last_report = download.offset();
        let idle = body_idle(&fetch.budget);
        loop {
            let bytes = match tokio::time::timeout(idle, stream.next()).await {
                Ok(Some(Ok(bytes))) => bytes,
                Ok(Some(Err(e))) => return Ok(Some(classify(&e).1)),
                Ok(None) => return Ok(None),
                Err(_) => return Ok(Some(silent_for(idle))),
            };
            download.write(&bytes)?;
            fetch
                .downloaded
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            if !bytes.is_empty() {
                fetch.budget.progressed();
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

/// The error for an answer whose `Content-Length` (`len`) is not what is
/// missing of the blob from byte `from`: the whole blob of another size than
/// its manifest declares (a `200`), or a resumed range of another length.
fn wrong_length(fetch: &Fetch<'_>, status: StatusCode, from: u64, len: u64) -> PullError {
    let (registry, digest, size) = (&fetch.client.registry, fetch.digest, fetch.size);
    if status == StatusCode::PARTIAL_CONTENT {
        return PullError::new(
            Category::RegistryError,
            format!(
                "{registry} answered the request for bytes {from}-{} of blob {digest} with {len} bytes",
                size.saturating_sub(1)
            ),
        );
    }
    PullError::new(
        Category::Integrity,
        format!(
            "blob {digest} from {registry} is {len} bytes, but its manifest declares {size}; it was not stored"
        ),
    )
}

/// How long a blob body may stay silent: the budget, at most [`BODY_IDLE`].
/// A registry that stops sending mid-body is given that, then the
/// connection is dropped; with no byte since the last progress, the budget
/// is spent and the retry gives up.
fn body_idle(budget: &Budget) -> Duration {
    BODY_IDLE.min(budget.total())
}

fn silent_for(idle: Duration) -> String {
    format!(
        "the registry sent nothing for {}",
        crate::helpers::human_duration(idle)
    )
}

/// Longest silence within a blob body before the connection is dropped and
/// the download resumed (never more than the retry budget).
const BODY_IDLE: Duration = Duration::from_secs(60);
