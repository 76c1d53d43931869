//! The rules for one service's keys: the refused keys, the checked
//! values (`privileged`, the namespaces, `volumes`, references to this
//! file, `logging`, `labels`, `deploy`) and compose's name grammars.

use super::yaml::{scalar_text, shown};
use super::{
    AGENT_SOCKET_PATHS, AGENT_SOCKETS, ComposeError, FORBIDDEN_SERVICE_KEYS, LOGGING_DRIVERS,
    Scope, Site,
};
use crate::reference::ImageReference;
use serde_yaml_ng::{Mapping, Value};
use std::collections::BTreeSet;

pub(super) fn check_service(scope: &Scope, name: &str, svc: &Mapping) -> Result<(), ComposeError> {
    for (key, value) in svc {
        let Some(key) = key.as_str() else { continue };
        let site = Site::service(name, key);
        if let Some((_, why, todo)) = FORBIDDEN_SERVICE_KEYS.iter().find(|f| f.0 == key) {
            return Err(site.err(&format!(
                "sets `{key}`, which {why}; the shared engine does not allow it: {todo}"
            )));
        }
        match key {
            "image" => {
                let ok = value
                    .as_str()
                    .is_some_and(|i| ImageReference::parse(i).is_ok());
                if !ok {
                    return Err(site.err(
                        "has no valid `image`: name the image to run, like `ghcr.io/owner/app:tag`",
                    ));
                }
            }
            "privileged" => check_privileged(&site, "`privileged`", value)?,
            "network_mode" => check_namespace(
                scope,
                &site,
                value,
                &["bridge", "none", "default"],
                true,
                "use `bridge`, `none` or `service:NAME` for a service of this file, or remove it",
            )?,
            "pid" => check_namespace(
                scope,
                &site,
                value,
                &[],
                true,
                "remove it (or use `service:NAME` for a service of this file)",
            )?,
            "ipc" => check_namespace(
                scope,
                &site,
                value,
                &["private", "shareable", "none"],
                true,
                "use `private`, `shareable`, `none` or `service:NAME` for a service of this file, or remove it",
            )?,
            "uts" => check_namespace(scope, &site, value, &[], false, "remove it")?,
            "cgroup" => check_namespace(
                scope,
                &site,
                value,
                &["private"],
                false,
                "use `private` or remove it",
            )?,
            "volumes" => {
                for v in entries(&site, value)? {
                    check_volume(&site, v)?;
                }
            }
            "volumes_from" => {
                for v in entries(&site, value)? {
                    let s = entry_str(&site, v)?;
                    let source = s.split(':').next().unwrap_or_default();
                    if source == "container" || !scope.services.contains(source) {
                        return Err(site.err(&format!(
                            "has `volumes_from: {}`, which is not a service of this file (another CVM's container could be meant): name a service of this file or remove it",
                            shown(s)
                        )));
                    }
                }
            }
            "links" => {
                for v in entries(&site, value)? {
                    let s = entry_str(&site, v)?;
                    let target = s.split(':').next().unwrap_or_default();
                    if !scope.services.contains(target) {
                        return Err(site.err(&format!(
                            "has `links: {}`, which is not a service of this file: link only to services of this file, or remove it",
                            shown(s)
                        )));
                    }
                }
            }
            "extends" => check_extends(scope, &site, value)?,
            "logging" => check_logging(&site, value)?,
            "labels" => check_labels(&site, "`labels`", value)?,
            "deploy" => check_deploy(&site, value)?,
            "networks" => {
                check_refs(&site, value, &scope.networks, true)?;
                super::network::check_service_networks(&site, value)?;
            }
            "ports" => super::network::check_ports(&site, value)?,
            "secrets" => check_refs(&site, value, &scope.secrets, false)?,
            "configs" => check_refs(&site, value, &scope.configs, false)?,
            "post_start" | "pre_stop" => {
                for hook in entries(&site, value)? {
                    if let Some(p) = hook.get("privileged") {
                        check_privileged(&site, &format!("the `privileged` of a `{key}` hook"), p)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_privileged(site: &Site, what: &str, value: &Value) -> Result<(), ComposeError> {
    match value {
        Value::Bool(false) => Ok(()),
        Value::String(s) if s.contains('$') => Err(site.interpolated(what)),
        _ => Err(site.err(&format!(
            "sets {what} to something other than `false`, which would give the container root on the host of the shared engine: remove it"
        ))),
    }
}

/// `network_mode`, `pid`, `ipc`, `uts`, `cgroup`: an allowlist, plus
/// `service:NAME` for a service of this file where `service_ok`.
fn check_namespace(
    scope: &Scope,
    site: &Site,
    value: &Value,
    allowed: &[&str],
    service_ok: bool,
    todo: &str,
) -> Result<(), ComposeError> {
    let key = site.key;
    let s = match value {
        Value::Null => return Ok(()),
        Value::String(s) => s.as_str(),
        _ => {
            return Err(site.err(&format!(
                "sets `{key}` to something that is not a string: {todo}"
            )));
        }
    };
    if s.contains('$') {
        return Err(site.interpolated(&format!("`{key}`")));
    }
    if s.is_empty() || allowed.contains(&s) {
        return Ok(());
    }
    if service_ok
        && let Some(other) = s.strip_prefix("service:")
        && scope.services.contains(other)
    {
        return Ok(());
    }
    let why = if s == "host" {
        "which would share a namespace of the host".to_owned()
    } else if s.starts_with("container:") {
        "which would join a container outside this file, possibly another CVM's".to_owned()
    } else if s.starts_with("service:") {
        "which does not name a service of this file".to_owned()
    } else {
        "which the shared engine does not allow".to_owned()
    };
    Err(site.err(&format!("sets `{key}: {}`, {why}: {todo}", shown(s))))
}

/// The items of a list-valued key (null is an empty list).
fn entries<'v>(site: &Site, value: &'v Value) -> Result<&'v [Value], ComposeError> {
    match value {
        Value::Null => Ok(&[]),
        Value::Sequence(s) => Ok(s),
        _ => Err(site.err(&format!(
            "has a `{}` that is not a list: write it as a list",
            site.key
        ))),
    }
}

/// A list item that must be a string without `$`.
fn entry_str<'v>(site: &Site, value: &'v Value) -> Result<&'v str, ComposeError> {
    let s = value.as_str().ok_or_else(|| {
        site.err(&format!(
            "has an entry of `{}` that is not a string: write each entry as a string",
            site.key
        ))
    })?;
    if s.contains('$') {
        return Err(site.interpolated(&format!("an entry of `{}`", site.key)));
    }
    Ok(s)
}

fn check_volume(site: &Site, v: &Value) -> Result<(), ComposeError> {
    match v {
        Value::String(s) => {
            if s.contains('$') {
                return Err(site.interpolated("an entry of `volumes`"));
            }
            match s.split_once(':') {
                // A single path: an anonymous volume.
                None => Ok(()),
                Some((source, rest)) if agent_socket_of(source).is_some() => {
                    let mut parts = rest.splitn(2, ':');
                    let target = parts.next().unwrap_or_default();
                    match parts.next() {
                        None | Some("ro") | Some("rw") => check_agent_target(site, target),
                        Some(mode) => Err(site.err(&format!(
                            "mounts the guest agent socket in `volumes` with the option `{}`: use `ro`, `rw` or no option",
                            shown(mode)
                        ))),
                    }
                }
                Some((source, _)) => check_volume_source(site, source),
            }
        }
        Value::Mapping(m) => {
            let source = match m.get("source") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.contains('$') => {
                    return Err(site.interpolated("the `source` of an entry of `volumes`"));
                }
                Some(Value::String(s)) => Some(s.as_str()),
                Some(_) => {
                    return Err(site.err("has a `volumes` entry whose `source` is not a string: name a volume of this file"));
                }
            };
            let kind = match m.get("type") {
                Some(Value::String(t)) if t.contains('$') => {
                    return Err(site.interpolated("the `type` of an entry of `volumes`"));
                }
                Some(Value::String(t)) => t.as_str(),
                _ => {
                    return Err(site.err("has a `volumes` entry without a `type`: use `type: volume` with a volume name, or `type: tmpfs`"));
                }
            };
            if let Some(source) = source
                && agent_socket_of(source).is_some()
            {
                return check_agent_bind(site, kind, m);
            }
            if let Some(source) = source
                && is_agent_socket(source)
            {
                return Err(agent_socket(site, source));
            }
            match kind {
                "volume" => match source {
                    None => Ok(()),
                    Some(source) => check_volume_source(site, source),
                },
                "tmpfs" => Ok(()),
                "bind" => Err(site.err(&format!(
                    "has a `volumes` entry of `type: bind`{}, which would mount a host path into the container: use a named volume (`type: volume`) or `type: tmpfs` instead",
                    source.map(|s| format!(" from `{}`", shown(s))).unwrap_or_default()
                ))),
                other => Err(site.err(&format!(
                    "has a `volumes` entry of `type: {}`, which the shared engine does not allow: use a named volume (`type: volume`) or `type: tmpfs` instead",
                    shown(other)
                ))),
            }
        }
        _ => Err(site.err("has a `volumes` entry that is neither a string nor a mapping: write `NAME:/path` for a named volume")),
    }
}

/// A long-syntax mount of the guest agent socket: `type: bind`, a target,
/// and nothing that reaches further than the socket (`read_only`, and
/// `bind.create_host_path`, are all it may say).
fn check_agent_bind(site: &Site, kind: &str, m: &Mapping) -> Result<(), ComposeError> {
    if kind != "bind" {
        return Err(site.err(&format!(
            "mounts the guest agent socket in `volumes` with `type: {}`: mount it with `type: bind`",
            shown(kind)
        )));
    }
    for (key, value) in m {
        match key.as_str().unwrap_or_default() {
            "type" | "source" | "read_only" => {}
            "target" => check_agent_target(site, value.as_str().unwrap_or_default())?,
            "bind" => {
                let only_create = value
                    .as_mapping()
                    .is_some_and(|b| b.keys().all(|k| k.as_str() == Some("create_host_path")));
                if !only_create {
                    return Err(site.err("mounts the guest agent socket in `volumes` with `bind` options: remove them (only `create_host_path` is allowed)"));
                }
            }
            other => {
                return Err(site.err(&format!(
                    "mounts the guest agent socket in `volumes` with `{}`: remove it (`type`, `source`, `target` and `read_only` are what such a mount may say)",
                    shown(other)
                )));
            }
        }
    }
    if !m.contains_key("target") {
        return Err(site.err("mounts the guest agent socket in `volumes` without a `target`: name the path inside the container, like `/var/run/dstack.sock`"));
    }
    Ok(())
}

fn check_agent_target(site: &Site, target: &str) -> Result<(), ComposeError> {
    if !target.starts_with('/') || target.contains('$') {
        return Err(site.err(&format!(
            "mounts the guest agent socket in `volumes` at `{}`, which is not an absolute path in the container: write it like `/var/run/dstack.sock`",
            shown(target)
        )));
    }
    Ok(())
}

/// The source of a short-syntax volume or of a `type: volume` entry: a
/// volume name, never a host path.
fn check_volume_source(site: &Site, source: &str) -> Result<(), ComposeError> {
    if is_agent_socket(source) {
        return Err(agent_socket(site, source));
    }
    if source.starts_with(['/', '.', '~']) || source.contains(['/', '\\']) {
        return Err(site.err(&format!(
            "has a `volumes` entry that bind-mounts the host path `{}`, which the shared engine does not allow: use a named volume (`NAME:/path`) or `tmpfs` instead",
            shown(source)
        )));
    }
    if !is_volume_name(source) {
        return Err(site.err(&format!(
            "has a `volumes` entry whose source `{}` is not a volume name: use a name of letters, digits, `_`, `.` and `-`, like `data:/var/lib/app`",
            shown(source)
        )));
    }
    Ok(())
}

/// The socket file (`dstack.sock` or `tappd.sock`) of the CVM's guest agent
/// that a mount's `source` names, when it is one of [`AGENT_SOCKET_PATHS`]:
/// such a mount is rendered with the CVM's own socket as its source.
pub(super) fn agent_socket_of(source: &str) -> Option<&'static str> {
    let path = source.trim_end_matches('/');
    AGENT_SOCKET_PATHS
        .contains(&path)
        .then(|| AGENT_SOCKETS.iter().find(|f| path.ends_with(*f)).copied())
        .flatten()
}

/// A path elsewhere that names an agent socket file.
fn is_agent_socket(source: &str) -> bool {
    let path = source.trim_end_matches('/');
    path.contains('/')
        && path
            .rsplit('/')
            .next()
            .is_some_and(|file| AGENT_SOCKETS.contains(&file))
}

fn agent_socket(site: &Site, source: &str) -> ComposeError {
    site.err(&format!(
        "mounts `{}` in `volumes`: the dstack guest agent socket is mapped to the CVM's own agent only from `/var/run/dstack.sock`, `/run/dstack.sock`, `/var/run/tappd.sock` or `/run/tappd.sock` with a bind mount, and no other host path is mounted: use one of those",
        shown(source)
    ))
}

fn check_extends(scope: &Scope, site: &Site, value: &Value) -> Result<(), ComposeError> {
    let base = match value {
        Value::String(s) => s.as_str(),
        Value::Mapping(m) => {
            if m.contains_key("file") {
                return Err(site.err("has `extends` with a `file`, which makes compose read another file on the host: extend only a service of this file, without `file`"));
            }
            m.get("service").and_then(Value::as_str).unwrap_or_default()
        }
        _ => return Err(site.err("has an `extends` that is neither a service name nor a mapping: write `extends: {service: NAME}`")),
    };
    if base.contains('$') {
        return Err(site.interpolated("`extends`"));
    }
    if !scope.services.contains(base) {
        return Err(site.err(&format!(
            "has `extends` of `{}`, which is not a service of this file: extend a service of this file",
            shown(base)
        )));
    }
    Ok(())
}

fn check_logging(site: &Site, value: &Value) -> Result<(), ComposeError> {
    let driver =
        match value.get("driver") {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::String(d)) => d.as_str(),
            Some(_) => return Err(site.err(
                "sets a `logging.driver` that is not a string: use `json-file`, `local` or `none`",
            )),
        };
    if driver.contains('$') {
        return Err(site.interpolated("`logging.driver`"));
    }
    if !LOGGING_DRIVERS.contains(&driver) {
        return Err(site.err(&format!(
            "sets `logging.driver: {}`, which would ship the logs to an address outside the CVM: use `json-file`, `local` or `none`",
            shown(driver)
        )));
    }
    Ok(())
}

/// Label names in `com.docker.compose.*` are compose's own.
pub(super) fn check_labels(site: &Site, what: &str, value: &Value) -> Result<(), ComposeError> {
    let refused = |name: &str| {
        name.trim()
            .to_ascii_lowercase()
            .starts_with("com.docker.compose.")
    };
    let bad = |name: &str| {
        site.err(&format!(
            "sets the label `{}` in {what}, a name compose keeps for itself (it would attribute the container to another project): use a label name outside `com.docker.compose.`",
            shown(name)
        ))
    };
    match value {
        Value::Null => {}
        Value::Mapping(m) => {
            for name in m.keys() {
                let name = scalar_text(name);
                if refused(&name) {
                    return Err(bad(&name));
                }
            }
        }
        Value::Sequence(s) => {
            for item in s {
                let item = item.as_str().ok_or_else(|| {
                    site.err(&format!(
                        "has an entry of {what} that is not a string: write `NAME=VALUE`"
                    ))
                })?;
                let name = item.split('=').next().unwrap_or_default();
                if name.contains('$') {
                    return Err(site.interpolated(&format!("a label name of {what}")));
                }
                if refused(name) {
                    return Err(bad(name));
                }
            }
        }
        _ => {
            return Err(site.err(&format!(
                "has {what} that is neither a mapping nor a list: write `NAME: VALUE`"
            )));
        }
    }
    Ok(())
}

fn check_deploy(site: &Site, value: &Value) -> Result<(), ComposeError> {
    let devices = value
        .get("resources")
        .and_then(|r| r.get("reservations"))
        .and_then(|r| r.get("devices"));
    if devices.is_some_and(|d| !d.is_null()) {
        return Err(site.err("reserves `deploy.resources.reservations.devices`, which would pass host devices (GPUs) into the container: remove them"));
    }
    if let Some(labels) = value.get("labels") {
        check_labels(site, "`deploy.labels`", labels)?;
    }
    Ok(())
}

/// `networks`, `secrets`, `configs` of a service: each names a top-level
/// entry of this file (`default` for networks).
fn check_refs(
    site: &Site,
    value: &Value,
    defined: &BTreeSet<String>,
    default_ok: bool,
) -> Result<(), ComposeError> {
    let key = site.key;
    let mut names = Vec::new();
    match value {
        Value::Null => {}
        Value::Mapping(m) => names.extend(m.keys().map(scalar_text)),
        Value::Sequence(s) => {
            for item in s {
                let name = match item {
                    Value::String(n) => n.clone(),
                    Value::Mapping(m) => match m.get("source").and_then(Value::as_str) {
                        Some(n) => n.to_owned(),
                        None => return Err(site.err(&format!("has an entry of `{key}` without `source`: name a top-level `{key}` entry"))),
                    },
                    _ => return Err(site.err(&format!("has an entry of `{key}` that is not a name: name a top-level `{key}` entry"))),
                };
                names.push(name);
            }
        }
        _ => {
            return Err(site.err(&format!(
                "has a `{key}` that is neither a list nor a mapping: list top-level `{key}` entries"
            )));
        }
    }
    for name in names {
        if name.contains('$') {
            return Err(site.interpolated(&format!("an entry of `{key}`")));
        }
        if !(defined.contains(&name) || default_ok && name == "default") {
            return Err(site.err(&format!(
                "refers to `{key}: {}`, which is not defined at the top level of this file: define it under the top-level `{key}` or remove it",
                shown(&name)
            )));
        }
    }
    Ok(())
}

/// Compose's grammar for service names.
pub(super) fn is_service_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Docker's grammar for volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
fn is_volume_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.len() > 1
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::policy::{FORBIDDEN_SERVICE_KEYS, LOGGING_DRIVERS};

    #[test]
    fn forbidden_service_keys() {
        for (key, _, _) in FORBIDDEN_SERVICE_KEYS {
            refused_at(&web(&format!("{key}: x")), key);
        }
        let e = refused_at(&web("cap_add: [ALL]"), "cap_add");
        assert!(e.message.contains("remove it"), "{}", e.message);
        refused_at(&web("container_name: other-cvm-web"), "container_name");
        refused_at(&web("env_file: .env"), "env_file");
        refused_at(&web("build: ."), "build");
        // Keys compose does not know are left to compose.
        allowed(&web("some_future_key: 1"));
    }

    #[test]
    fn privileged() {
        allowed(&web("privileged: false"));
        for v in ["true", "\"false\"", "yes", "1", "~", "[false]"] {
            let e = refused_at(&web(&format!("privileged: {v}")), "privileged");
            assert!(e.message.contains("root on the host"), "{}", e.message);
        }
        let e = refused_at(&web("privileged: ${PRIV}"), "privileged");
        assert!(e.message.contains('$'), "{}", e.message);
        refused_at(
            &web("post_start:\n  - command: [sh]\n    privileged: true"),
            "post_start",
        );
        allowed(&web(
            "post_start:\n  - command: [sh]\n    user: root\npre_stop:\n  - command: [sh]\n    privileged: false",
        ));
    }

    #[test]
    fn namespaces() {
        for v in ["bridge", "none", "default", "service:db", "\"\""] {
            allowed(&web(&format!("network_mode: {v}")));
        }
        for v in [
            "host",
            "container:other",
            "service:nope",
            "other-cvm_default",
            "HOST",
            "1",
        ] {
            refused_at(&web(&format!("network_mode: {v}")), "network_mode");
        }
        let e = refused_at(&web("network_mode: host"), "network_mode");
        assert!(e.message.contains("namespace of the host"), "{}", e.message);
        for v in ["host", "container:x", "service:nope"] {
            refused_at(&web(&format!("pid: {v}")), "pid");
            refused_at(&web(&format!("ipc: {v}")), "ipc");
            refused_at(&web(&format!("uts: {v}")), "uts");
        }
        allowed(&web("pid: service:db"));
        for v in ["private", "shareable", "none", "service:db"] {
            allowed(&web(&format!("ipc: {v}")));
        }
        allowed(&web("cgroup: private"));
        refused_at(&web("cgroup: host"), "cgroup");
    }

    #[test]
    fn volumes_short_and_long() {
        for v in [
            "data:/var/lib/data",
            "data:/d:ro",
            "/anonymous",
            "my.vol-1:/x:rw",
        ] {
            allowed(&format!(
                "{}volumes:\n  data:\n  my.vol-1:\n",
                web(&format!("volumes: [\"{v}\"]"))
            ));
        }
        for v in [
            "/:/host",
            "/var/run/docker.sock:/var/run/docker.sock",
            "./data:/d",
            "../up:/d",
            "~/x:/y",
            "a/b:/c",
            "C:\\\\x:/y",
            ":/x",
        ] {
            let e = refused_at(&web(&format!("volumes: [\"{v}\"]")), "volumes");
            assert!(!e.message.contains("dstack"), "{}", e.message);
        }
        let e = refused_at(&web("volumes: [\"/:/host\"]"), "volumes");
        assert!(
            e.message.contains("bind-mounts the host path `/`"),
            "{}",
            e.message
        );
        allowed(&web(
            "volumes:\n  - type: volume\n    source: data\n    target: /d\n  - type: tmpfs\n    target: /tmp\n  - type: volume\n    target: /anon",
        ));
        for t in ["bind", "image", "npipe", "cluster"] {
            let e = refused_at(
                &web(&format!(
                    "volumes:\n  - type: {t}\n    source: /etc\n    target: /x"
                )),
                "volumes",
            );
            assert!(e.message.contains(&format!("type: {t}")), "{}", e.message);
        }
        refused_at(
            &web("volumes:\n  - type: volume\n    source: /etc\n    target: /x"),
            "volumes",
        );
        refused_at(
            &web("volumes:\n  - source: data\n    target: /x"),
            "volumes",
        );
        refused_at(&web("volumes: data:/x"), "volumes");
    }

    #[test]
    fn dstack_socket_is_allowed_from_its_four_paths() {
        for yaml in [
            web("volumes:\n  - /var/run/dstack.sock:/var/run/dstack.sock"),
            web("volumes:\n  - /run/dstack.sock:/app/agent.sock:ro"),
            web("volumes:\n  - /var/run/tappd.sock:/var/run/tappd.sock:rw"),
            web("volumes:\n  - /run/tappd.sock:/run/tappd.sock"),
            web(
                "volumes:\n  - type: bind\n    source: /var/run/dstack.sock\n    target: /var/run/dstack.sock",
            ),
            web(
                "volumes:\n  - type: bind\n    source: /run/tappd.sock\n    target: /x.sock\n    read_only: true\n    bind:\n      create_host_path: true",
            ),
        ] {
            allowed(&yaml);
        }
    }

    #[test]
    fn dstack_socket_elsewhere_or_with_options_is_refused() {
        for (yaml, part) in [
            (
                web("volumes:\n  - /tmp/dstack.sock:/var/run/dstack.sock"),
                "only from `/var/run/dstack.sock`",
            ),
            (
                web("volumes:\n  - /var/run/dstack.sock:/var/run/dstack.sock:z"),
                "the option `z`",
            ),
            (
                web("volumes:\n  - /var/run/dstack.sock:relative"),
                "not an absolute path",
            ),
            (
                web("volumes:\n  - type: volume\n    source: /var/run/dstack.sock\n    target: /x"),
                "`type: bind`",
            ),
            (
                web(
                    "volumes:\n  - type: bind\n    source: /var/run/dstack.sock\n    target: /x\n    bind:\n      propagation: shared",
                ),
                "`bind` options",
            ),
            (
                web("volumes:\n  - type: bind\n    source: /var/run/dstack.sock"),
                "without a `target`",
            ),
            (
                web(
                    "volumes:\n  - type: bind\n    source: /var/run/docker.sock\n    target: /var/run/dstack.sock",
                ),
                "mount a host path",
            ),
            (
                web("volumes:\n  - /var/run/:/var/run/"),
                "bind-mounts the host path",
            ),
        ] {
            let e = refused_at(&yaml, "volumes");
            assert!(e.message.contains(part), "{part}: {}", e.message);
        }
    }

    #[test]
    fn references_to_this_file() {
        allowed(&web(
            "volumes_from: [db, \"db:ro\"]\nlinks: [db, \"db:database\"]",
        ));
        refused_at(&web("volumes_from: [\"container:other\"]"), "volumes_from");
        refused_at(&web("volumes_from: [nope]"), "volumes_from");
        refused_at(&web("links: [\"nope:db\"]"), "links");
        allowed(&web("extends: db"));
        allowed(&web("extends: {service: db}"));
        let e = refused_at(&web("extends: {service: db, file: ../x.yaml}"), "extends");
        assert!(e.message.contains("`file`"), "{}", e.message);
        refused_at(&web("extends: {service: nope}"), "extends");

        let top = "networks:\n  front:\nsecrets:\n  s:\n    environment: S\nconfigs:\n  c:\n    content: hello\n";
        allowed(&format!(
            "{}{top}",
            web(
                "networks: [front, default]\nsecrets: [s, {source: s, target: /run/s}]\nconfigs: [c]"
            )
        ));
        allowed(&format!(
            "{}{top}",
            web("networks:\n  front:\n    aliases: [w]")
        ));
        refused_at(
            &format!("{}{top}", web("networks: [other-cvm_default]")),
            "networks",
        );
        refused_at(&format!("{}{top}", web("secrets: [nope]")), "secrets");
        refused_at(
            &format!("{}{top}", web("configs: [{source: nope}]")),
            "configs",
        );
    }

    #[test]
    fn logging_and_labels() {
        for d in LOGGING_DRIVERS {
            allowed(&web(&format!(
                "logging:\n  driver: {d}\n  options: {{max-size: 10m}}"
            )));
        }
        allowed(&web("logging:\n  options: {max-size: 10m}"));
        for d in ["syslog", "gelf", "fluentd", "awslogs"] {
            let e = refused_at(&web(&format!("logging:\n  driver: {d}")), "logging");
            assert!(e.message.contains("logging.driver"), "{}", e.message);
        }
        allowed(&web(
            "labels:\n  org.example.team: a\n  com.docker.other: x",
        ));
        refused_at(
            &web("labels:\n  com.docker.compose.project: other"),
            "labels",
        );
        refused_at(
            &web("labels: [\"com.docker.compose.project=other\"]"),
            "labels",
        );
        refused_at(
            &web("labels: [\"Com.Docker.Compose.service=db\"]"),
            "labels",
        );
        refused_at(&web("labels: [\"${L}=x\"]"), "labels");
        allowed(&web("labels: [\"org.example=${VALUE}\"]"));
        refused_at(
            &web("deploy:\n  labels: [\"com.docker.compose.project=x\"]"),
            "deploy",
        );
    }

    #[test]
    fn deploy_devices() {
        allowed(&web(
            "deploy:\n  resources:\n    limits: {cpus: '0.5', memory: 512M}\n    reservations: {memory: 128M}",
        ));
        let e = refused_at(
            &web(
                "deploy:\n  resources:\n    reservations:\n      devices:\n        - capabilities: [gpu]",
            ),
            "deploy",
        );
        assert!(e.message.contains("devices"), "{}", e.message);
    }

    #[test]
    fn interpolation_in_checked_fields() {
        for (line, key) in [
            ("network_mode: ${MODE}", "network_mode"),
            ("pid: $PID", "pid"),
            ("ipc: ${IPC:-private}", "ipc"),
            ("uts: ${U}", "uts"),
            ("cgroup: ${C}", "cgroup"),
            ("privileged: ${P}", "privileged"),
            ("volumes: [\"${SRC}:/data\"]", "volumes"),
            ("volumes: [\"${ANY}\"]", "volumes"),
            (
                "volumes:\n  - type: ${T}\n    source: data\n    target: /d",
                "volumes",
            ),
            (
                "volumes:\n  - type: volume\n    source: ${S}\n    target: /d",
                "volumes",
            ),
            ("logging: {driver: \"${DRIVER}\"}", "logging"),
            ("volumes_from: [\"${F}\"]", "volumes_from"),
            ("links: [\"${L}\"]", "links"),
            ("extends: ${E}", "extends"),
        ] {
            let e = refused_at(&web(line), key);
            assert!(
                e.message.contains("`$`") && e.message.contains("without `$`"),
                "{}",
                e.message
            );
        }
    }
}
