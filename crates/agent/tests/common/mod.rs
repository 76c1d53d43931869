//! Shared fixtures: an app identity made the way dstack's KMS makes one,
//! an agent served on a temporary socket, and a plain HTTP/1.1 client.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use agent::{AgentConfig, AgentIdentity, AttestationKey};
use k256::ecdsa::SigningKey;
use sha3::{Digest, Keccak256};

/// An app as the KMS sees it: its id, compose, and the KMS root key.
pub struct App {
    pub kms_root: SigningKey,
    pub app_id: [u8; 20],
    pub app_compose: String,
}

pub const COMPOSE: &str = r#"{"manifest_version":2,"name":"agent-test","runner":"docker-compose","docker_compose_file":"services: {}\n"}"#;

impl App {
    pub fn new(kms_seed: u8, app_seed: u8) -> Self {
        Self {
            kms_root: SigningKey::from_slice(&[kms_seed; 32]).unwrap(),
            app_id: [app_seed; 20],
            app_compose: COMPOSE.to_string(),
        }
    }

    /// The app key as dstack's KMS derives it: HKDF-SHA256, salt "RATLS",
    /// info app_id ‖ "app-key" (written here independently of the crate).
    pub fn app_key(&self) -> [u8; 32] {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"RATLS"), &self.kms_root.to_bytes());
        let mut okm = [0u8; 32];
        hk.expand_multi_info(&[&self.app_id, b"app-key"], &mut okm)
            .unwrap();
        okm
    }

    pub fn app_pubkey(&self) -> Vec<u8> {
        SigningKey::from_slice(&self.app_key())
            .unwrap()
            .verifying_key()
            .to_sec1_bytes()
            .to_vec()
    }

    pub fn kms_pubkey(&self) -> [u8; 33] {
        self.kms_root
            .verifying_key()
            .to_sec1_bytes()
            .as_ref()
            .try_into()
            .unwrap()
    }

    pub fn compose_hash(&self) -> String {
        hex::encode(sha2::Sha256::digest(self.app_compose.as_bytes()))
    }

    pub fn identity(&self) -> AgentIdentity {
        let msg = [
            b"dstack-kms-issued:".as_slice(),
            &self.app_id,
            &self.app_pubkey(),
        ]
        .concat();
        let (sig, recid) = self
            .kms_root
            .sign_digest_recoverable(Keccak256::new_with_prefix(&msg))
            .unwrap();
        let mut kms_sig = [0u8; 65];
        kms_sig[..64].copy_from_slice(&sig.to_bytes());
        kms_sig[64] = recid.to_byte();
        AgentIdentity {
            app_id: hex::encode(self.app_id),
            instance_id: "00112233445566778899aabbccddeeff00112233".into(),
            compose_hash: self.compose_hash(),
            app_compose: self.app_compose.clone(),
            app_key: zeroize::Zeroizing::new(self.app_key()),
            app_key_kms_signature: kms_sig,
            kms_root_public_key: self.kms_pubkey(),
            os_image_hash: "ab".repeat(32),
        }
    }
}

/// The attestation key of the tests.
pub fn attestation_key() -> AttestationKey {
    AttestationKey::from_seed(&[7u8; 32])
}

/// An agent serving on `dstack.sock` and `tappd.sock` in a temp folder, on
/// a runtime of its own; stopped on drop.
pub struct Served {
    pub dir: testkit::TestDir,
    pub dstack: PathBuf,
    pub tappd: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Served {
    pub fn start(app: &App) -> Self {
        let dir = testkit::tempdir("agent");
        let dstack = dir.join("dstack.sock");
        let tappd = dir.join("tappd.sock");
        let config = AgentConfig {
            identity: app.identity(),
            sockets: vec![dstack.clone(), tappd.clone()],
            attestation_key: attestation_key(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(agent::serve(config, async move {
                let _ = rx.await;
            }))
        });
        // Wait on the condition: both sockets accept.
        for _ in 0..500 {
            if UnixStream::connect(&dstack).is_ok() && UnixStream::connect(&tappd).is_ok() {
                return Self {
                    dir,
                    dstack,
                    tappd,
                    stop: Some(tx),
                    thread: Some(thread),
                };
            }
            if thread.is_finished() {
                panic!("agent ended: {:?}", thread.join().unwrap());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the agent's sockets never accepted");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A response: status, headers (lowercased names), body.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .expect("an error field")
            .to_string()
    }
}

/// One request over a fresh connection (`Connection: close`).
pub fn request(
    sock: &Path,
    method: &str,
    target: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Reply {
    let mut s = UnixStream::connect(sock).unwrap();
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse(&raw)
}

/// POST JSON.
pub fn post(sock: &Path, path: &str, body: &str) -> Reply {
    request(
        sock,
        "POST",
        path,
        Some("application/json"),
        body.as_bytes(),
    )
}

fn parse(raw: &[u8]) -> Reply {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8(raw[..end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

/// The compressed public key a recoverable signature over
/// `keccak256(message)` recovers to (k256 directly, not the agent's code).
pub fn recover(message: &[u8], sig: &[u8]) -> Vec<u8> {
    assert_eq!(sig.len(), 65, "a recoverable signature is 65 bytes");
    let signature = k256::ecdsa::Signature::from_slice(&sig[..64]).unwrap();
    let recid = k256::ecdsa::RecoveryId::from_byte(sig[64]).unwrap();
    k256::ecdsa::VerifyingKey::recover_from_digest(
        Keccak256::new_with_prefix(message),
        &signature,
        recid,
    )
    .unwrap()
    .to_sec1_bytes()
    .to_vec()
}
