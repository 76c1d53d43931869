//! Where the API listens and how: checked before anything starts.

use super::{UpConfig, UpError};
use std::sync::Arc;

/// The checked listen settings.
pub(crate) struct Listen {
    pub addr: std::net::SocketAddr,
    pub tls: Option<Arc<crate::serve::TlsConfig>>,
    /// The URL clients reach the API by, when it is not the listener's.
    pub public_url: Option<String>,
}

/// Refuses what would serve API keys in the clear to other machines, or
/// hand out log URLs naming an address clients cannot use.
pub(crate) fn check(config: &UpConfig) -> Result<Listen, UpError> {
    use std::net::ToSocketAddrs;
    let listen = || config.listen.clone();
    let addrs: Vec<std::net::SocketAddr> = config
        .listen
        .to_socket_addrs()
        .map_err(|_| UpError::BadListen { listen: listen() })?
        .collect();
    let addr = *addrs
        .first()
        .ok_or_else(|| UpError::ListenNoAddress { listen: listen() })?;
    let loopback = addrs.iter().all(|a| a.ip().is_loopback());
    let tls = match &config.tls {
        Some(files) => Some(crate::serve::tls_config(&files.cert, &files.key)?),
        None => None,
    };
    if !loopback && tls.is_none() && !config.insecure {
        return Err(UpError::PlainHttpOffLoopback { listen: listen() });
    }
    let public_url = match &config.public_url {
        Some(u) => Some(public_url(u)?),
        None if addr.ip().is_unspecified() => {
            return Err(UpError::PublicUrlNeeded { listen: listen() });
        }
        None => None,
    };
    Ok(Listen {
        addr,
        tls,
        public_url,
    })
}

/// `https://host:port` from what an operator wrote (a trailing `/` or
/// `/api/v1` is dropped).
fn public_url(given: &str) -> Result<String, UpError> {
    let u = given.trim_end_matches('/');
    let u = u.strip_suffix("/api/v1").unwrap_or(u);
    let host = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"));
    if host.is_none_or(|h| h.is_empty() || h.contains(['/', '?', '#', ' '])) {
        return Err(UpError::BadPublicUrl { url: u.to_owned() });
    }
    Ok(u.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_url_is_a_scheme_and_a_host() {
        assert_eq!(
            public_url("https://berth.example.test:8443/api/v1/").unwrap(),
            "https://berth.example.test:8443"
        );
        for bad in ["berth.example.test", "https://", "http://a/b", "ftp://a"] {
            assert!(
                matches!(public_url(bad), Err(UpError::BadPublicUrl { .. })),
                "{bad}"
            );
        }
    }
}
