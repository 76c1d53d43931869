//! What the KMS process says on its standard output once it serves: the
//! handshake between `berth kms serve` (the `kms` crate) and `berth up` (the
//! `cloud` crate), which starts it as a child and reads these lines back.
//!
//! ```text
//! kms listening on unix:/STATE/kms/kms.sock
//! kms attestation key 5f1c…
//! kms public key 02ab…
//! ```
//!
//! The public key comes last: a reader has everything once it sees it.

/// The first line's prefix; the rest is the KMS's URL.
const LISTENING: &str = "kms listening on ";
/// The second line's prefix; the rest is the simulated TEE's attestation
/// public key (P-256, raw `x ‖ y`, hex).
const ATTESTATION_KEY: &str = "kms attestation key ";
/// The last line's prefix; the rest is the KMS public key (hex).
const PUBLIC_KEY: &str = "kms public key ";

/// A KMS that serves: where, and the public key clients pin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmsReady {
    /// The KMS's URL (`unix:/path/kms.sock`, see [`crate::kms::KmsEndpoint`]).
    pub url: String,
    /// The KMS public key (compressed secp256k1, hex).
    pub public_key: String,
    /// The public key that checks the simulated quotes of this KMS's CVMs
    /// (P-256, raw `x ‖ y`, 128 hex characters; not Intel's).
    pub attestation_public_key: String,
}

impl KmsReady {
    /// The lines the KMS writes, each ending in a newline.
    pub fn render(&self) -> String {
        format!(
            "{LISTENING}{}\n{ATTESTATION_KEY}{}\n{PUBLIC_KEY}{}\n",
            self.url, self.attestation_public_key, self.public_key
        )
    }
}

/// Reads [`KmsReady`] back, one line at a time (other lines are skipped).
#[derive(Debug, Default)]
pub struct KmsReadyReader {
    url: Option<String>,
    attestation: Option<String>,
}

impl KmsReadyReader {
    /// Takes one line (without its newline); the announcement once complete.
    pub fn line(&mut self, line: &str) -> Option<KmsReady> {
        if let Some(url) = line.strip_prefix(LISTENING) {
            self.url = Some(url.to_owned());
        } else if let Some(key) = line.strip_prefix(ATTESTATION_KEY) {
            self.attestation = Some(key.to_owned());
        } else if let Some(key) = line.strip_prefix(PUBLIC_KEY) {
            return Some(KmsReady {
                url: self.url.take()?,
                public_key: key.to_owned(),
                attestation_public_key: self.attestation.take()?,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_rendered_reads_back() {
        let ready = KmsReady {
            url: "unix:/s/kms/kms.sock".into(),
            public_key: "02ab".into(),
            attestation_public_key: "5f1c".into(),
        };
        let mut r = KmsReadyReader::default();
        let mut got = None;
        for l in format!("noise\n{}", ready.render()).lines() {
            got = got.or(r.line(l));
        }
        assert_eq!(got, Some(ready));
    }

    #[test]
    fn a_key_without_an_address_is_not_ready() {
        assert_eq!(KmsReadyReader::default().line("kms public key 02ab"), None);
    }
}
