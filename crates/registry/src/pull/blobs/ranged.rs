//! One big blob fetched as `Range` parts on separate connections.
//!
//! The blob is cut into parts ([`super::RangedOptions::part_size`]); the
//! first missing part is asked for first, and only once the registry has
//! answered it with exactly that range (`206`) do the other workers start,
//! each taking the next missing part in order, so the complete prefix grows
//! from the front and the [`crate::download::PrefixHasher`] follows it
//! closely. A worker holds one of the registry's connections per part.
//! A dropped part is asked again from where it stopped, within the blob's
//! one retry [`crate::retry::Budget`] (restored by bytes arriving on any
//! part) and its bound on requests. A `200` (the registry ignores `Range`) or `416` ends the parts:
//! the blob is fetched in one stream (`super::Puller::fetch_stream`).
//!
//! Hand-written, like `download`: no crate does resumable parallel ranged
//! downloads under this crate's retry and integrity rules.

use super::{Fetch, PartsEnd, body_idle, ends_by_itself, silent_for};
use crate::download::{BlobDownload, Part, PartAnswer, PartWriter, WriteError};
use crate::error::{Category, PullError};
use crate::events::{PullEvent, retrying};
use crate::pull::Puller;
use crate::transport::classify;
use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap};
use reqwest::{Response, StatusCode};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use tokio::sync::OwnedSemaphorePermit;

/// Why the workers stopped early.
enum Stop {
    Failed(PullError),
    /// See [`PartsEnd::OneStream`].
    OneStream(Option<(Response, OwnedSemaphorePermit)>),
}

impl From<PullError> for Stop {
    fn from(e: PullError) -> Self {
        Stop::Failed(e)
    }
}

/// What the registry answered to a part's request.
enum Asked {
    /// Exactly the range asked for.
    Body(Response),
    /// The whole blob (`200`).
    WholeBlob(Response),
    /// `416`.
    Unsatisfiable,
}

/// About `part_size`, so that the parts fill every connection in each
/// round (the last round is not a few parts on idle connections).
fn even_parts(size: u64, part_size: u64, connections: usize) -> u64 {
    let connections = connections.max(1) as u64;
    let rounds = size.div_ceil(connections * part_size.max(1));
    size.div_ceil(rounds * connections).max(1)
}

impl Puller {
    /// Fetches the missing parts of `download` in parallel, hashing the
    /// prefix as it grows. On any end, what is in the file is recorded for a
    /// later run and the hash is back in `download`.
    pub(super) async fn fetch_parts(
        &self,
        fetch: &Fetch<'_>,
        download: &mut BlobDownload,
    ) -> Result<PartsEnd, PullError> {
        let io = fetch.io;
        let ranged = &self.opts.ranged;
        let part_size = even_parts(
            download.size(),
            ranged.part_size,
            ranged.connections_per_registry,
        );
        let parts = download.cut_into_parts(part_size).map_err(io)?;
        fetch.plan(parts.len());
        let hasher = download.hash_parts();
        let result = self.run_parts(fetch, download, parts).await;
        let hashed = hasher.finish().await.map_err(io)?;
        download.hashed_parts(hashed);
        download.save_parts().map_err(io)?;
        match result {
            Ok(()) => Ok(PartsEnd::Done),
            Err(Stop::OneStream(answer)) => Ok(PartsEnd::OneStream(answer)),
            Err(Stop::Failed(e)) => Err(e),
        }
    }

    async fn run_parts(
        &self,
        fetch: &Fetch<'_>,
        download: &BlobDownload,
        parts: Vec<Part>,
    ) -> Result<(), Stop> {
        let mut queue = VecDeque::from(parts);
        let Some(first) = queue.pop_front() else {
            return Ok(());
        };
        let workers = self
            .opts
            .ranged
            .connections_per_registry
            .max(1)
            .min(queue.len() + 1);
        // The first part tells whether the registry serves ranges at all.
        let permit = self.connections.acquire(&fetch.client.registry).await;
        let writer = download.part_writer(first);
        let resp = match self.request_part(fetch, download, &writer).await? {
            Asked::Body(resp) => resp,
            Asked::WholeBlob(resp) => return Err(Stop::OneStream(Some((resp, permit)))),
            Asked::Unsatisfiable => return Err(Stop::OneStream(None)),
        };
        let queue = Mutex::new(queue);
        let first = Some((writer, resp, permit));
        let all = std::iter::once(self.part_worker(fetch, download, &queue, first))
            .chain((1..workers).map(|_| self.part_worker(fetch, download, &queue, None)));
        futures_util::future::try_join_all(all).await?;
        Ok(())
    }

    /// Takes parts off `queue` until none is left; `current`: a part whose
    /// answer has arrived.
    async fn part_worker(
        &self,
        fetch: &Fetch<'_>,
        download: &BlobDownload,
        queue: &Mutex<VecDeque<Part>>,
        mut current: Option<(PartWriter, Response, OwnedSemaphorePermit)>,
    ) -> Result<(), Stop> {
        let (digest, size) = (download.digest(), download.size());
        loop {
            let (mut writer, mut resp, permit) = match current.take() {
                Some(answered) => answered,
                None => {
                    let Some(part) = queue.lock().unwrap().pop_front() else {
                        return Ok(());
                    };
                    let permit = self.connections.acquire(&fetch.client.registry).await;
                    let writer = download.part_writer(part);
                    match self.request_part(fetch, download, &writer).await? {
                        Asked::Body(resp) => (writer, resp, permit),
                        Asked::WholeBlob(resp) => {
                            return Err(Stop::OneStream(Some((resp, permit))));
                        }
                        Asked::Unsatisfiable => return Err(Stop::OneStream(None)),
                    }
                }
            };
            loop {
                let ends_by_itself = ends_by_itself(&resp);
                let asked = writer.rest();
                let dropped = match self.read_part(fetch, download, &mut writer, resp).await {
                    Ok(dropped) => dropped,
                    Err(WriteError::Io(e)) => return Err((fetch.io)(e).into()),
                    Err(WriteError::TooLarge) => {
                        let Part { from, end, .. } = writer.rest();
                        return Err(PullError::new(
                            Category::Integrity,
                            format!(
                                "{} sent more than bytes {from}-{} of blob {digest} when asked for them",
                                fetch.client.registry,
                                end - 1
                            ),
                        )
                        .into());
                    }
                };
                if writer.is_complete() {
                    break;
                }
                writer.flush().map_err(fetch.io)?;
                if dropped.is_none() && ends_by_itself {
                    // The answer's own end, not a drop: the registry sent
                    // less than the range it confirmed.
                    return Err(PullError::new(
                        Category::RegistryError,
                        format!(
                            "{} ended its answer for bytes {}-{} of blob {digest} at byte {}",
                            fetch.client.registry,
                            asked.from,
                            asked.end - 1,
                            writer.rest().from
                        ),
                    )
                    .into());
                }
                let reason = dropped.unwrap_or_else(|| "the connection ended early".to_owned());
                let from = writer.rest().from;
                let on_retry = |attempt, delay| {
                    let what = format!("blob {digest} from byte {from}");
                    retrying(
                        &self.events,
                        &fetch.client.registry,
                        what,
                        attempt,
                        delay,
                        &reason,
                    )
                };
                if fetch.budget.retry(None, on_retry).await.is_err() {
                    let kept = download.present();
                    return Err(self.kept_failing(fetch, digest, &reason, kept, size).into());
                }
                resp = match self.request_part(fetch, download, &writer).await? {
                    Asked::Body(resp) => resp,
                    Asked::WholeBlob(resp) => return Err(Stop::OneStream(Some((resp, permit)))),
                    Asked::Unsatisfiable => return Err(Stop::OneStream(None)),
                };
            }
            drop(permit);
        }
    }

    /// Asks for the rest of `writer`'s part.
    async fn request_part(
        &self,
        fetch: &Fetch<'_>,
        download: &BlobDownload,
        writer: &PartWriter,
    ) -> Result<Asked, PullError> {
        let part = writer.rest();
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, part.range());
        let resp = fetch.ask(headers, download.present()).await?;
        let status = resp.status();
        if !status.is_success() && status != StatusCode::RANGE_NOT_SATISFIABLE {
            return Err(self.refused(fetch, download.digest(), resp).await);
        }
        let content_range = resp
            .headers()
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok());
        match download.accept_part(writer, status, content_range) {
            Ok(PartAnswer::Body) => match resp.content_length() {
                Some(len) if len != part.end - part.from => Err(PullError::new(
                    Category::RegistryError,
                    format!(
                        "{} answered the request for bytes {}-{} of blob {} with {len} bytes",
                        fetch.client.registry,
                        part.from,
                        part.end - 1,
                        download.digest()
                    ),
                )),
                _ => Ok(Asked::Body(resp)),
            },
            Ok(PartAnswer::WholeBlob) => Ok(Asked::WholeBlob(resp)),
            Ok(PartAnswer::Unsatisfiable) => Ok(Asked::Unsatisfiable),
            Err(_wrong_range) => Err(PullError::new(
                Category::RegistryError,
                format!(
                    "{} answered the request for bytes {}-{} of blob {} with another range",
                    fetch.client.registry,
                    part.from,
                    part.end - 1,
                    download.digest()
                ),
            )),
        }
    }

    /// Streams a part's body into `writer` until it ends, stalls or drops:
    /// `Ok(Some(reason))` when it was cut short. As `read_body`, for a part.
    async fn read_part(
        &self,
        fetch: &Fetch<'_>,
        download: &BlobDownload,
        writer: &mut PartWriter,
        resp: Response,
    ) -> Result<Option<String>, WriteError> {
        let mut stream = resp.bytes_stream();
        let idle = body_idle(&fetch.budget);
        let mut unreported = 0u64;
        loop {
            let bytes = match tokio::time::timeout(idle, stream.next()).await {
                Ok(Some(Ok(bytes))) => bytes,
                Ok(Some(Err(e))) => return Ok(Some(classify(&e).1)),
                Ok(None) => return Ok(None),
                Err(_) => return Ok(Some(silent_for(idle))),
            };
            writer.write(&bytes)?;
            let n = bytes.len() as u64;
            fetch.downloaded.fetch_add(n, Ordering::Relaxed);
            if n > 0 {
                fetch.budget.progressed();
            }
            unreported += n;
            if unreported >= 1 << 20 || writer.is_complete() {
                unreported = 0;
                (self.events)(&PullEvent::BlobProgress {
                    digest: download.digest().clone(),
                    done: download.present(),
                    size: download.size(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parts_fill_every_connection_in_each_round() {
        const MB: u64 = 1_000_000;
        // 1 GB on 8 connections: 64 parts of 15.625 MB, not 60 of 16 MiB.
        assert_eq!(super::even_parts(1000 * MB, 16 << 20, 8), 15_625_000);
        // Small enough for one round.
        assert_eq!(super::even_parts(40 * MB, 16 << 20, 8), 5 * MB);
        assert_eq!(super::even_parts(7, 16 << 20, 8), 1);
        assert_eq!(super::even_parts(100, 16 << 20, 1), 100);
    }
}
