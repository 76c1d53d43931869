//! [`OciStore`]: a content-addressed OCI image layout directory.
//!
//! Layout (the OCI image-layout spec, so `skopeo` and `umoci` read it):
//! `oci-layout`, `index.json`, `blobs/<alg>/<hex>`. Downloads in progress live
//! in `ingest/<alg>-<hex>.partial` and are renamed into `blobs/` only after
//! their size and digest are verified, so a blob under `blobs/` is always
//! complete and correct. A partial file survives a crash and is resumed.
//!
//! `index.json` gets one entry per pulled image, annotated
//! `org.opencontainers.image.ref.name` with the full normalised reference;
//! it is rewritten atomically under an exclusive file lock.

use crate::error::{Category, Hint, PullError};
use crate::manifest::Descriptor;
use crate::reference::{Digest, DigestAlgorithm};
use sha2::Digest as _;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The annotation naming an image in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A running hash for a digest's algorithm.
pub(crate) enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub(crate) fn for_digest(d: &Digest) -> Self {
        match d.algorithm() {
            DigestAlgorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            DigestAlgorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// Lowercase hex of the hash.
    pub(crate) fn finish_hex(self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

/// Whether `bytes` hash to `digest`.
pub(crate) fn verify(digest: &Digest, bytes: &[u8]) -> bool {
    let mut h = Hasher::for_digest(digest);
    h.update(bytes);
    h.finish_hex() == digest.hex()
}

/// The sha256 digest of `bytes`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> Digest {
    Digest::sha256(&hex::encode(sha2::Sha256::digest(bytes))).expect("sha256 hex is valid")
}

/// An OCI image layout directory.
#[derive(Clone, Debug)]
pub struct OciStore {
    root: PathBuf,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> PullError {
    if e.kind() == std::io::ErrorKind::StorageFull {
        return PullError::config(format!(
            "cannot {what} {}: the disk is full{}",
            path.display(),
            free_space(path)
                .map(|f| format!(" ({} free)", human_size(f)))
                .unwrap_or_default()
        ))
        .with_hint(Hint::FreeSpace);
    }
    PullError::config(format!("cannot {what} {}: {e}", path.display()))
        .with_hint(Hint::StoreWritable)
}

/// Bytes available to this user on the file system holding `path`.
pub(crate) fn free_space(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` is a writable
    // statvfs that the call fills in on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    // Both are 64-bit on 64-bit Linux; the conversion keeps 32-bit targets building.
    #[allow(clippy::useless_conversion)]
    let (blocks, block_size) = (u64::from(st.f_bavail), u64::from(st.f_frsize));
    Some(blocks.saturating_mul(block_size))
}

/// `812 KiB`, `24.0 MiB`, `1.50 GiB`.
pub(crate) fn human_size(n: u64) -> String {
    const KIB: f64 = 1024.0;
    let f = n as f64;
    if f >= KIB * KIB * KIB {
        format!("{:.2} GiB", f / (KIB * KIB * KIB))
    } else if f >= KIB * KIB {
        format!("{:.1} MiB", f / (KIB * KIB))
    } else if f >= KIB {
        format!("{:.0} KiB", f / KIB)
    } else {
        format!("{n} bytes")
    }
}

/// What a blob occupies on disk beyond its bytes, at most (block rounding).
const PER_BLOB_SLACK: u64 = 4096;
/// Room kept for `index.json` and the like.
const METADATA_SLACK: u64 = 64 << 10;

impl OciStore {
    /// Opens (creating if needed) the layout at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, PullError> {
        let root = root.into();
        for dir in [
            root.join("blobs/sha256"),
            root.join("blobs/sha512"),
            root.join("ingest"),
        ] {
            fs::create_dir_all(&dir).map_err(|e| io_err("create", &dir, e))?;
        }
        let layout = root.join("oci-layout");
        if !layout.exists() {
            write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = root.join("index.json");
        if !index.exists() {
            write_atomic(&index, br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#)?;
        }
        Ok(Self { root })
    }

    /// The layout's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `digest` lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }

    /// Where a download of `digest` in progress lives.
    pub(crate) fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("ingest").join(format!(
            "{}-{}.partial",
            digest.algorithm().name(),
            digest.hex()
        ))
    }

    /// Whether the blob is present with the expected size.
    pub fn has_blob(&self, digest: &Digest, size: Option<u64>) -> bool {
        match fs::metadata(self.blob_path(digest)) {
            Ok(m) => m.is_file() && size.is_none_or(|s| s == m.len()),
            Err(_) => false,
        }
    }

    /// Reads a small blob (a manifest or config), verifying its digest.
    pub fn read_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>, PullError> {
        let path = self.blob_path(digest);
        let mut buf = Vec::new();
        match File::open(&path) {
            Ok(mut f) => f
                .read_to_end(&mut buf)
                .map_err(|e| io_err("read", &path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &path, e)),
        };
        if !verify(digest, &buf) {
            // Corrupted on disk: drop it so it is fetched again.
            let _ = fs::remove_file(&path);
            return Ok(None);
        }
        Ok(Some(buf))
    }

    /// Stores a small blob already in memory after verifying its digest.
    pub fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), PullError> {
        if !verify(digest, bytes) {
            return Err(PullError::new(
                Category::Integrity,
                format!("content does not match its digest {digest}"),
            ));
        }
        write_atomic(&self.blob_path(digest), bytes)
    }

    /// Bytes of `digest` already downloaded into `ingest/` by an earlier,
    /// interrupted run.
    pub(crate) fn partial_len(&self, digest: &Digest) -> u64 {
        fs::metadata(self.partial_path(digest))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Bytes free on the disk holding the store.
    pub fn free_space(&self) -> Option<u64> {
        free_space(&self.root)
    }

    /// How many more bytes the blobs `(digest, size)` need on disk: those
    /// not in `blobs/`, less what `ingest/` already holds of them.
    pub(crate) fn bytes_needed<'a>(
        &self,
        blobs: impl IntoIterator<Item = (&'a Digest, u64)>,
    ) -> u64 {
        let mut seen = std::collections::HashSet::new();
        blobs
            .into_iter()
            .filter(|(d, _)| seen.insert(*d))
            .filter(|(d, size)| !self.has_blob(d, Some(*size)))
            .map(|(d, size)| size.saturating_sub(self.partial_len(d)))
            .sum()
    }

    /// Fails with a `config` error naming the store's folder and the space
    /// needed if the disk holding it has less than `needed` bytes free (plus
    /// a little for file system rounding and `index.json`).
    pub(crate) fn check_room(&self, needed: u64, blobs: usize) -> Result<(), PullError> {
        if needed == 0 {
            return Ok(());
        }
        let Some(free) = self.free_space() else {
            return Ok(());
        };
        let want = needed + PER_BLOB_SLACK * blobs as u64 + METADATA_SLACK;
        if free < want {
            return Err(self.disk_full(needed, Some(free)));
        }
        Ok(())
    }

    /// The disk holding the store has no room for `needed` more bytes.
    pub(crate) fn disk_full(&self, needed: u64, free: Option<u64>) -> PullError {
        PullError::config(format!(
            "not enough space for the pull in {}: the image needs {} and the disk has {} free",
            self.root.display(),
            human_size(needed),
            free.map(human_size).unwrap_or_else(|| "no space".into()),
        ))
        .with_hint(Hint::FreeSpace)
    }

    /// Moves a verified partial download into place.
    pub(crate) fn commit_partial(&self, digest: &Digest) -> Result<(), PullError> {
        let from = self.partial_path(digest);
        let to = self.blob_path(digest);
        fs::rename(&from, &to).map_err(|e| io_err("store", &to, e))
    }

    /// Records `manifest` in `index.json` under `ref_name`, replacing an
    /// earlier entry of the same name.
    pub fn add_ref(&self, ref_name: &str, manifest: &Descriptor) -> Result<(), PullError> {
        let index_path = self.root.join("index.json");
        let lock_path = self.root.join("index.json.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err("lock", &lock_path, e))?;
        lock.lock().map_err(|e| io_err("lock", &lock_path, e))?;
        let bytes = fs::read(&index_path).map_err(|e| io_err("read", &index_path, e))?;
        let mut index: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| {
            PullError::config(format!("{} is not valid JSON", index_path.display()))
                .hint("the store is damaged; move it away and pull again")
        })?;
        let mut entry = serde_json::to_value(manifest).expect("descriptor serializes");
        entry["annotations"] = serde_json::json!({ REF_NAME: ref_name });
        let manifests = index
            .get_mut("manifests")
            .and_then(|m| m.as_array_mut())
            .ok_or_else(|| {
                PullError::config(format!("{} has no manifests list", index_path.display()))
            })?;
        manifests.retain(|m| {
            m.pointer("/annotations/org.opencontainers.image.ref.name")
                .and_then(|v| v.as_str())
                != Some(ref_name)
        });
        manifests.push(entry);
        let out = serde_json::to_vec_pretty(&index).expect("json serializes");
        write_atomic(&index_path, &out)?;
        drop(lock);
        Ok(())
    }
}

/// Writes `bytes` to a temporary file next to `path`, syncs it, renames it,
/// syncs the folder ([`ownership::write_atomic`]; mode 0666 less the umask,
/// as `File::create` makes files).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PullError> {
    ownership::write_atomic(path, bytes, 0o666).map_err(|e| io_err("write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_and_refs() {
        let dir = std::env::temp_dir().join(format!("berth-store-{}", fastrand::u64(..)));
        let store = OciStore::open(&dir).unwrap();
        let d = sha256_digest(b"hello");
        assert!(!store.has_blob(&d, None));
        assert!(store.put_blob(&d, b"hellO").is_err());
        store.put_blob(&d, b"hello").unwrap();
        assert!(store.has_blob(&d, Some(5)));
        assert!(!store.has_blob(&d, Some(6)));
        assert_eq!(store.read_blob(&d).unwrap().unwrap(), b"hello");
        let desc = Descriptor {
            media_type: crate::manifest::OCI_MANIFEST.into(),
            digest: d.clone(),
            size: 5,
            platform: None,
        };
        store.add_ref("example.com/a:1", &desc).unwrap();
        store.add_ref("example.com/a:1", &desc).unwrap();
        store.add_ref("example.com/b:1", &desc).unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
        let a = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| {
                m.pointer("/annotations/org.opencontainers.image.ref.name")
                    .and_then(|v| v.as_str())
                    == Some("example.com/a:1")
            })
            .unwrap();
        assert_eq!(a["digest"], d.to_string());
        // Corruption on disk is detected and the blob dropped.
        fs::write(store.blob_path(&d), b"HELLO").unwrap();
        assert!(store.read_blob(&d).unwrap().is_none());
        fs::remove_dir_all(dir).unwrap();
    }
}
