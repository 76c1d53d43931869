//! The store on dstack's persistent disk is read back as untrusted: that
//! disk has no integrity protection, so before the pull trusts what the
//! store holds (a blob there is not fetched again), every blob is hashed
//! again, and one that no longer matches its digest is removed, so the
//! pull fetches it again. (The engine then checks each layer it is given
//! against the verified config's diff IDs, and the image ID it reports
//! against the config's digest.)

use sha2::Digest as _;
use std::io::Read;
use std::path::{Path, PathBuf};

/// What the check found.
#[derive(Debug, Default)]
pub struct StoreCheck {
    /// Blobs hashed.
    pub checked: usize,
    /// Bytes hashed.
    pub bytes: u64,
    /// Blobs removed because their bytes no longer match their name.
    pub removed: Vec<String>,
}

fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    Ok((hex::encode(h.finalize()), total))
}

/// Hashes every `blobs/sha256/<hex>` of the store at `root` (a few threads
/// at once) and removes those that do not match.
pub fn check_store(root: &Path) -> StoreCheck {
    let dir = root.join("blobs").join("sha256");
    let files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            })
            .collect(),
        Err(_) => return StoreCheck::default(),
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 4);
    let chunks: Vec<Vec<PathBuf>> = (0..threads)
        .map(|t| files.iter().skip(t).step_by(threads).cloned().collect())
        .collect();
    let results: Vec<StoreCheck> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    let mut out = StoreCheck::default();
                    for path in chunk {
                        let name = path
                            .file_name()
                            .and_then(|n| n.to_str())
                            .unwrap_or_default()
                            .to_ascii_lowercase();
                        out.checked += 1;
                        let good = match hash_file(&path) {
                            Ok((hex, n)) => {
                                out.bytes += n;
                                hex == name
                            }
                            Err(_) => false,
                        };
                        if !good {
                            let _ = std::fs::remove_file(&path);
                            out.removed.push(format!("sha256:{name}"));
                        }
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let mut total = StoreCheck::default();
    for r in results {
        total.checked += r.checked;
        total.bytes += r.bytes;
        total.removed.extend(r.removed);
    }
    total.removed.sort();
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_that_no_longer_matches_is_removed() {
        let dir = std::env::temp_dir().join(format!("berth-verify-{}", std::process::id()));
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let good = b"good bytes";
        let good_name = hex::encode(sha2::Sha256::digest(good));
        std::fs::write(blobs.join(&good_name), good).unwrap();
        let bad_name = hex::encode(sha2::Sha256::digest(b"original"));
        std::fs::write(blobs.join(&bad_name), b"flipped!").unwrap();
        let out = check_store(&dir);
        assert_eq!(out.checked, 2);
        assert_eq!(out.removed, vec![format!("sha256:{bad_name}")]);
        assert!(blobs.join(&good_name).exists() && !blobs.join(&bad_name).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
