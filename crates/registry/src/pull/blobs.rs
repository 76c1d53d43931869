//! The blob stage of a [`Puller`]: one [`BlobDownload`] per blob, bounded
//! concurrency, one retry [`Budget`] per download (restored whenever bytes
//! arrive), verified before it is committed.

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
use reqwest::{Method, StatusCode};
use std::time::Duration;

impl Puller {
    /// Downloads one blob into the store unless it is there. Returns
    /// `(bytes downloaded, bytes reused)`. `image_needs` is what the whole
    /// image needs on disk, for the message if the disk fills up.
    ///
    /// The blob loop: one [`Budget`] for the whole download, shared with the
    /// requests it sends; bytes arriving restore it.
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
        let mut downloaded = 0u64;
        let budget = Budget::new(self.opts.retry);
        let mut integrity_failures = 0;
        let started = std::time::Instant::now();
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
                        elapsed: started.elapsed(),
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

/// Longest silence within a blob body before the connection is dropped and
/// the download resumed (never more than the retry budget).
const BODY_IDLE: Duration = Duration::from_secs(60);
