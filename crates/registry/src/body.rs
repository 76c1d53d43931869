//! The one way a response body is read into memory: [`read_capped`], with a
//! hard size cap and a deadline.
//!
//! A registry (or token service, or ECR API) that a tenant runs may answer
//! with a body of any size, or drip it forever. Every body this crate keeps
//! in memory — registry error bodies, token answers, ECR answers, manifests —
//! is read through [`read_capped`]: a declared `Content-Length` over the cap
//! is refused before reading, and reading stops as soon as the cap is passed
//! (the connection is dropped, never drained). Blobs are streamed to disk by
//! the pull loop and are bounded by their manifest's declared size instead.

use reqwest::Response;
use std::time::Duration;
use zeroize::Zeroizing;

/// A size cap and a deadline for one kind of body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cap {
    /// Most bytes kept.
    pub(crate) bytes: u64,
    /// Longest time the whole body may take.
    pub(crate) deadline: Duration,
}

/// Registry and ECR error bodies (only their error codes are used).
pub(crate) const ERROR_BODY: Cap = Cap {
    bytes: 64 << 10,
    deadline: Duration::from_secs(10),
};

/// Token service and ECR `GetAuthorizationToken` answers.
pub(crate) const AUTH_ANSWER: Cap = Cap {
    bytes: 1 << 20,
    deadline: Duration::from_secs(30),
};

/// Manifests and indexes ([`crate::manifest::MAX_MANIFEST_BYTES`]).
pub(crate) const MANIFEST: Cap = Cap {
    bytes: crate::manifest::MAX_MANIFEST_BYTES,
    deadline: Duration::from_secs(60),
};

impl Cap {
    /// The same cap with its deadline no longer than `budget` (the retry
    /// budget: a body that stalls must not outlast it).
    pub(crate) fn within(self, budget: Duration) -> Cap {
        Cap {
            deadline: self.deadline.min(budget),
            ..self
        }
    }
}

/// Why a body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Longer than the cap: the declared length, or the bytes seen when
    /// reading stopped.
    TooLarge(u64),
    /// The connection failed while reading.
    Transport(reqwest::Error),
    /// The body did not arrive within the cap's deadline.
    TimedOut,
}

impl BodyError {
    /// A short reason for messages (no body content).
    pub(crate) fn reason(&self, cap: Cap) -> String {
        match self {
            BodyError::TooLarge(_) => format!("more than {}", human_bytes(cap.bytes)),
            BodyError::Transport(e) => crate::transport::classify(e).1,
            BodyError::TimedOut => format!(
                "the answer did not arrive within {}",
                crate::helpers::human_duration(cap.deadline)
            ),
        }
    }
}

/// `64 KiB`, `1 MiB`, `4 MiB`.
pub(crate) fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

/// Reads `resp`'s body, at most `cap.bytes` of it within `cap.deadline`.
/// The buffer is zeroized when it grows and when it is dropped (token and
/// ECR answers hold secrets).
pub(crate) async fn read_capped(
    mut resp: Response,
    cap: Cap,
) -> Result<Zeroizing<Vec<u8>>, BodyError> {
    let declared = resp.content_length();
    if let Some(len) = declared
        && len > cap.bytes
    {
        return Err(BodyError::TooLarge(len));
    }
    let mut out = Zeroizing::new(Vec::with_capacity(declared.unwrap_or(0) as usize));
    let read = async {
        while let Some(chunk) = resp.chunk().await.map_err(BodyError::Transport)? {
            let len = out.len() as u64 + chunk.len() as u64;
            if len > cap.bytes {
                return Err(BodyError::TooLarge(len));
            }
            if out.capacity() < len as usize {
                // Grow by hand so the old buffer is zeroized, not just freed.
                let want = (out.capacity() * 2)
                    .max(len as usize)
                    .min(cap.bytes as usize);
                let mut bigger = Zeroizing::new(Vec::with_capacity(want));
                bigger.extend_from_slice(&out);
                out = bigger;
            }
            out.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match tokio::time::timeout(cap.deadline, read).await {
        Ok(Ok(())) => Ok(out),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(BodyError::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(ERROR_BODY.bytes), "64 KiB");
        assert_eq!(human_bytes(AUTH_ANSWER.bytes), "1 MiB");
        assert_eq!(human_bytes(MANIFEST.bytes), "4 MiB");
        assert_eq!(human_bytes(1000), "1000 bytes");
    }
}
