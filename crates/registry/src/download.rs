//! [`BlobDownload`]: one blob's download in progress, resumable across
//! dropped connections and across runs, as one stream or as ranged parts.
//!
//! It owns the partial file in the store's `ingest/` folder, which bytes of
//! it are in place, the running hash of its complete prefix, and the offset
//! each request resumes from. It decides what an answer to a (ranged)
//! request means for the file — a `206` must carry exactly the range asked
//! for (`Content-Range: bytes FROM-TO/SIZE`), a `200` to a ranged request
//! or a `416` starts over — and it is the one place a partial download is
//! reset. A blob becomes visible under `blobs/` only through
//! [`BlobDownload::commit`], after its size and digest are verified and it
//! is `fsync`ed.
//!
//! **One stream** writes the file in order: its length is what is there,
//! and the bytes are hashed as they are written. **Parts** (a big blob, see
//! `pull::blobs`) cut the blob at fixed offsets; each [`PartWriter`] writes
//! its part at its offset, and `ingest/<alg>-<hex>.parts` records how many
//! bytes of each part are in the file (rewritten whenever a part ends or a
//! stream stops), so a later run fetches only what is missing. The hash
//! follows the complete prefix as it grows: a [`PrefixHasher`] thread reads
//! back what the parts wrote at the front of the file, so the digest is
//! known moments after the last byte, and memory stays a few buffers
//! whatever the blob's size.
//!
//! Hand-written: no crate downloads one resource as resumable, parallel
//! ranged parts with this contract (every byte checked against the range
//! asked for, progress kept across runs, one retry budget, nothing
//! unverified ever under `blobs/`).

use crate::reference::Digest;
use crate::store::{Hasher, OciStore};
use reqwest::StatusCode;
use reqwest::header::HeaderValue;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Bytes written between two writeback kicks.
const WRITEBACK_CHUNK: u64 = 8 << 20;
/// Bytes a stream collects before writing them to the file; larger chunks
/// are written as they come (one copy less).
const WRITE_CHUNK: usize = 64 << 10;
/// Bytes the prefix hasher reads back at a time.
const HASH_CHUNK: usize = 1 << 20;
/// The first line of a parts record.
const RECORD_MAGIC: &str = "berth-ingest-parts 1";

/// A blob being downloaded into `ingest/`.
pub(crate) struct BlobDownload {
    digest: Digest,
    size: u64,
    path: PathBuf,
    shared: Arc<Shared>,
    /// The hash of the file's first `hashed` bytes (`None` while a
    /// [`PrefixHasher`] has it).
    hasher: Option<Hasher>,
    hashed: u64,
    resumed_from: u64,
    /// One stream's bytes not yet written (they are hashed already).
    buf: Vec<u8>,
    writeback_from: u64,
}

/// What the streams of one download share: the file, its layout and how far
/// each part got, and the prefix hasher's wake-up.
pub(crate) struct Shared {
    file: File,
    record: PathBuf,
    layout: Mutex<Layout>,
    grew: Condvar,
    stop: AtomicBool,
}

/// The blob cut into parts, and the bytes of each part in the file (from
/// the part's start). One stream is one part as long as the blob.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Layout {
    size: u64,
    part_size: u64,
    done: Vec<u64>,
}

impl Layout {
    fn single(size: u64, done: u64) -> Self {
        Self {
            size,
            part_size: size.max(1),
            done: vec![done.min(size)],
        }
    }

    /// `size` cut into parts of `part_size`, with the first `prefix` bytes
    /// in place.
    fn parts(size: u64, part_size: u64, prefix: u64) -> Self {
        let part_size = part_size.max(1);
        let n = size.div_ceil(part_size).max(1) as usize;
        let mut layout = Self {
            size,
            part_size,
            done: vec![0; n],
        };
        for i in 0..n {
            let (start, end) = layout.bounds(i);
            layout.done[i] = prefix.clamp(start, end) - start;
        }
        layout
    }

    fn is_single(&self) -> bool {
        self.done.len() == 1
    }

    /// `[start, end)` of part `i`.
    fn bounds(&self, i: usize) -> (u64, u64) {
        let start = i as u64 * self.part_size;
        (start, (start + self.part_size).min(self.size))
    }

    /// The end of the complete prefix: every byte before it is in the file.
    fn prefix(&self) -> u64 {
        for (i, done) in self.done.iter().enumerate() {
            let (start, end) = self.bounds(i);
            if start + done < end {
                return start + done;
            }
        }
        self.size
    }

    /// Bytes in the file.
    fn present(&self) -> u64 {
        self.done.iter().sum()
    }

    /// The furthest byte written, plus one.
    fn furthest(&self) -> u64 {
        (0..self.done.len())
            .filter(|&i| self.done[i] > 0)
            .map(|i| self.bounds(i).0 + self.done[i])
            .max()
            .unwrap_or(0)
    }

    fn render(&self) -> String {
        let done: Vec<String> = self.done.iter().map(u64::to_string).collect();
        format!(
            "{RECORD_MAGIC}\nsize {}\npart-size {}\ndone {}\n",
            self.size,
            self.part_size,
            done.join(" ")
        )
    }

    /// A record written by [`Layout::render`] for a blob of `size`, if it
    /// is one and consistent.
    fn parse(text: &str, size: u64) -> Option<Self> {
        let mut lines = text.lines();
        (lines.next()? == RECORD_MAGIC).then_some(())?;
        let field = |line: Option<&str>, name: &str| -> Option<String> {
            Some(line?.strip_prefix(name)?.strip_prefix(' ')?.to_owned())
        };
        let rec_size: u64 = field(lines.next(), "size")?.parse().ok()?;
        let part_size: u64 = field(lines.next(), "part-size")?.parse().ok()?;
        let done: Vec<u64> = field(lines.next(), "done")?
            .split(' ')
            .map(|d| d.parse().ok())
            .collect::<Option<_>>()?;
        if rec_size != size || part_size == 0 || done.len() as u64 != size.div_ceil(part_size) {
            return None;
        }
        let layout = Self {
            size,
            part_size,
            done,
        };
        (0..layout.done.len())
            .all(|i| {
                let (start, end) = layout.bounds(i);
                layout.done[i] <= end - start
            })
            .then_some(layout)
    }
}

/// One part still to fetch: bytes `[from, end)` of part `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Part {
    pub(crate) index: usize,
    pub(crate) from: u64,
    pub(crate) end: u64,
}

impl Part {
    /// `Range: bytes=FROM-LAST`.
    pub(crate) fn range(&self) -> HeaderValue {
        HeaderValue::from_str(&format!("bytes={}-{}", self.from, self.end - 1)).expect("ascii")
    }
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

/// What an answer to a part's request means.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PartAnswer {
    /// `206` with exactly the range asked for: its body is the part's.
    Body,
    /// `200`: the server ignores `Range`; its body is the whole blob.
    WholeBlob,
    /// `416`: the server cannot serve the range.
    Unsatisfiable,
}

/// A `206` whose `Content-Range` is not the range asked for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct WrongRange;

/// Why bytes could not be written.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// More bytes than the manifest declares (or than the part holds).
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
    /// Opens the partial download of `digest` in `store`: what an earlier
    /// run left there is kept (its parts record says which bytes are in
    /// place; without one, the file is one stream's prefix) and its complete
    /// prefix hashed. A record that does not fit is reset.
    pub(crate) fn open(store: &OciStore, digest: &Digest, size: u64) -> io::Result<Self> {
        let path = store.partial_path(digest);
        let record = path.with_extension("parts");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)?;
        let len = file.metadata()?.len();
        let layout = match std::fs::read_to_string(&record) {
            Ok(text) => Layout::parse(&text, size).filter(|l| l.furthest() <= len && len <= size),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                (len <= size).then(|| Layout::single(size, len))
            }
            Err(_) => None,
        };
        let valid = layout.is_some();
        let mut download = Self {
            digest: digest.clone(),
            size,
            path,
            shared: Arc::new(Shared {
                file,
                record,
                layout: Mutex::new(layout.unwrap_or_else(|| Layout::single(size, 0))),
                grew: Condvar::new(),
                stop: AtomicBool::new(false),
            }),
            hasher: Some(Hasher::for_digest(digest)),
            hashed: 0,
            resumed_from: 0,
            buf: Vec::new(),
            writeback_from: 0,
        };
        if !valid {
            download.reset()?;
        }
        // Hash the complete prefix an earlier run left.
        let prefix = download.shared.layout().prefix();
        let mut buf = vec![0u8; HASH_CHUNK];
        let hasher = download.hasher.as_mut().expect("not hashing");
        while download.hashed < prefix {
            let n = (prefix - download.hashed).min(HASH_CHUNK as u64) as usize;
            download
                .shared
                .file
                .read_exact_at(&mut buf[..n], download.hashed)?;
            hasher.update(&buf[..n]);
            download.hashed += n as u64;
        }
        if download.shared.layout().is_single() {
            download.shared.file.set_len(prefix)?;
        }
        download.resumed_from = download.shared.layout().present();
        download.writeback_from = download.hashed;
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

    /// One stream: bytes received (and hashed) so far, in order.
    pub(crate) fn offset(&self) -> u64 {
        self.hashed
    }

    /// Bytes in the file (all parts together), for progress reports.
    pub(crate) fn present(&self) -> u64 {
        self.shared.layout().present() + self.buf.len() as u64
    }

    /// Bytes an earlier run had left, that this one did not download.
    pub(crate) fn resumed_from(&self) -> u64 {
        self.resumed_from.min(self.size)
    }

    /// Whether every declared byte is in the file.
    pub(crate) fn is_complete(&self) -> bool {
        self.hashed >= self.size
    }

    /// One stream: the `Range` header the next request carries, if any.
    pub(crate) fn range(&self) -> Option<HeaderValue> {
        (self.hashed > 0)
            .then(|| HeaderValue::from_str(&format!("bytes={}-", self.hashed)).expect("ascii"))
    }

    /// The one place a partial download starts over: an empty file, no
    /// parts record, a fresh hash, offset 0.
    pub(crate) fn reset(&mut self) -> io::Result<()> {
        self.buf.clear();
        self.shared.file.set_len(0)?;
        match std::fs::remove_file(&self.shared.record) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        *self.shared.layout() = Layout::single(self.size, 0);
        self.hasher = Some(Hasher::for_digest(&self.digest));
        self.hashed = 0;
        self.resumed_from = 0;
        self.writeback_from = 0;
        Ok(())
    }

    /// One stream: what a successful answer (`status`, its `Content-Range`)
    /// to the request for [`Self::range`] means; resets the file if the
    /// answer starts over. Other statuses are the caller's.
    pub(crate) fn accept(
        &mut self,
        status: StatusCode,
        content_range: Option<&str>,
    ) -> io::Result<Result<Answer, WrongRange>> {
        Ok(match status {
            StatusCode::OK if self.hashed > 0 => {
                // The server ignored the range: start over.
                self.reset()?;
                Ok(Answer::Restarted)
            }
            StatusCode::PARTIAL_CONTENT => {
                let want = ContentRange {
                    start: self.hashed,
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

    /// One stream from here on: a download left in parts keeps only its
    /// complete prefix (the stream continues from there).
    pub(crate) fn as_one_stream(&mut self) -> io::Result<()> {
        let mut layout = self.shared.layout();
        if layout.is_single() {
            return Ok(());
        }
        let prefix = layout.prefix();
        debug_assert_eq!(prefix, self.hashed, "the prefix is hashed");
        *layout = Layout::single(self.size, prefix);
        drop(layout);
        self.shared.file.set_len(prefix)?;
        match std::fs::remove_file(&self.shared.record) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// One stream: appends `bytes` to the file and the hash.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        if self.hashed + bytes.len() as u64 > self.size {
            return Err(WriteError::TooLarge);
        }
        self.hasher
            .as_mut()
            .expect("one stream hashes inline")
            .update(bytes);
        let wrote =
            stage(&self.shared.file, &mut self.buf, self.hashed, bytes).map_err(WriteError::Io)?;
        self.hashed += bytes.len() as u64;
        if wrote {
            self.written().map_err(WriteError::Io)?;
        }
        Ok(())
    }

    /// One stream: writes out what is buffered (what arrived is kept for a
    /// resume).
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let at = self.hashed - self.buf.len() as u64;
        self.shared.file.write_all_at(&self.buf, at)?;
        self.buf.clear();
        self.written()
    }

    /// One stream: bytes reached the file.
    fn written(&mut self) -> io::Result<()> {
        let end = self.hashed - self.buf.len() as u64;
        self.shared.layout().done[0] = end;
        if end - self.writeback_from >= WRITEBACK_CHUNK {
            start_writeback(
                &self.shared.file,
                self.writeback_from,
                end - self.writeback_from,
            );
            self.writeback_from = end;
        }
        Ok(())
    }

    /// Parts from here on: cuts the blob into parts of `part_size` (unless
    /// an earlier run did already: its cut is kept), records the layout,
    /// and returns the parts still missing, in order.
    pub(crate) fn cut_into_parts(&mut self, part_size: u64) -> io::Result<Vec<Part>> {
        self.flush()?;
        {
            let mut layout = self.shared.layout();
            if layout.is_single() {
                *layout = Layout::parts(self.size, part_size, layout.prefix());
            }
        }
        self.shared.save()?;
        let layout = self.shared.layout();
        Ok((0..layout.done.len())
            .filter_map(|index| {
                let (start, end) = layout.bounds(index);
                let from = start + layout.done[index];
                (from < end).then_some(Part { index, from, end })
            })
            .collect())
    }

    /// A writer for `part`, at the offset it resumes from.
    pub(crate) fn part_writer(&self, part: Part) -> PartWriter {
        PartWriter {
            shared: self.shared.clone(),
            part,
            pos: part.from,
            buf: Vec::new(),
            writeback_from: part.from,
        }
    }

    /// What an answer to the request for `part` means. A `206` must carry
    /// exactly the part's range.
    pub(crate) fn accept_part(
        &self,
        part: &PartWriter,
        status: StatusCode,
        content_range: Option<&str>,
    ) -> Result<PartAnswer, WrongRange> {
        match status {
            StatusCode::PARTIAL_CONTENT => {
                let want = ContentRange {
                    start: part.pos,
                    end: part.part.end - 1,
                    total: Some(self.size),
                };
                match content_range.and_then(ContentRange::parse) {
                    Some(got) if got.matches(&want) => Ok(PartAnswer::Body),
                    _ => Err(WrongRange),
                }
            }
            StatusCode::OK => Ok(PartAnswer::WholeBlob),
            StatusCode::RANGE_NOT_SATISFIABLE => Ok(PartAnswer::Unsatisfiable),
            _ => Err(WrongRange),
        }
    }

    /// Hands the hash to a thread that follows the complete prefix as the
    /// parts write it. [`PrefixHasher::finish`] gives it back.
    pub(crate) fn hash_parts(&mut self) -> PrefixHasher {
        let hasher = self.hasher.take().expect("hashing once at a time");
        let shared = self.shared.clone();
        shared.stop.store(false, Ordering::SeqCst);
        let hashed = self.hashed;
        let task = tokio::task::spawn_blocking(move || follow_prefix(&shared, hasher, hashed));
        PrefixHasher {
            shared: self.shared.clone(),
            task: Some(task),
        }
    }

    /// Takes the hash back from [`PrefixHasher::finish`].
    pub(crate) fn hashed_parts(&mut self, (hasher, hashed): (Hasher, u64)) {
        self.hasher = Some(hasher);
        self.hashed = hashed;
    }

    /// Records which parts are in the file, for a later run.
    pub(crate) fn save_parts(&self) -> io::Result<()> {
        if self.shared.layout().is_single() {
            return Ok(());
        }
        self.shared.save()
    }

    /// Verifies the complete file against the digest; if it matches, syncs
    /// it (off the async workers) and moves it under `blobs/`.
    pub(crate) async fn commit(mut self, store: &OciStore) -> Result<Finished, CommitError> {
        self.flush().map_err(CommitError::Io)?;
        let hasher = self
            .hasher
            .replace(Hasher::for_digest(&self.digest))
            .expect("the hash is back");
        if self.hashed != self.size || hasher.finish_hex() != self.digest.hex() {
            self.reset().map_err(CommitError::Io)?;
            return Ok(Finished::Mismatch(Box::new(self)));
        }
        let digest = self.digest.clone();
        let shared = self.shared.clone();
        // Durable before it is visible under blobs/.
        tokio::task::spawn_blocking(move || shared.file.sync_data())
            .await
            .expect("the sync task does not panic")
            .map_err(CommitError::Io)?;
        // Complete and in order: the file no longer needs its record.
        match std::fs::remove_file(&self.shared.record) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(CommitError::Io(e)),
            _ => {}
        }
        store.commit_partial(&digest).map_err(CommitError::Store)?;
        Ok(Finished::Committed)
    }

    /// Gives the download up for good: the partial file is removed.
    pub(crate) fn discard(self) {
        let _ = std::fs::remove_file(&self.shared.record);
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Shared {
    fn layout(&self) -> MutexGuard<'_, Layout> {
        self.layout.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rewrites the parts record (atomically: a crash leaves the old one or
    /// the new one). Not synced: after a crash, a record ahead of the data
    /// costs a refetch (the digest check catches it), never a wrong blob.
    fn save(&self) -> io::Result<()> {
        let layout = self.layout();
        let text = layout.render();
        let tmp = self.record.with_extension("parts-tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.record)
    }
}

/// Writes one part at its offset.
pub(crate) struct PartWriter {
    shared: Arc<Shared>,
    part: Part,
    pos: u64,
    buf: Vec<u8>,
    writeback_from: u64,
}

impl PartWriter {
    /// Whether the part is complete (written or buffered).
    pub(crate) fn is_complete(&self) -> bool {
        self.pos >= self.part.end
    }

    /// The rest of the part, to ask for after a drop.
    pub(crate) fn rest(&self) -> Part {
        Part {
            from: self.pos,
            ..self.part
        }
    }

    /// Appends `bytes` to the part.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        if self.pos + bytes.len() as u64 > self.part.end {
            return Err(WriteError::TooLarge);
        }
        let wrote =
            stage(&self.shared.file, &mut self.buf, self.pos, bytes).map_err(WriteError::Io)?;
        self.pos += bytes.len() as u64;
        if self.is_complete() {
            self.flush().map_err(WriteError::Io)?;
        } else if wrote {
            self.written().map_err(WriteError::Io)?;
        }
        Ok(())
    }

    /// Writes out what is buffered and tells the prefix hasher; a complete
    /// part is recorded.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let at = self.pos - self.buf.len() as u64;
            self.shared.file.write_all_at(&self.buf, at)?;
            self.buf.clear();
        }
        self.written()
    }

    /// Bytes reached the file: the layout and the prefix hasher are told.
    fn written(&mut self) -> io::Result<()> {
        let end = self.pos - self.buf.len() as u64;
        {
            let mut layout = self.shared.layout();
            let (start, _) = layout.bounds(self.part.index);
            layout.done[self.part.index] = end - start;
        }
        self.shared.grew.notify_all();
        let complete = end >= self.part.end;
        if end - self.writeback_from >= WRITEBACK_CHUNK || (complete && end > self.writeback_from) {
            start_writeback(
                &self.shared.file,
                self.writeback_from,
                end - self.writeback_from,
            );
            self.writeback_from = end;
        }
        if complete {
            self.shared.save()?;
        }
        Ok(())
    }
}

/// Puts `bytes`, which belong at offset `at`, on their way to `file`: small
/// chunks are collected in `buf` (fewer system calls), large ones written as
/// they come. `buf` holds the bytes just before `at`. Returns whether
/// anything reached the file.
fn stage(file: &File, buf: &mut Vec<u8>, at: u64, bytes: &[u8]) -> io::Result<bool> {
    let mut wrote = false;
    if !buf.is_empty() && buf.len() + bytes.len() > WRITE_CHUNK {
        file.write_all_at(buf, at - buf.len() as u64)?;
        buf.clear();
        wrote = true;
    }
    if buf.is_empty() && bytes.len() >= WRITE_CHUNK {
        file.write_all_at(bytes, at)?;
        return Ok(true);
    }
    buf.extend_from_slice(bytes);
    Ok(wrote)
}

/// The thread hashing the complete prefix of a download in parts.
pub(crate) struct PrefixHasher {
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<io::Result<(Hasher, u64)>>>,
}

impl PrefixHasher {
    /// Waits for the hash to reach the end of the complete prefix (the end
    /// of the blob once every part is in), stops the thread, and returns the
    /// hash and how many bytes it covers.
    pub(crate) async fn finish(mut self) -> io::Result<(Hasher, u64)> {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.grew.notify_all();
        let task = self.task.take().expect("finished once");
        task.await.expect("the hashing thread does not panic")
    }
}

impl Drop for PrefixHasher {
    fn drop(&mut self) {
        // Abandoned (the pull was cancelled): let the thread end.
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.grew.notify_all();
    }
}

/// Hashes the file from `hashed` on, following the complete prefix, until
/// told to stop and caught up (or at the end of the blob).
fn follow_prefix(
    shared: &Shared,
    mut hasher: Hasher,
    mut hashed: u64,
) -> io::Result<(Hasher, u64)> {
    let mut buf = vec![0u8; HASH_CHUNK];
    loop {
        let (prefix, size) = {
            let mut layout = shared.layout();
            loop {
                // Whole chunks while the parts flow (fewer wake-ups and
                // reads); the rest at the end.
                let prefix = layout.prefix();
                if prefix >= hashed + HASH_CHUNK as u64
                    || prefix == layout.size
                    || shared.stop.load(Ordering::SeqCst)
                {
                    break;
                }
                layout = shared
                    .grew
                    .wait_timeout(layout, Duration::from_millis(100))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            (layout.prefix(), layout.size)
        };
        if hashed >= prefix {
            // Caught up: at the end of the blob, or stopped.
            if hashed == size || shared.stop.load(Ordering::SeqCst) {
                return Ok((hasher, hashed));
            }
            continue;
        }
        while hashed < prefix {
            let n = (prefix - hashed).min(HASH_CHUNK as u64) as usize;
            shared.file.read_exact_at(&mut buf[..n], hashed)?;
            hasher.update(&buf[..n]);
            hashed += n as u64;
        }
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

    #[test]
    fn the_parts_record_round_trips_and_refuses_what_does_not_fit() {
        let mut layout = Layout::parts(1000, 300, 450);
        assert_eq!(layout.done, vec![300, 150, 0, 0]);
        assert_eq!(layout.prefix(), 450);
        layout.done[3] = 100;
        assert_eq!((layout.present(), layout.furthest()), (550, 1000));
        let text = layout.render();
        assert_eq!(Layout::parse(&text, 1000), Some(layout.clone()));
        assert_eq!(Layout::parse(&text, 999), None, "another size");
        let too_much = text.replace("done 300 150 0 100", "done 300 301 0 100");
        assert_eq!(Layout::parse(&too_much, 1000), None);
        let too_few = text.replace("done 300 150 0 100", "done 300 150 0");
        assert_eq!(Layout::parse(&too_few, 1000), None);
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
    async fn parts_written_out_of_order_are_hashed_in_order_and_resumed_by_another_run() {
        let dir = tempfile::tempdir().unwrap();
        let store = OciStore::open(dir.path()).unwrap();
        let blob: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let digest = digest_of(&blob);
        let size = blob.len() as u64;

        // A first run writes 1500 bytes in one stream, then goes to parts
        // of 3000, writes part 2 whole and part 3 half, and stops.
        let mut first = BlobDownload::open(&store, &digest, size).unwrap();
        first.write(&blob[..1500]).unwrap();
        let parts = first.cut_into_parts(3000).unwrap();
        let starts: Vec<u64> = parts.iter().map(|p| p.from).collect();
        assert_eq!(starts, vec![1500, 3000, 6000, 9000]);
        let hashing = first.hash_parts();
        let mut p2 = first.part_writer(parts[2]);
        p2.write(&blob[6000..9000]).unwrap();
        assert!(matches!(p2.write(b"x"), Err(WriteError::TooLarge)));
        let mut p3 = first.part_writer(parts[3]);
        p3.write(&blob[9000..9500]).unwrap();
        p3.flush().unwrap();
        first.hashed_parts(hashing.finish().await.unwrap());
        assert_eq!(first.offset(), 1500, "the hash stops at the first hole");
        first.save_parts().unwrap();
        drop(first);

        // The next run fetches only what is missing, and the hash follows.
        let mut dl = BlobDownload::open(&store, &digest, size).unwrap();
        assert_eq!(dl.resumed_from(), 1500 + 3000 + 500);
        let parts = dl.cut_into_parts(1 << 20).unwrap();
        let missing: Vec<(u64, u64)> = parts.iter().map(|p| (p.from, p.end)).collect();
        assert_eq!(missing, vec![(1500, 3000), (3000, 6000), (9500, 10_000)]);
        let hashing = dl.hash_parts();
        for part in parts.iter().rev() {
            let mut w = dl.part_writer(*part);
            assert_eq!(
                dl.accept_part(
                    &w,
                    StatusCode::PARTIAL_CONTENT,
                    Some("bytes 1500-9999/10000")
                ),
                Err(WrongRange)
            );
            let range = format!("bytes {}-{}/10000", part.from, part.end - 1);
            assert_eq!(
                dl.accept_part(&w, StatusCode::PARTIAL_CONTENT, Some(&range)),
                Ok(PartAnswer::Body)
            );
            w.write(&blob[part.from as usize..part.end as usize])
                .unwrap();
            assert!(w.is_complete());
        }
        dl.hashed_parts(hashing.finish().await.unwrap());
        assert!(dl.is_complete());
        assert!(matches!(dl.commit(&store).await, Ok(Finished::Committed)));
        assert!(store.has_blob(&digest, Some(size)));
        assert_eq!(std::fs::read(store.blob_path(&digest)).unwrap(), blob);
        assert!(
            std::fs::read_dir(dir.path().join("ingest"))
                .unwrap()
                .next()
                .is_none()
        );
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
