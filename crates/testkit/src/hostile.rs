//! [`HostileRegistry`]: a registry that lies, for the tests of what a pull
//! does when a registry is not merely faulty but hostile.
//!
//! The [`crate::FaultProxy`] alters what a real registry says; some lies
//! cannot be made that way, because the real registry checks what is pushed
//! to it: a manifest announcing a layer of another size than the blob, or
//! one of 25,000 layers. This is a real HTTP/1.1 server on a free loopback
//! port (port 0, reported by [`HostileRegistry::host_port`]) that serves one
//! manifest from memory for every repository and tag, and blobs from memory,
//! each answered the way its [`BlobAnswer`] says. Every answer closes its
//! connection. It records every blob request it receives.

use sha2::Digest as _;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The OCI image manifest media type, which [`manifest`] writes.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// How the registry answers a blob request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobAnswer {
    /// `200`, `Content-Length` the blob's true length and the whole blob,
    /// whatever the `Range` asked for.
    Whole,
    /// `200` announcing the whole blob (`Content-Length` its true length),
    /// then only its first `n` bytes, and the connection closes: a download
    /// that never completes, and never resumes (`Range` is ignored).
    CutAfter(usize),
    /// `200` with `Transfer-Encoding: chunked`, the whole blob in one chunk
    /// and the last chunk: a body that ends properly, with no length
    /// announced.
    Chunked,
    /// `200`, `Content-Length` the blob's true length, one byte every
    /// interval: a body that never goes silent long enough to be cut, and
    /// takes as long as the blob is long.
    Trickle(Duration),
}

/// A blob request the registry received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRequest {
    /// `GET` or `HEAD`.
    pub method: String,
    /// The digest asked for.
    pub digest: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
}

struct Blob {
    bytes: Vec<u8>,
    answer: BlobAnswer,
}

#[derive(Default)]
struct State {
    manifest: Mutex<Option<Vec<u8>>>,
    blobs: Mutex<HashMap<String, Arc<Blob>>>,
    requests: Mutex<Vec<BlobRequest>>,
    stop: AtomicBool,
}

/// A hostile registry on a free loopback port; stopped on drop (answers in
/// progress stop at their next byte).
pub struct HostileRegistry {
    addr: SocketAddr,
    state: Arc<State>,
}

impl HostileRegistry {
    /// Starts an empty registry (every manifest and blob is `404`).
    pub fn start() -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let state = Arc::new(State::default());
        let accepting = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if accepting.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let state = accepting.clone();
                std::thread::spawn(move || {
                    let _ = serve(&state, conn);
                });
            }
        });
        Self { addr, state }
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// The manifest served for every repository and tag or digest.
    pub fn set_manifest(&self, bytes: Vec<u8>) {
        *self.state.manifest.lock().unwrap() = Some(bytes);
    }

    /// Serves `bytes` as a blob, answered as `answer` says. Returns its
    /// digest (`sha256:…`).
    pub fn put_blob(&self, bytes: Vec<u8>, answer: BlobAnswer) -> String {
        let digest = sha256_digest(&bytes);
        self.state
            .blobs
            .lock()
            .unwrap()
            .insert(digest.clone(), Arc::new(Blob { bytes, answer }));
        digest
    }

    /// Every blob request received so far, in arrival order.
    pub fn blob_requests(&self) -> Vec<BlobRequest> {
        self.state.requests.lock().unwrap().clone()
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// An OCI image manifest naming a config and layers as `(digest, size)`
/// descriptors: the sizes are whatever the caller says, true or not.
pub fn manifest(config: (&str, u64), layers: &[(String, u64)]) -> Vec<u8> {
    let descriptor = |media: &str, digest: &str, size: u64| serde_json::json!({ "mediaType": media, "digest": digest, "size": size });
    let layers: Vec<_> = layers
        .iter()
        .map(|(d, s)| descriptor("application/vnd.oci.image.layer.v1.tar", d, *s))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", config.0, config.1),
        "layers": layers,
    }))
    .expect("json")
}

/// Answers one request on `conn`, then closes it.
fn serve(state: &State, conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_owned());
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let head = method == "HEAD";
    let mut out = conn;
    if path == "/v2/" || path == "/v2" {
        return respond(&mut out, "200 OK", "application/json", b"{}", head);
    }
    if path.contains("/manifests/") {
        let manifest = state.manifest.lock().unwrap().clone();
        return match manifest {
            Some(m) => respond(&mut out, "200 OK", OCI_MANIFEST, &m, head),
            None => not_found(&mut out, head),
        };
    }
    let Some((_, digest)) = path.split_once("/blobs/") else {
        return not_found(&mut out, head);
    };
    state.requests.lock().unwrap().push(BlobRequest {
        method: method.clone(),
        digest: digest.to_owned(),
        range,
    });
    let blob = state.blobs.lock().unwrap().get(digest).cloned();
    let Some(blob) = blob else {
        return not_found(&mut out, head);
    };
    let bytes = &blob.bytes;
    let octets = "application/octet-stream";
    match &blob.answer {
        BlobAnswer::Whole => respond(&mut out, "200 OK", octets, bytes, head),
        BlobAnswer::CutAfter(n) => {
            write_head(&mut out, "200 OK", octets, Some(bytes.len()))?;
            if !head {
                out.write_all(&bytes[..(*n).min(bytes.len())])?;
            }
            out.flush()?;
            out.shutdown(std::net::Shutdown::Both)
        }
        BlobAnswer::Chunked => {
            write_head(&mut out, "200 OK", octets, None)?;
            if !head {
                write!(out, "{:x}\r\n", bytes.len())?;
                out.write_all(bytes)?;
                out.write_all(b"\r\n0\r\n\r\n")?;
            }
            out.flush()
        }
        BlobAnswer::Trickle(every) => {
            write_head(&mut out, "200 OK", octets, Some(bytes.len()))?;
            if !head {
                for b in bytes {
                    if state.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    out.write_all(&[*b])?;
                    out.flush()?;
                    std::thread::sleep(*every);
                }
            }
            out.flush()
        }
    }
}

fn write_head(
    out: &mut TcpStream,
    status: &str,
    content_type: &str,
    length: Option<usize>,
) -> std::io::Result<()> {
    let length = match length {
        Some(n) => format!("Content-Length: {n}\r\n"),
        None => "Transfer-Encoding: chunked\r\n".to_owned(),
    };
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{length}Connection: close\r\n\r\n"
    )
}

fn respond(
    out: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    head: bool,
) -> std::io::Result<()> {
    write_head(out, status, content_type, Some(body.len()))?;
    if !head {
        out.write_all(body)?;
    }
    out.flush()
}

fn not_found(out: &mut TcpStream, head: bool) -> std::io::Result<()> {
    respond(
        out,
        "404 Not Found",
        "application/json",
        br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"unknown"}]}"#,
        head,
    )
}
