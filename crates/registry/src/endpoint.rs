//! [`Endpoints`]: where each registry is actually reached.
//!
//! A registry name (`docker.io`, `ghcr.io`, `127.0.0.1:5000`) is an identity:
//! credentials belong to it. An endpoint is an address: by default
//! `https://` + the registry's API host, or a mapping given with
//! `--registry-endpoint REGISTRY=URL` (a mirror, a pull-through cache, a test
//! server). Credentials keep belonging to the registry name. Plain HTTP is
//! used only for loopback hosts (after HTTPS fails, as Docker does) or when an
//! endpoint is given explicitly as `http://`.

use crate::error::PullError;
use crate::reference::normalize_registry;
use std::collections::BTreeMap;
use url::Url;

/// Whether `host` (without port) is a loopback name or address.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") {
        return true;
    }
    h.parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

/// The host part of `host[:port]`.
pub(crate) fn host_of(host_port: &str) -> &str {
    if let Some(rest) = host_port.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host_port.split(':').next().unwrap_or(host_port)
}

/// How to reach one registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// Given explicitly: used as it is.
    Explicit(Url),
    /// The default: `https://HOST/`.
    Https(Url),
    /// A loopback registry: `https://HOST/`, falling back to `http://HOST/`.
    HttpsThenHttp {
        /// The HTTPS address.
        https: Url,
        /// The plain-HTTP fallback.
        http: Url,
    },
}

/// Registry-name to endpoint mappings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    map: BTreeMap<String, Url>,
}

impl Endpoints {
    /// No mappings: every registry at its default endpoint.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a `REGISTRY=URL` mapping as given on the command line.
    pub fn add_mapping(&mut self, mapping: &str) -> Result<(), PullError> {
        let (name, url) = mapping.split_once('=').ok_or_else(|| {
            PullError::config(format!(
                "registry mapping `{mapping}`: expected REGISTRY=URL"
            ))
            .hint("for example docker.io=https://mirror.example.com")
        })?;
        self.insert(name, url)
    }

    /// Maps the registry `name` to `url`.
    pub fn insert(&mut self, name: &str, url: &str) -> Result<(), PullError> {
        let registry = normalize_registry(name).ok_or_else(|| {
            PullError::config(format!("`{name}` is not a registry name"))
                .hint("use a host such as ghcr.io or 127.0.0.1:5000")
        })?;
        let url = Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| {
                PullError::config(format!(
                    "the endpoint for {registry} is not an http:// or https:// URL"
                ))
                .hint("for example https://mirror.example.com or http://127.0.0.1:5000")
            })?;
        self.map.insert(registry, url);
        Ok(())
    }

    /// Every mapped URL (the operator's: under
    /// [`crate::PrivateTargets::OnlyMapped`] their `host:port`s are the only
    /// private addresses a pull reaches).
    pub fn urls(&self) -> impl Iterator<Item = &Url> {
        self.map.values()
    }

    /// How to reach `registry`, whose API host is `api_host`.
    pub fn endpoint(&self, registry: &str, api_host: &str) -> Endpoint {
        if let Some(url) = self.map.get(registry) {
            return Endpoint::Explicit(url.clone());
        }
        let https = Url::parse(&format!("https://{api_host}/")).expect("validated host");
        if is_loopback_host(host_of(api_host)) {
            let http = Url::parse(&format!("http://{api_host}/")).expect("validated host");
            Endpoint::HttpsThenHttp { https, http }
        } else {
            Endpoint::Https(https)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_mappings() {
        let mut e = Endpoints::new();
        assert_eq!(
            e.endpoint("ghcr.io", "ghcr.io"),
            Endpoint::Https(Url::parse("https://ghcr.io/").unwrap())
        );
        assert!(matches!(
            e.endpoint("127.0.0.1:5000", "127.0.0.1:5000"),
            Endpoint::HttpsThenHttp { .. }
        ));
        assert!(matches!(
            e.endpoint("localhost:5000", "localhost:5000"),
            Endpoint::HttpsThenHttp { .. }
        ));
        e.add_mapping("index.docker.io=http://127.0.0.1:9/")
            .unwrap();
        assert_eq!(
            e.endpoint("docker.io", "registry-1.docker.io"),
            Endpoint::Explicit(Url::parse("http://127.0.0.1:9/").unwrap())
        );
        assert!(
            e.add_mapping("nourl")
                .unwrap_err()
                .message
                .contains("expected REGISTRY=URL")
        );
        assert!(
            e.add_mapping("ghcr.io=ftp://x")
                .unwrap_err()
                .message
                .contains("not an http")
        );
        assert!(
            is_loopback_host("::1")
                && is_loopback_host("127.8.9.1")
                && !is_loopback_host("10.0.0.1")
        );
    }
}
