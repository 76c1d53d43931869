//! The rules for top-level `volumes`, `networks`, `secrets` and
//! `configs`: nothing external, no host driver or driver options, no
//! explicit `name`, no file read from the host.

use super::service::check_labels;
use super::yaml::{scalar_text, shown};
use super::{ComposeError, Site};
use serde_yaml_ng::Value;

/// The entries of a top-level `volumes`/`networks`/`secrets`/`configs`.
fn top_entries<'v>(key: &str, value: &'v Value) -> Result<Vec<(String, &'v Value)>, ComposeError> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Mapping(m) => Ok(m.iter().map(|(k, v)| (scalar_text(k), v)).collect()),
        _ => Err(ComposeError::top(
            key,
            format!("the top-level `{key}` is not a mapping: write one entry per name"),
        )),
    }
}

/// `external` is refused unless it is the literal `false`.
fn external(site: &Site, entry: &Value) -> Result<(), ComposeError> {
    match entry.get("external") {
        None | Some(Value::Bool(false)) => Ok(()),
        Some(_) => Err(site.err("is `external`, which would use an existing object of the shared engine, possibly another CVM's: remove `external` and let compose create it")),
    }
}

/// The entry's `driver` must be `expected` (or unset); no `driver_opts`,
/// no `name`.
fn driver_only(site: &Site, entry: &Value, expected: &str) -> Result<(), ComposeError> {
    if entry.get("driver_opts").is_some() {
        return Err(site.err(&format!(
            "sets `driver_opts`, which can mount host paths or attach host interfaces: remove `driver_opts` and use the `{expected}` driver's defaults"
        )));
    }
    match entry.get("driver") {
        None | Some(Value::Null) => {}
        Some(Value::String(d)) if d.contains('$') => return Err(site.interpolated("`driver`")),
        Some(Value::String(d)) if d == expected => {}
        Some(d) => {
            return Err(site.err(&format!(
                "sets `driver: {}`, a plugin on the host: use the `{expected}` driver or remove `driver`",
                shown(&scalar_text(d))
            )));
        }
    }
    if entry.get("name").is_some() {
        return Err(site.err("sets `name`, which would reuse an existing object of the shared engine (another CVM's, or the host's) instead of this project's own: remove `name`"));
    }
    if let Some(labels) = entry.get("labels") {
        check_labels(site, "`labels`", labels)?;
    }
    Ok(())
}

pub(super) fn check_top_volumes(value: &Value) -> Result<(), ComposeError> {
    for (name, entry) in top_entries("volumes", value)? {
        let site = Site::entry("volumes", &name);
        external(&site, entry)?;
        driver_only(&site, entry, "local")?;
    }
    Ok(())
}

pub(super) fn check_top_networks(value: &Value) -> Result<(), ComposeError> {
    super::network::check_network_count(value)?;
    for (name, entry) in top_entries("networks", value)? {
        let site = Site::entry("networks", &name);
        external(&site, entry)?;
        driver_only(&site, entry, "bridge")?;
        super::network::check_network_addresses(&site, entry)?;
        match entry.get("ipam").and_then(|i| i.get("driver")) {
            None | Some(Value::Null) => {}
            Some(Value::String(d)) if d == "default" => {}
            Some(_) => {
                return Err(site.err("sets `ipam.driver`, a plugin on the host: remove it and use the default IPAM driver"));
            }
        }
    }
    Ok(())
}

/// Top-level `secrets`/`configs`: only `content` or `environment`.
pub(super) fn check_top_files(key: &str, value: &Value) -> Result<(), ComposeError> {
    for (name, entry) in top_entries(key, value)? {
        let site = Site::entry(key, &name);
        if entry.get("file").is_some() {
            return Err(site.err("sets `file`, which makes compose read a file on the host: use `content` or `environment` instead"));
        }
        external(&site, entry)?;
        if entry.get("content").is_none() && entry.get("environment").is_none() {
            return Err(site
                .err("has neither `content` nor `environment`: give its value with one of them"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn forbidden_top_level_keys() {
        refused_top(
            &format!("include: [../other/compose.yaml]\n{}", web("")),
            "include",
        );
        refused_top(
            &format!("models: {{m: {{model: ai/x}}}}\n{}", web("")),
            "models",
        );
    }

    #[test]
    fn top_level_objects() {
        let ok = "volumes:\n  a:\n  b:\n    driver: local\n    labels: {org.example: x}\nnetworks:\n  n:\n    driver: bridge\n    internal: true\n    ipam: {driver: default}\nsecrets:\n  s:\n    content: x\nconfigs:\n  c:\n    environment: C\n";
        allowed(&format!("{}{ok}", web("")));
        for (top, key) in [
            ("volumes:\n  v:\n    external: true\n", "volumes"),
            (
                "volumes:\n  v:\n    driver_opts: {type: none, o: bind, device: /}\n",
                "volumes",
            ),
            ("volumes:\n  v:\n    driver: nfs\n", "volumes"),
            ("volumes:\n  v:\n    driver: ${D}\n", "volumes"),
            ("volumes:\n  v:\n    name: other-cvm_data\n", "volumes"),
            (
                "volumes:\n  v:\n    labels: [\"com.docker.compose.project=x\"]\n",
                "volumes",
            ),
            ("networks:\n  n:\n    external: true\n", "networks"),
            ("networks:\n  n:\n    driver: host\n", "networks"),
            ("networks:\n  n:\n    driver: macvlan\n", "networks"),
            (
                "networks:\n  n:\n    driver_opts: {com.docker.network.bridge.name: docker0}\n",
                "networks",
            ),
            ("networks:\n  n:\n    name: host\n", "networks"),
            ("networks:\n  n:\n    ipam: {driver: plugin}\n", "networks"),
            (
                "secrets:\n  x:\n    file: ../../../../kms/root.key\n",
                "secrets",
            ),
            ("secrets:\n  x:\n    external: true\n", "secrets"),
            ("configs:\n  x:\n    file: ./c\n", "configs"),
            ("configs:\n  x:\n    external: true\n", "configs"),
            ("configs:\n  x:\n    name: y\n", "configs"),
        ] {
            refused_top(&format!("{}{top}", web("")), key);
        }
        let e = refused_top(
            &format!(
                "{}secrets:\n  x:\n    file: ../../../../kms/root.key\n",
                web("")
            ),
            "secrets",
        );
        assert!(
            e.message.contains("`secrets.x`") && e.message.contains("`file`"),
            "{}",
            e.message
        );
        allowed(&format!("{}volumes:\n  v:\n    external: false\n", web("")));
    }
}
