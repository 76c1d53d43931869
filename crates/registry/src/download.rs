//! [`BlobDownload`]: one blob's download in progress, resumable across
//! dropped connections and across runs.
//!
//! It owns the partial file in the store's `ingest/` folder, the running
//! hash of what the file holds, and the offset the next request resumes
//! from. It decides what an answer to a (ranged) request means for the file
//! — a `206` must carry exactly the range asked for (`Content-Range: bytes
//! OFFSET-(SIZE-1)/SIZE`), a `200` to a ranged request or a `416` starts
//! over — and it is the one place a partial download is reset. A blob
//! becomes visible under `blobs/` only through [`BlobDownload::commit`],
//! after its size and digest are verified and it is `fsync`ed.

use crate::reference::Digest;
use crate::store::{Hasher, OciStore};
use reqwest::StatusCode;
use reqwest::header::HeaderValue;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

/// Bytes written between two writeback kicks.
const WRITEBACK_CHUNK: u64 = 8 << 20;

/// A blob being downloaded into `ingest/`.
pub(crate) struct BlobDownload {
    digest: Digest,
    size: u64,
    path: PathBuf,
    out: BufWriter<File>,
    hasher: Hasher,
    offset: u64,
    resumed_from: u64,
    writeback_from: u64,
}

/// What an answer to a blob request means for the download.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Its body continues the file at the current offset.
    Body,
    /// Its body is the whole blob: the partial file was reset to read it.
    Restarted,
    /// The server cannot serve the range: the partial file was reset; ask
    /// again without a range.
    AskAgain,
}

/// A `206` whose `Content-Range` is not the range asked for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct WrongRange;

/// Why bytes could not be written.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// More bytes than the manifest declares.
    TooLarge,
    /// The file system failed (a full disk: `StorageFull`).
    Io(io::Error),
}

/// The end of a complete download.
pub(crate) enum Finished {
    /// Verified, synced and moved under `blobs/`.
    Committed,
    /// The bytes do not hash to the digest: the partial file was reset.
    Mismatch(Box<BlobDownload>),
}

impl BlobDownload {
    /// Opens the partial download of `digest` in `store`, hashing what an
    /// earlier run left there (reset if it is longer than `size`).
    pub(crate) fn open(store: &OciStore, digest: &Digest, size: u64) -> io::Result<Self> {
        let path = store.partial_path(digest);
        let mut hasher = Hasher::for_digest(digest);
        let mut offset = 0u64;
        if let Ok(mut f) = File::open(&path) {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                offset += n as u64;
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)?;
        let mut download = Self {
            digest: digest.clone(),
            size,
            path,
            out: BufWriter::with_capacity(64 << 10, file),
            hasher,
            offset,
            resumed_from: 0,
            writeback_from: 0,
        };
        if offset > size {
            download.reset()?;
        } else {
            download.out.get_ref().set_len(offset)?;
            download.out.seek(SeekFrom::Start(offset))?;
        }
        download.resumed_from = download.offset;
        download.writeback_from = download.offset;
        Ok(download)
    }

    /// The blob.
    pub(crate) fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Its size, as the manifest declares it.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Bytes in the file (and hashed) so far.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes an earlier run had left, that this one did not download.
    pub(crate) fn resumed_from(&self) -> u64 {
        self.resumed_from.min(self.size)
    }

    /// Whether every declared byte is in the file.
    pub(crate) fn is_complete(&self) -> bool {
        self.offset >= self.size
    }

    /// The `Range` header the next request carries, if any.
    pub(crate) fn range(&self) -> Option<HeaderValue> {
        (self.offset > 0)
            .then(|| HeaderValue::from_str(&format!("bytes={}-", self.offset)).expect("ascii"))
    }

    /// The one place a partial download starts over: an empty file, a
    /// fresh hash, offset 0.
    pub(crate) fn reset(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().set_len(0)?;
        self.out.seek(SeekFrom::Start(0))?;
        self.hasher = Hasher::for_digest(&self.digest);
        self.offset = 0;
        self.resumed_from = 0;
        self.writeback_from = 0;
        Ok(())
    }

    /// What a successful answer (`status`, its `Content-Range`) to the
    /// request for [`Self::range`] means; resets the file if the answer
    /// starts over. Other statuses are the caller's.
    pub(crate) fn accept(
        &mut self,
        status: StatusCode,
        content_range: Option<&str>,
    ) -> io::Result<Result<Answer, WrongRange>> {
        Ok(match status {
            StatusCode::OK if self.offset > 0 => {
                // The server ignored the range: start over.
                self.reset()?;
                Ok(Answer::Restarted)
            }
            StatusCode::PARTIAL_CONTENT => {
                let want = ContentRange {
                    start: self.offset,
                    end: self.size.saturating_sub(1),
                    total: Some(self.size),
                };
                match content_range.and_then(ContentRange::parse) {
                    Some(got) if got.matches(&want) => Ok(Answer::Body),
                    _ => Err(WrongRange),
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                self.reset()?;
                Ok(Answer::AskAgain)
            }
            _ => Ok(Answer::Body),
        })
    }

    /// Appends `bytes` to the file and the hash.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        if self.offset + bytes.len() as u64 > self.size {
            return Err(WriteError::TooLarge);
        }
        self.out.write_all(bytes).map_err(WriteError::Io)?;
        self.hasher.update(bytes);
        self.offset += bytes.len() as u64;
        if self.offset - self.writeback_from >= WRITEBACK_CHUNK {
            self.out.flush().map_err(WriteError::Io)?;
            start_writeback(
                self.out.get_ref(),
                self.writeback_from,
                self.offset - self.writeback_from,
            );
            self.writeback_from = self.offset;
        }
        Ok(())
    }

    /// Writes out what is buffered (what arrived is kept for a resume).
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Verifies the complete file against the digest; if it matches, syncs
    /// it (off the async workers) and moves it under `blobs/`.
    pub(crate) async fn commit(mut self, store: &OciStore) -> Result<Finished, CommitError> {
        self.out.flush().map_err(CommitError::Io)?;
        let hasher = std::mem::replace(&mut self.hasher, Hasher::for_digest(&self.digest));
        if hasher.finish_hex() != self.digest.hex() {
            self.reset().map_err(CommitError::Io)?;
            return Ok(Finished::Mismatch(Box::new(self)));
        }
        let digest = self.digest.clone();
        let file = self
            .out
            .into_inner()
            .map_err(|e| CommitError::Io(e.into_error()))?;
        // Durable before it is visible under blobs/.
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .expect("the sync task does not panic")
            .map_err(CommitError::Io)?;
        store.commit_partial(&digest).map_err(CommitError::Store)?;
        Ok(Finished::Committed)
    }

    /// Gives the download up for good: the partial file is removed.
    pub(crate) fn discard(self) {
        let path = self.path.clone();
        drop(self);
        let _ = std::fs::remove_file(path);
    }
}

/// Why [`BlobDownload::commit`] failed.
#[derive(Debug)]
pub(crate) enum CommitError {
    Io(io::Error),
    Store(crate::PullError),
}

/// `Content-Range: bytes START-END/TOTAL` (`TOTAL` may be `*`).
#[derive(Debug, PartialEq, Eq)]
struct ContentRange {
    start: u64,
    end: u64,
    total: Option<u64>,
}

impl ContentRange {
    fn parse(v: &str) -> Option<Self> {
        let (range, total) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
        let (start, end) = range.split_once('-')?;
        let total = match total.trim() {
            "*" => None,
            t => Some(t.parse().ok()?),
        };
        let range = ContentRange {
            start: start.trim().parse().ok()?,
            end: end.trim().parse().ok()?,
            total,
        };
        (range.start <= range.end).then_some(range)
    }

    /// Same start and end, and the same total unless the server left it
    /// unknown.
    fn matches(&self, want: &ContentRange) -> bool {
        self.start == want.start
            && self.end == want.end
            && (self.total.is_none() || self.total == want.total)
    }
}

/// Asks the kernel to start writing `len` bytes at `offset` to disk now,
/// without waiting, so the final `fsync` finds little left to do and dirty
/// pages never pile up (memory stays bounded on small VMs).
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a file descriptor we own; no memory is shared.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    fn digest_of(bytes: &[u8]) -> Digest {
        Digest::sha256(&hex::encode(sha2::Sha256::digest(bytes))).unwrap()
    }

    #[test]
    fn content_range_is_checked_whole() {
        let want = ContentRange {
            start: 100,
            end: 199,
            total: Some(200),
        };
        let ok = |s: &str| ContentRange::parse(s).is_some_and(|r| r.matches(&want));
        assert!(ok("bytes 100-199/200"));
        assert!(ok("bytes 100-199/*"));
        assert!(!ok("bytes 100-150/200"), "a short range");
        assert!(!ok("bytes 100-199/300"), "another blob's size");
        assert!(!ok("bytes 0-199/200"), "another start");
        assert!(!ok("bytes */200"));
        assert!(!ok("bytes 150-100/200"));
    }

    #[tokio::test]
    async fn resumes_what_an_earlier_run_left_and_commits_only_verified_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = OciStore::open(dir.path()).unwrap();
        let blob: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let digest = digest_of(&blob);
        let size = blob.len() as u64;

        let mut first = BlobDownload::open(&store, &digest, size).unwrap();
        assert_eq!(first.range(), None);
        first.write(&blob[..4000]).unwrap();
        first.flush().unwrap();
        drop(first);

        // The next run resumes at 4000 and accepts only that exact range.
        let mut dl = BlobDownload::open(&store, &digest, size).unwrap();
        assert_eq!(dl.resumed_from(), 4000);
        assert_eq!(dl.range().unwrap(), "bytes=4000-");
        assert_eq!(
            dl.accept(StatusCode::PARTIAL_CONTENT, Some("bytes 4000-9999/5000"))
                .unwrap(),
            Err(WrongRange)
        );
        assert_eq!(
            dl.accept(StatusCode::PARTIAL_CONTENT, Some("bytes 4000-9999/10000"))
                .unwrap(),
            Ok(Answer::Body)
        );
        assert!(matches!(dl.write(&blob[4000..]), Ok(())));
        assert!(matches!(dl.write(b"x"), Err(WriteError::TooLarge)));
        assert!(dl.is_complete());
        assert!(matches!(dl.commit(&store).await, Ok(Finished::Committed)));
        assert!(store.has_blob(&digest, Some(size)));
        assert!(!store.partial_path(&digest).exists());
    }

    #[tokio::test]
    async fn a_server_that_ignores_the_range_or_corrupts_the_blob_resets_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = OciStore::open(dir.path()).unwrap();
        let blob = vec![7u8; 3000];
        let digest = digest_of(&blob);
        let mut dl = BlobDownload::open(&store, &digest, 3000).unwrap();
        dl.write(&blob[..1000]).unwrap();
        assert_eq!(
            dl.accept(StatusCode::OK, None).unwrap(),
            Ok(Answer::Restarted)
        );
        assert_eq!((dl.offset(), dl.range()), (0, None));

        let mut corrupt = blob.clone();
        corrupt[10] ^= 1;
        dl.write(&corrupt).unwrap();
        let Ok(Finished::Mismatch(dl)) = dl.commit(&store).await else {
            panic!("a corrupt blob was committed");
        };
        assert_eq!(dl.offset(), 0);
        assert_eq!(
            std::fs::metadata(store.partial_path(&digest))
                .unwrap()
                .len(),
            0
        );
        assert!(!store.has_blob(&digest, None));
        dl.discard();
        assert!(!store.partial_path(&digest).exists());
    }
}
