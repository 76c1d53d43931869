//! What a compose file may ask of the host's network and of the CVM's
//! size: published ports (on which host address, which host port), the
//! addresses of its networks, how many networks and containers.
//!
//! Why: a CVM's networks are bridges on the host, and a published port is a
//! listener on the host. A tenant who picks a network's subnet and gateway
//! gives the host that address (the operator's registry at `10.77.0.5`
//! becomes a bridge of the tenant's, and every other CVM's next pull sends
//! its credentials there); a tenant who publishes a port on an address of
//! their choosing, or on the port of a mapped registry that happens to be
//! down, receives connections meant for it. So subnets, gateways and fixed
//! container addresses are the platform's (the engine allocates them from
//! Berth's own range), ports are published on all of the host's addresses or
//! its loopback only, and never on a port the cloud reserves
//! ([`ComposeFile::check_reserved_ports`], which needs the cloud's own
//! settings and so is called by the control plane and the boot agent with
//! them).

use super::yaml::{scalar_text, shown};
use super::{ComposeError, ComposeFile, Site};
use serde_yaml_ng::Value;

/// The most networks a compose file may define at the top level (besides
/// compose's own `default`): each takes a subnet of the engine's pool.
pub const MAX_NETWORKS: usize = 4;

/// The most containers a compose file may start (the sum of every
/// service's `scale` or `deploy.replicas`, 1 by default).
pub const MAX_CONTAINERS: u64 = 32;

/// The host addresses a port may be published on: all of the host's, or
/// its loopback.
pub const PUBLISH_ADDRESSES: &[&str] = &["0.0.0.0", "::", "127.0.0.1", "::1"];

/// A host port (or range) a service publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedPort {
    /// The service (as written in the file).
    pub service: String,
    /// The host address, when the file names one.
    pub host_ip: Option<String>,
    /// The first host port of the range.
    pub first: u16,
    /// The last host port of the range (`first` for one port).
    pub last: u16,
}

/// A host port the cloud keeps for itself, and what uses it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReservedPort {
    /// The port.
    pub port: u16,
    /// What it is for, in a few words ("the registry mapped for
    /// `ghcr.io`", "the API").
    pub what: String,
}

/// The host ports of the registries the operator mapped
/// (`registry name → endpoint URL`): an explicit port always (the endpoint
/// may be an address of this host), the scheme's default port (80, 443)
/// only for a loopback endpoint (a CVM may publish 80 and 443, but not
/// take a loopback registry's).
pub fn registry_reserved_ports(
    endpoints: &std::collections::BTreeMap<String, String>,
) -> Vec<ReservedPort> {
    let mut out = Vec::new();
    for (name, url) in endpoints {
        let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let authority = authority.rsplit('@').next().unwrap_or_default();
        let (host, port) = if let Some(after) = authority.strip_prefix('[') {
            match after.split_once(']') {
                Some((h, p)) => (h, p.strip_prefix(':')),
                None => continue,
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port.and_then(|p| p.parse::<u16>().ok()) {
            Some(p) => p,
            None => {
                let loopback = host.eq_ignore_ascii_case("localhost")
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    continue;
                }
                if scheme.eq_ignore_ascii_case("http") {
                    80
                } else {
                    443
                }
            }
        };
        out.push(ReservedPort {
            port,
            what: format!("the registry mapped for `{}`", shown(name)),
        });
    }
    out
}

/// One `ports` entry: the host address and host port range, if any.
struct PortEntry {
    host_ip: Option<String>,
    host: Option<(u16, u16)>,
    /// How many ports the entry publishes (a container range publishes
    /// one per port): a listener on the host each.
    ports: u32,
}

/// The most ports a compose file may publish (each is a listener on the
/// host: `1-30000:1-30000` would be thirty thousand).
pub const MAX_PUBLISHED_PORTS: u32 = 100;

fn range_len((a, b): (u16, u16)) -> u32 {
    u32::from(b - a) + 1
}

/// `8080` or `8000-8010`; `None` when not a port or range.
fn port_range(s: &str) -> Option<(u16, u16)> {
    let s = s.trim();
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a <= b).then_some((a, b))
}

/// Parses one entry of `ports` (short or long syntax).
fn port_entry(site: &Site, v: &Value) -> Result<PortEntry, ComposeError> {
    let bad = |text: &str| {
        site.err(&format!(
            "has a `ports` entry `{}` that is not `[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]`: write it in that form (IPv6 addresses in brackets)",
            shown(text)
        ))
    };
    match v {
        Value::Number(_) => Ok(PortEntry {
            host_ip: None,
            host: None,
            ports: 1,
        }),
        Value::String(s) => {
            if s.contains('$') {
                return Err(site.interpolated("an entry of `ports`"));
            }
            let body = s.split('/').next().unwrap_or_default();
            let (host_ip, rest) = if let Some(after) = body.strip_prefix('[') {
                let (ip, rest) = after.split_once(']').ok_or_else(|| bad(s))?;
                let rest = rest.strip_prefix(':').ok_or_else(|| bad(s))?;
                (Some(ip.to_owned()), rest)
            } else {
                (None, body)
            };
            let parts: Vec<&str> = rest.split(':').collect();
            let (ip, host, container) = match (host_ip, parts.as_slice()) {
                (None, [c]) => (None, None, *c),
                (None, [h, c]) => (None, Some(*h), *c),
                (None, [ip, h, c]) => (Some((*ip).to_owned()), Some(*h), *c),
                (Some(ip), [h, c]) => (Some(ip), Some(*h), *c),
                _ => return Err(bad(s)),
            };
            let container = port_range(container).ok_or_else(|| bad(s))?;
            let host = match host {
                None | Some("") => None,
                Some(h) => Some(port_range(h).ok_or_else(|| bad(s))?),
            };
            Ok(PortEntry {
                host_ip: ip.filter(|i| !i.is_empty()),
                host,
                ports: range_len(container),
            })
        }
        Value::Mapping(m) => {
            for (k, v) in m {
                if let Value::String(s) = v
                    && s.contains('$')
                {
                    return Err(site.interpolated(&format!(
                        "the `{}` of an entry of `ports`",
                        shown(&scalar_text(k))
                    )));
                }
            }
            let host_ip = match m.get("host_ip") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => return Err(bad(&scalar_text(other))),
            };
            let host = match m.get("published") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => {
                    let p = n
                        .as_u64()
                        .and_then(|p| u16::try_from(p).ok())
                        .ok_or_else(|| bad(&n.to_string()))?;
                    Some((p, p))
                }
                Some(Value::String(s)) if s.is_empty() => None,
                Some(Value::String(s)) => Some(port_range(s).ok_or_else(|| bad(s))?),
                Some(other) => return Err(bad(&scalar_text(other))),
            };
            let ports = match m.get("target") {
                Some(Value::String(t)) => port_range(t).map_or(1, range_len),
                _ => 1,
            };
            Ok(PortEntry {
                host_ip: host_ip.filter(|i| !i.is_empty()),
                host,
                ports,
            })
        }
        other => Err(bad(&scalar_text(other))),
    }
}

/// How many ports a service's `ports` publish (after [`check_ports`]).
pub(super) fn published_count(site: &Site, value: &Value) -> u32 {
    match value {
        Value::Sequence(items) => items
            .iter()
            .filter_map(|i| port_entry(site, i).ok())
            .map(|e| e.ports)
            .fold(0u32, u32::saturating_add),
        _ => 0,
    }
}

/// A service's `ports`: parsable, no `$`, published only on
/// [`PUBLISH_ADDRESSES`].
pub(super) fn check_ports(site: &Site, value: &Value) -> Result<(), ComposeError> {
    let items = match value {
        Value::Null => return Ok(()),
        Value::Sequence(s) => s,
        _ => return Err(site.err("has a `ports` that is not a list: write it as a list")),
    };
    for item in items {
        let entry = port_entry(site, item)?;
        if let Some(ip) = &entry.host_ip
            && !PUBLISH_ADDRESSES.contains(&ip.as_str())
        {
            return Err(site.err(&format!(
                "publishes a port in `ports` on the host address `{}`: a CVM publishes on all of the host's addresses or on its loopback only (an address of the file's choosing could be another service's, like a registry's): remove the address, or use `127.0.0.1`",
                shown(ip)
            )));
        }
    }
    Ok(())
}

/// A service's `ports` in the container mode: each entry in compose's
/// form, without `$` (so that they can be counted), on any address.
pub(super) fn check_port_forms(site: &Site, value: &Value) -> Result<(), ComposeError> {
    match value {
        Value::Null => Ok(()),
        Value::Sequence(items) => items
            .iter()
            .try_for_each(|item| port_entry(site, item).map(|_| ())),
        _ => Err(site.err("has a `ports` that is not a list: write it as a list")),
    }
}

/// A service's `networks` entries: no fixed addresses.
pub(super) fn check_service_networks(site: &Site, value: &Value) -> Result<(), ComposeError> {
    let Value::Mapping(m) = value else {
        return Ok(());
    };
    for (name, entry) in m {
        for key in ["ipv4_address", "ipv6_address", "link_local_ips"] {
            if entry.get(key).is_some_and(|v| !v.is_null()) {
                return Err(site.err(&format!(
                    "sets `{key}` on network `{}` in `networks`: container addresses are the platform's (an address of the file's choosing could be the host's or another service's): remove `{key}`",
                    shown(&scalar_text(name))
                )));
            }
        }
    }
    Ok(())
}

/// A top-level network: no subnet, range, gateway or address of the
/// file's choosing.
pub(super) fn check_network_addresses(site: &Site, entry: &Value) -> Result<(), ComposeError> {
    let Some(ipam) = entry.get("ipam") else {
        return Ok(());
    };
    for key in ["config", "options"] {
        let set = match ipam.get(key) {
            None | Some(Value::Null) => false,
            Some(Value::Sequence(s)) => !s.is_empty(),
            Some(Value::Mapping(m)) => !m.is_empty(),
            Some(_) => true,
        };
        if set {
            return Err(site.err(&format!(
                "sets `ipam.{key}`: subnets and gateways are the platform's, taken from its own address range (a subnet of the file's choosing could give the host another service's address, like a registry's): remove `ipam.{key}`"
            )));
        }
    }
    Ok(())
}

/// The number of top-level networks.
pub(super) fn check_network_count(value: &Value) -> Result<(), ComposeError> {
    let n = value.as_mapping().map_or(0, |m| m.len());
    if n > MAX_NETWORKS {
        return Err(ComposeError::top(
            "networks",
            format!(
                "the compose file defines {n} `networks`, more than the {MAX_NETWORKS} a CVM may have (each takes a subnet of the host's pool): put services on fewer networks"
            ),
        ));
    }
    Ok(())
}

/// How many containers a service starts (`scale`, `deploy.replicas`).
pub(super) fn containers_of(
    site: &Site,
    svc: &serde_yaml_ng::Mapping,
) -> Result<u64, ComposeError> {
    let mut n = 1;
    for (what, v) in [
        ("`scale`", svc.get("scale")),
        (
            "`deploy.replicas`",
            svc.get("deploy").and_then(|d| d.get("replicas")),
        ),
    ] {
        match v {
            None | Some(Value::Null) => {}
            Some(Value::Number(x)) => match x.as_u64() {
                Some(x) => n = x,
                None => {
                    return Err(site.err(&format!(
                        "sets {what} to something that is not a count: write a whole number"
                    )));
                }
            },
            Some(Value::String(s)) if s.contains('$') => return Err(site.interpolated(what)),
            Some(Value::String(s)) => match s.trim().parse::<u64>() {
                Ok(x) => n = x,
                Err(_) => {
                    return Err(site.err(&format!(
                        "sets {what} to something that is not a count: write a whole number"
                    )));
                }
            },
            Some(_) => {
                return Err(site.err(&format!(
                    "sets {what} to something that is not a count: write a whole number"
                )));
            }
        }
    }
    Ok(n)
}

impl ComposeFile {
    /// Every host port (or range) the file publishes, in file order. Ports
    /// without a host port (the engine picks one) are not listed.
    pub fn published_ports(&self) -> Vec<PublishedPort> {
        let mut out = Vec::new();
        let Some(services) = self.doc.get("services").and_then(Value::as_mapping) else {
            return out;
        };
        for (name, svc) in services {
            let service = scalar_text(name);
            let site = Site::service(&service, "ports");
            let Some(Value::Sequence(items)) = svc.get("ports") else {
                continue;
            };
            for item in items {
                if let Ok(PortEntry {
                    host_ip,
                    host: Some((first, last)),
                    ..
                }) = port_entry(&site, item)
                {
                    out.push(PublishedPort {
                        service: service.clone(),
                        host_ip,
                        first,
                        last,
                    });
                }
            }
        }
        out
    }

    /// Refuses a file that publishes a host port the cloud keeps for
    /// itself (its API, a mapped registry on this host): the engine would
    /// listen there whenever the owner is down, and take its connections.
    /// The control plane calls it at provisioning, the boot agent before
    /// `compose up`, each with the ports it knows.
    pub fn check_reserved_ports(&self, reserved: &[ReservedPort]) -> Result<(), ComposeError> {
        for p in self.published_ports() {
            if let Some(r) = reserved
                .iter()
                .find(|r| (p.first..=p.last).contains(&r.port))
            {
                let site = Site::service(&p.service, "ports");
                return Err(site.err(&format!(
                    "publishes host port {} in `ports`, which this cloud keeps for {}: publish another host port",
                    r.port, r.what
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn ports_publish_only_on_the_hosts_addresses_or_loopback() {
        for ok in [
            "ports: [\"8080:80\", \"127.0.0.1:9090:9090\", 80, \"0.0.0.0:81:81/udp\", \"[::1]:82:82\", \"8000-8002:8000-8002\", \"127.0.0.1::83\"]",
            "ports:\n  - target: 80\n    published: \"8081\"\n    host_ip: 127.0.0.1\n  - target: 81",
        ] {
            allowed(&web(ok));
        }
        for bad in [
            "ports: [\"10.77.0.5:5000:5000\"]",
            "ports: [\"[fd00::5]:5000:5000\"]",
            "ports:\n  - target: 5000\n    published: 5000\n    host_ip: 10.77.0.5",
            "ports: [\"${ADDR}:5000:5000\"]",
            "ports:\n  - target: 5000\n    host_ip: ${ADDR}",
            "ports: [\"::1:5000:5000\"]",
            "ports: [\"a:b\"]",
            "ports: \"5000:5000\"",
        ] {
            refused_at(&web(bad), "ports");
        }
    }

    #[test]
    fn addresses_are_the_platforms() {
        // The audit's hijack: a gateway on the operator's registry address.
        let hijack = "services:\n  fake:\n    image: mallory/fake:1\n    ports: [\"10.77.0.5:5000:5000\"]\n    networks: {grab: {ipv4_address: 10.77.0.9}}\nnetworks:\n  grab: {ipam: {config: [{subnet: 10.77.0.0/24, gateway: 10.77.0.5}]}}\n";
        let e = refused(hijack);
        assert_eq!(e.key.as_deref(), Some("networks"), "{e:?}");
        assert!(e.message.contains("ipam.config"), "{}", e.message);
        refused_at(
            &format!(
                "{}networks:\n  n:\n",
                web("networks: {n: {ipv4_address: 10.77.0.9}}")
            ),
            "networks",
        );
        refused_at(
            &format!(
                "{}networks:\n  n:\n",
                web("networks:\n  n:\n    ipv6_address: fd00::9")
            ),
            "networks",
        );
        refused_top(
            &format!(
                "{}networks:\n  n:\n    ipam: {{options: {{foo: bar}}}}\n",
                web("")
            ),
            "networks",
        );
        allowed(&format!(
            "{}networks:\n  n:\n    ipam: {{driver: default}}\n",
            web("networks: {n: {aliases: [w]}}")
        ));
    }

    #[test]
    fn networks_and_containers_are_bounded() {
        let nets: String = (0..=MAX_NETWORKS).map(|i| format!("  n{i}:\n")).collect();
        let e = refused_top(&format!("{}networks:\n{nets}", web("")), "networks");
        assert!(
            e.message.contains(&MAX_NETWORKS.to_string()),
            "{}",
            e.message
        );
        let e = refused_at(&web("scale: 40"), "scale");
        assert!(e.message.contains("32"), "{}", e.message);
        refused_at(&web("deploy: {replicas: 33}"), "deploy");
        refused_at(&web("scale: ${N}"), "scale");
        allowed(&web("scale: 3"));
        // Published ports: each a listener on the host.
        let e = refused_at(&web("ports: [\"20000-29999:20000-29999\"]"), "ports");
        assert!(e.message.contains("100"), "{}", e.message);
        refused_at(
            &web("ports:\n  - target: \"1000-1200\"\n    published: \"1000-1200\""),
            "ports",
        );
        allowed(&web("ports: [\"8000-8009:8000-8009\", \"9000-9200:80\"]"));
    }

    #[test]
    fn reserved_ports_are_refused() {
        let c = ComposeFile::parse_and_check(&web(
            "ports: [\"127.0.0.1:5000:5000\", \"7000-7010:80\"]",
        ))
        .unwrap();
        assert_eq!(c.published_ports().len(), 2);
        let reserved = |port| {
            vec![ReservedPort {
                port,
                what: "the registry mapped for `r.example`".into(),
            }]
        };
        let e = c.check_reserved_ports(&reserved(5000)).unwrap_err();
        assert!(
            e.message.contains("5000") && e.message.contains("r.example"),
            "{}",
            e.message
        );
        assert!(c.check_reserved_ports(&reserved(7005)).is_err());
        c.check_reserved_ports(&reserved(6000)).unwrap();
        let mapped = std::collections::BTreeMap::from([
            ("a.example".to_owned(), "http://10.77.0.5:5000".to_owned()),
            ("b.example".to_owned(), "https://127.0.0.1".to_owned()),
            (
                "c.example".to_owned(),
                "https://mirror.example/v2".to_owned(),
            ),
            ("d.example".to_owned(), "http://[::1]:5001".to_owned()),
        ]);
        let ports: Vec<u16> = registry_reserved_ports(&mapped)
            .iter()
            .map(|r| r.port)
            .collect();
        assert_eq!(ports, [5000, 443, 5001]);
    }
}
