//! [`PrivateTargets`]: which addresses a pull may connect to.
//!
//! Inside a CVM in local mode the network is the host's, and the tenant
//! controls image references and runs its own registry (its auth challenges,
//! its redirects). With [`PrivateTargets::OnlyMapped`] every outgoing
//! request — the endpoint derived from an image reference, a Bearer token
//! realm, every redirect hop, the ECR API — is refused when its host is a
//! loopback, private, link-local (cloud metadata at `169.254.169.254`),
//! unspecified, CGNAT or IPv6 ULA/link-local address ([`is_private_ip`]),
//! unless that exact `host:port` was mapped by the operator (the URLs of
//! [`crate::Endpoints`], and the ECR endpoint override when the operator gave
//! it). IP literals are checked before the request; host names are resolved
//! and checked before the request (for a clear error) and again by the HTTP
//! client's resolver (`GuardedResolver`), so a name that resolves to a
//! private address on the second lookup (DNS rebinding) is refused as well.
//!
//! A refusal is a [`Category::Config`] error and is never retried.

use crate::error::{Category, Hint, PullError};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use url::{Host, Url};

/// Whether a pull may reach loopback and private addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PrivateTargets {
    /// Any address (a developer machine: `berth pull`).
    #[default]
    Allow,
    /// Loopback and private addresses only at the `host:port`s the operator
    /// mapped (the boot agent inside a CVM).
    OnlyMapped,
}

/// Whether `ip` is an address a tenant must not reach on the host's network:
/// loopback, RFC 1918 private, link-local (incl. `169.254.169.254`),
/// unspecified / "this network" (`0.0.0.0/8`), CGNAT `100.64.0.0/10`, IPv6
/// loopback, unspecified, ULA `fc00::/7`, link-local `fe80::/10`, site-local
/// `fec0::/10`, and the IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`) and NAT64 (`64:ff9b::a.b.c.d`) forms of private IPv4
/// addresses.
pub fn is_private_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => is_private_v6(v6),
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, _, _] = ip.octets();
    a == 0 // 0.0.0.0/8: "this host" (connecting to 0.0.0.0 reaches loopback)
        || a == 127 // loopback
        || a == 10 // RFC 1918
        || (a == 172 && (16..=31).contains(&b)) // RFC 1918
        || (a == 192 && b == 168) // RFC 1918
        || (a == 169 && b == 254) // link-local, cloud metadata
        || (a == 100 && (64..=127).contains(&b)) // CGNAT
}

fn is_private_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_private_v4(v4);
    }
    let s = ip.segments();
    let embedded = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    ip.is_unspecified()
        || ip.is_loopback()
        || (s[0] & 0xfe00) == 0xfc00 // ULA fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
        || (s[..6] == [0; 6] && is_private_v4(embedded)) // ::a.b.c.d
        || (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && is_private_v4(embedded)) // NAT64
}

/// The host and port a URL connects to, as `host:port` for messages.
fn host_port(url: &Url) -> String {
    let host = match url.host() {
        Some(Host::Ipv6(v6)) => format!("[{v6}]"),
        Some(h) => h.to_string(),
        None => String::new(),
    };
    match url.port_or_known_default() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

/// A request the guard refused: where to, and which address was private.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    /// `host:port` of the target.
    pub(crate) target: String,
}

/// The policy of one [`crate::Puller`]: the mode and the mapped `host:port`s.
#[derive(Clone, Debug, Default)]
pub(crate) struct TargetGuard {
    mode: PrivateTargets,
    mapped: HashSet<(Host<String>, u16)>,
    /// Host names that are mapped at some port: the resolver lets them
    /// resolve to private addresses (the port is checked before the request).
    mapped_names: HashSet<String>,
}

impl TargetGuard {
    /// A guard in `mode` that lets the `host:port` of each of `mapped` through.
    pub(crate) fn new<'a>(mode: PrivateTargets, mapped: impl IntoIterator<Item = &'a Url>) -> Self {
        let mut guard = Self {
            mode,
            ..Self::default()
        };
        for url in mapped {
            if let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) {
                if let Host::Domain(d) = &host {
                    guard.mapped_names.insert(d.to_ascii_lowercase());
                }
                guard.mapped.insert((host.to_owned(), port));
            }
        }
        guard
    }

    /// Whether the guard refuses anything at all.
    pub(crate) fn enforcing(&self) -> bool {
        self.mode == PrivateTargets::OnlyMapped
    }

    fn is_mapped(&self, url: &Url) -> bool {
        match (url.host(), url.port_or_known_default()) {
            (Some(host), Some(port)) => self.mapped.contains(&(host.to_owned(), port)),
            _ => false,
        }
    }

    /// Checks the target of `url` before a request: IP literals directly,
    /// host names after resolving them. A name that does not resolve passes
    /// (the request then fails the ordinary way).
    pub(crate) async fn check(&self, url: &Url) -> Result<(), Refused> {
        if !self.enforcing() || self.is_mapped(url) {
            return Ok(());
        }
        let refused = || {
            Err(Refused {
                target: host_port(url),
            })
        };
        let port = url.port_or_known_default().unwrap_or(0);
        match url.host() {
            Some(Host::Ipv4(v4)) if is_private_v4(v4) => refused(),
            Some(Host::Ipv6(v6)) if is_private_v6(v6) => refused(),
            Some(Host::Domain(name)) => match tokio::net::lookup_host((name, port)).await {
                Ok(addrs) => {
                    let mut addrs = addrs;
                    if addrs.any(|a| is_private_ip(a.ip())) {
                        refused()
                    } else {
                        Ok(())
                    }
                }
                Err(_) => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

/// The refusal as a [`PullError`]: `what` names the request's role ("the
/// endpoint", "the token service", …) for `registry`.
pub(crate) fn refused_error(registry: &str, what: &str, refused: &Refused) -> PullError {
    PullError::new(
        Category::Config,
        format!(
            "refused to connect to {} ({what} of {registry}): a CVM reaches loopback and private \
             addresses only for registries the operator mapped",
            refused.target
        ),
    )
    .registry(registry)
    .with_hint(Hint::MapRegistry)
}

/// The resolver's refusal, carried through the HTTP client's error chain.
#[derive(Debug)]
pub(crate) struct PrivateAddress {
    host: String,
}

impl std::fmt::Display for PrivateAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} resolves to a loopback or private address", self.host)
    }
}

impl std::error::Error for PrivateAddress {}

/// If `err` is the resolver refusing a private address, the refusal
/// (`host:port` of `url`).
pub(crate) fn refused_by_resolver(err: &reqwest::Error) -> Option<Refused> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.downcast_ref::<PrivateAddress>().is_some() {
            return Some(Refused {
                target: err.url().map(host_port).unwrap_or_default(),
            });
        }
        source = e.source();
    }
    None
}

/// The resolver could not resolve `host` (see [`GuardedResolver`]); the
/// transport recognises it by type, walking an error's `source()`.
#[derive(Debug)]
pub(crate) struct NameNotResolved {
    pub(crate) host: String,
    pub(crate) source: std::io::Error,
}

impl std::fmt::Display for NameNotResolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} does not resolve", self.host)
    }
}

impl std::error::Error for NameNotResolved {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The HTTP client's resolver. Under [`PrivateTargets::OnlyMapped`] a host
/// name that is not mapped and resolves to any private address is refused,
/// so a second lookup cannot land on one the pre-request check did not see.
/// In every mode a name that does not resolve fails with a typed
/// [`NameNotResolved`], which the transport recognises
/// without reading messages.
pub(crate) struct GuardedResolver {
    enforcing: bool,
    mapped_names: HashSet<String>,
}

impl GuardedResolver {
    pub(crate) fn new(guard: &TargetGuard) -> Self {
        Self {
            enforcing: guard.enforcing(),
            mapped_names: guard.mapped_names.clone(),
        }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let free = !self.enforcing || self.mapped_names.contains(&host);
        Box::pin(async move {
            let looked_up: std::io::Result<Vec<SocketAddr>> =
                match tokio::net::lookup_host((host.as_str(), 0)).await {
                    Ok(addrs) => Ok(addrs.collect()),
                    Err(e) => Err(e),
                };
            let addrs = match looked_up {
                Ok(addrs) => addrs,
                Err(source) => {
                    return Err(Box::new(NameNotResolved { host, source }) as _);
                }
            };
            if !free && addrs.iter().any(|a| is_private_ip(a.ip())) {
                return Err(Box::new(PrivateAddress { host }) as _);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private(s: &str) -> bool {
        is_private_ip(s.parse().unwrap())
    }

    #[test]
    fn classification() {
        for p in [
            "127.0.0.1",
            "127.255.255.254",
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "::192.168.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(private(p), "{p} should be private");
        }
        for p in [
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.169.0.1",
            "169.253.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "11.0.0.1",
            "2606:4700::1111",
            "2001:db8::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "fe00::1",
        ] {
            assert!(!private(p), "{p} should be public");
        }
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn only_mapped_host_ports_pass() {
        let mapped = [url("http://127.0.0.1:5000/"), url("https://localhost/v2/")];
        let g = TargetGuard::new(PrivateTargets::OnlyMapped, &mapped);
        block_on(async {
            assert!(g.check(&url("http://127.0.0.1:5000/v2/x")).await.is_ok());
            assert!(g.check(&url("https://localhost:443/token")).await.is_ok());
            assert!(g.check(&url("https://8.8.8.8/v2/")).await.is_ok());
            // The same host:port as a mapping, another scheme: still mapped.
            assert!(g.check(&url("https://127.0.0.1:5000/v2/")).await.is_ok());
            for (u, target) in [
                ("http://127.0.0.1:5001/v2/", "127.0.0.1:5001"),
                ("http://127.0.0.2:5000/v2/", "127.0.0.2:5000"),
                (
                    "http://169.254.169.254/latest/meta-data/",
                    "169.254.169.254:80",
                ),
                ("http://[::1]:5000/", "[::1]:5000"),
                ("http://[::ffff:127.0.0.1]:5000/", "[::ffff:127.0.0.1]:5000"),
                ("http://10.0.0.8:80/", "10.0.0.8:80"),
                ("http://localhost:5000/", "localhost:5000"),
                ("http://0.0.0.0:5000/", "0.0.0.0:5000"),
            ] {
                let want = Err(Refused {
                    target: target.into(),
                });
                assert_eq!(g.check(&url(u)).await, want, "{u}");
            }
        });
        let allow = TargetGuard::new(PrivateTargets::Allow, &[]);
        block_on(async {
            assert!(allow.check(&url("http://127.0.0.1:1/")).await.is_ok());
            assert!(allow.check(&url("http://169.254.169.254/")).await.is_ok());
        });
    }

    #[test]
    fn refusal_is_a_config_error_naming_the_target() {
        let e = refused_error(
            "evil.example:5000",
            "a redirect",
            &Refused {
                target: "127.0.0.1:9".into(),
            },
        );
        assert_eq!(e.category, Category::Config);
        assert!(e.message.contains("127.0.0.1:9"), "{}", e.message);
        assert!(e.message.contains("evil.example:5000"), "{}", e.message);
        assert!(
            e.message
                .contains("only for registries the operator mapped")
        );
    }

    #[test]
    fn resolver_refuses_unmapped_names_of_private_addresses() {
        use reqwest::dns::Resolve;
        let mapped = [url("http://localhost:5000/")];
        let g = TargetGuard::new(PrivateTargets::OnlyMapped, &mapped);
        let r = GuardedResolver::new(&g);
        let none = GuardedResolver::new(&TargetGuard::new(PrivateTargets::OnlyMapped, &[]));
        block_on(async {
            let name = |s: &str| s.parse::<reqwest::dns::Name>().unwrap();
            let addrs: Vec<_> = r.resolve(name("localhost")).await.unwrap().collect();
            assert!(addrs.iter().all(|a| a.ip().is_loopback()));
            let err = match none.resolve(name("localhost")).await {
                Err(e) => e,
                Ok(_) => panic!("localhost resolved"),
            };
            assert!(err.downcast_ref::<PrivateAddress>().is_some());

            // Through the HTTP client, the refusal is recognised in the
            // error chain (what a second, rebound lookup would produce).
            let client = reqwest::Client::builder()
                .dns_resolver(std::sync::Arc::new(none))
                .build()
                .unwrap();
            let err = client.get("http://localhost:9/").send().await.unwrap_err();
            assert_eq!(
                refused_by_resolver(&err),
                Some(Refused {
                    target: "localhost:9".into()
                })
            );
            let other = reqwest::Client::new()
                .get("http://127.0.0.1:9/")
                .send()
                .await
                .unwrap_err();
            assert_eq!(refused_by_resolver(&other), None);
        });
    }
}
