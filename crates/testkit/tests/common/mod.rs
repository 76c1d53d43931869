//! Shared helpers for the testkit's own tests: a `curl` wrapper.
#![allow(dead_code)]

use std::process::Command;

/// A response as curl saw it.
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// curl's exit code (18 = partial file, i.e. a cut connection).
    pub exit: i32,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Runs `curl -sS <args>` and parses the (last) header block.
pub fn curl(args: &[&str]) -> Resp {
    let dir = tempfile::tempdir().unwrap();
    let h = dir.path().join("h");
    let b = dir.path().join("b");
    let out = Command::new("curl")
        .arg("-sS")
        .arg("--max-time")
        .arg("20")
        .arg("-D")
        .arg(&h)
        .arg("-o")
        .arg(&b)
        .args(args)
        .output()
        .expect("run curl");
    let raw = std::fs::read_to_string(&h).unwrap_or_default();
    let block = raw
        .split("\r\n\r\n")
        .filter(|s| s.starts_with("HTTP/"))
        .last()
        .unwrap_or("");
    let mut lines = block.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: std::fs::read(&b).unwrap_or_default(),
        exit: out.status.code().unwrap_or(-1),
    }
}

pub const OCI_ACCEPT: &str = "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// sha256 of data as `sha256:<hex>`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", testkit::sha256_hex(data))
}
