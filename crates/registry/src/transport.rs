//! The transport: sending one request through redirects, and naming what
//! went wrong below HTTP.
//!
//! Redirects are followed here, not by the HTTP client: every hop is checked
//! against the [`TargetGuard`], and credentials go only to the origin the
//! request started at; a redirect to another host (blob storage, a CDN) is
//! followed without them.
//!
//! Transport errors are classified by what they are — reqwest's error kinds,
//! the `std::io::ErrorKind`s, rustls' and hyper's error types and the
//! resolver's [`NameNotResolved`], found by walking `source()` (and into an
//! `io::Error`'s inner error) — never by the text of their messages.

use crate::targets::{NameNotResolved, Refused, TargetGuard};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response};
use std::error::Error;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

const MAX_REDIRECTS: usize = 5;

/// What went wrong below HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TransportFailure {
    /// The server's TLS certificate is not trusted: retrying cannot help.
    Untrusted,
    /// Connecting or reading timed out.
    TimedOut,
    /// Nothing listens at the address.
    Refused,
    /// The host name does not resolve.
    NoSuchHost,
    /// The connection was reset or closed early.
    Dropped,
    /// Some other failure to connect.
    CannotConnect,
    /// Anything else.
    Other,
}

impl TransportFailure {
    /// Classifies `err` by its kinds and types (see the module docs).
    pub(crate) fn of(err: &reqwest::Error) -> Self {
        let mut kinds = Vec::new();
        let mut untrusted = false;
        let mut no_host = false;
        let mut hyper_dropped = false;
        for e in causes(err) {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                kinds.push(io.kind());
            }
            if let Some(tls) = e.downcast_ref::<rustls::Error>() {
                untrusted |= matches!(
                    tls,
                    rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
                );
            }
            if let Some(h) = e.downcast_ref::<hyper::Error>() {
                hyper_dropped |= h.is_incomplete_message() || h.is_closed() || h.is_canceled();
            }
            no_host |= e.downcast_ref::<NameNotResolved>().is_some();
        }
        use std::io::ErrorKind as K;
        let has = |k: K| kinds.contains(&k);
        if untrusted {
            TransportFailure::Untrusted
        } else if err.is_timeout() || has(K::TimedOut) {
            TransportFailure::TimedOut
        } else if has(K::ConnectionRefused) {
            TransportFailure::Refused
        } else if no_host {
            TransportFailure::NoSuchHost
        } else if hyper_dropped
            || err.is_body()
            || [
                K::ConnectionReset,
                K::ConnectionAborted,
                K::BrokenPipe,
                K::UnexpectedEof,
                K::NotConnected,
            ]
            .into_iter()
            .any(has)
        {
            TransportFailure::Dropped
        } else if err.is_connect() {
            TransportFailure::CannotConnect
        } else {
            TransportFailure::Other
        }
    }

    /// Whether retrying cannot help.
    pub(crate) fn is_fatal(self) -> bool {
        self == TransportFailure::Untrusted
    }
}

/// The failure of `err` and a short reason for messages. The reason of an
/// unclassified error is the innermost cause's text, which holds no
/// credentials (it never decides anything).
pub(crate) fn classify(err: &reqwest::Error) -> (TransportFailure, String) {
    let failure = TransportFailure::of(err);
    let reason = match failure {
        TransportFailure::Untrusted => "the TLS certificate is not trusted",
        TransportFailure::TimedOut => "the connection timed out",
        TransportFailure::Refused => "connection refused",
        TransportFailure::NoSuchHost => "the host name does not resolve",
        TransportFailure::Dropped => "the connection was dropped",
        TransportFailure::CannotConnect => "cannot connect",
        TransportFailure::Other => {
            return (
                failure,
                causes(err)
                    .last()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "request failed".into()),
            );
        }
    };
    (failure, reason.to_owned())
}

/// `err` and its causes, looking inside `io::Error`s too (their `source()`
/// skips the error they wrap).
fn causes<'a>(
    err: &'a (dyn Error + 'static),
) -> impl Iterator<Item = &'a (dyn Error + 'static)> + 'a {
    fn next<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a (dyn Error + 'static)> {
        match e.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn Error + 'static)),
            None => e.source(),
        }
    }
    std::iter::successors(Some(err), |e: &&'a (dyn Error + 'static)| next(*e))
}

/// Why [`Transport::send`] sent nothing (more).
pub(crate) enum HopError {
    /// The transport failed.
    Transport(reqwest::Error),
    /// The target (`what`: the endpoint or a redirect) is refused.
    Refused(&'static str, Refused),
}

/// The HTTP client and the guard every request passes.
#[derive(Clone)]
pub(crate) struct Transport {
    pub(crate) http: reqwest::Client,
    pub(crate) guard: Arc<TargetGuard>,
}

impl Transport {
    /// Sends `method url`, following redirects (at most five; then the last
    /// answer is handed back). `auth` goes only to `url`'s origin.
    pub(crate) async fn send(
        &self,
        method: Method,
        mut url: Url,
        headers: &HeaderMap,
        mut auth: Option<HeaderValue>,
    ) -> Result<Response, HopError> {
        let origin = url.origin();
        let mut what = "the endpoint";
        for _ in 0..=MAX_REDIRECTS {
            self.guard
                .check(&url)
                .await
                .map_err(|r| HopError::Refused(what, r))?;
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(a) = &auth {
                req = req.header(header::AUTHORIZATION, a.clone());
            }
            let resp = req.send().await.map_err(HopError::Transport)?;
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let Some(next) = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok())
            else {
                return Ok(resp);
            };
            if next.origin() != origin {
                // Another host (blob storage, a CDN): never send credentials there.
                auth = None;
            }
            url = next;
            what = "a redirect";
        }
        // Too many redirects: hand back what the last one answered.
        self.guard
            .check(&url)
            .await
            .map_err(|r| HopError::Refused(what, r))?;
        self.http
            .request(method, url)
            .headers(headers.clone())
            .send()
            .await
            .map_err(HopError::Transport)
    }

    /// Docker's rule for loopback registries: HTTPS if it answers (or
    /// answers with a certificate we do not trust, reported later), else
    /// HTTP.
    pub(crate) async fn probe_https(&self, https: Url, http: Url) -> Url {
        let probe = self
            .http
            .get(https.join("v2/").expect("static path"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        match probe {
            Ok(_) => https,
            Err(e) if TransportFailure::of(&e).is_fatal() => https,
            Err(_) => http,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn failure_of(client: &reqwest::Client, url: &str) -> TransportFailure {
        TransportFailure::of(&client.get(url).send().await.unwrap_err())
    }

    #[tokio::test]
    async fn refused_and_unresolvable_are_told_apart_by_kind() {
        let guard = TargetGuard::new(crate::PrivateTargets::Allow, &[]);
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(crate::targets::GuardedResolver::new(&guard)))
            .build()
            .unwrap();
        // Nothing listens on a port just freed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert_eq!(
            failure_of(&client, &format!("http://127.0.0.1:{port}/")).await,
            TransportFailure::Refused
        );
        // `.invalid` never resolves (RFC 2606); nothing leaves the machine.
        assert_eq!(
            failure_of(&client, "http://no-such-host.invalid/").await,
            TransportFailure::NoSuchHost
        );
    }

    #[tokio::test]
    async fn a_connection_closed_without_an_answer_is_dropped() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            drop(sock);
        });
        let failure = failure_of(&reqwest::Client::new(), &format!("http://{addr}/")).await;
        assert_eq!(failure, TransportFailure::Dropped);
        assert!(!failure.is_fatal());
    }
}
