//! [`ComposeFile`]: the app's compose file, which images it names, the one
//! compose policy of the shared-engine mode, and the file handed to the
//! compose tool.
//!
//! # The policy, and why
//!
//! In Berth's local mode every tenant's CVM runs its compose file on **one
//! shared Docker engine that runs as root on the host**. Whatever a compose
//! file can ask of that engine, a tenant gets: a privileged container, a host
//! namespace, a host path, a device or a capability is root on the host, and
//! from there every other tenant's images, keys and logs. So a tenant's
//! compose file may describe containers and nothing else.
//!
//! [`ComposeFile::check_policy`] enforces that. The control plane runs it at
//! provisioning and the boot agent runs it again before `compose up` (the
//! host-shared copy may have changed in between); both call
//! [`ComposeFile::parse_and_check`]. The rules:
//!
//! - **Keys refused outright**, per service: [`FORBIDDEN_SERVICE_KEYS`]
//!   (capabilities, devices, security options, sysctls, cgroups, runtimes,
//!   host files read by compose, global container names, plugins, …); at top
//!   level: [`FORBIDDEN_TOP_LEVEL_KEYS`].
//! - **Keys whose value is checked**, per service:
//!   - `privileged` (and `privileged` of `post_start`/`pre_stop` hooks):
//!     only the literal `false`;
//!   - `network_mode`: `bridge`, `none`, `default` or `service:NAME` of this
//!     file; `pid`: `service:NAME`; `ipc`: `private`, `shareable`, `none` or
//!     `service:NAME`; `uts`: nothing; `cgroup`: `private` (never `host`,
//!     never `container:…`, never another network's name);
//!   - `volumes`: named volumes, anonymous volumes and tmpfs only (no bind
//!     mounts, no `image`/`npipe`/`cluster` volumes); the dstack guest agent
//!     socket gets its own message (Berth has no per-CVM guest agent yet);
//!   - `volumes_from`, `links`, `extends` (without `file`), `networks`,
//!     `secrets`, `configs`: only what this file defines;
//!   - `logging`: drivers `json-file`, `local` or `none` (the others ship
//!     logs to addresses);
//!   - `labels` (and `deploy.labels`): no `com.docker.compose.*` names, which
//!     would make the node attribute the container to another CVM's project;
//!   - `deploy`: no `resources.reservations.devices`.
//! - **Top level**: `volumes` only with the `local` driver and no
//!   `driver_opts`, `external` or `name`; `networks` only with the `bridge`
//!   driver and no `driver_opts`, `external`, `name` or IPAM driver (an
//!   explicit `name` would join an existing network or volume: another
//!   CVM's, or `host`); `secrets`/`configs` only from `content` or
//!   `environment` (never `file`, never `external`).
//! - **Interpolation**: compose replaces `$VAR`s with the tenant's env values
//!   when it runs, after this check, so `network_mode: ${MODE}` could become
//!   `host`. Every checked value above is refused if it contains `$`.
//! - **YAML**: merge keys (`<<: *anchor`) are resolved before the check and
//!   [`ComposeFile::render`] writes the resolved document, so what is checked
//!   is exactly what compose runs; YAML tags (`!reset`, `!override`, …) are
//!   refused; service names follow compose's grammar.
//!
//! Everything else is left to compose, which refuses keys it does not know:
//! ports, environment, healthchecks, resource limits, `x-*` fields, …
//!
//! Every [`ComposeError`] names the service and the key and says what to
//! do, in one sentence. Names from the file are shown with control
//! characters escaped, and no message quotes an environment value.

use crate::reference::ImageReference;
use serde_yaml_ng::{Mapping, Value};
use std::collections::BTreeSet;

/// Service keys refused outright, each with what it would give a tenant on
/// the shared engine and what to do instead.
pub const FORBIDDEN_SERVICE_KEYS: &[(&str, &str, &str)] = &[
    (
        "cap_add",
        "adds Linux capabilities beyond Docker's defaults",
        "remove it",
    ),
    (
        "devices",
        "passes host devices into the container",
        "remove it",
    ),
    (
        "device_cgroup_rules",
        "grants the container access to host devices",
        "remove it",
    ),
    ("gpus", "passes host GPUs into the container", "remove it"),
    (
        "security_opt",
        "can switch off seccomp, AppArmor and SELinux confinement",
        "remove it",
    ),
    ("sysctls", "changes kernel parameters", "remove it"),
    (
        "cgroup_parent",
        "places the container in a host cgroup of the file's choosing",
        "remove it",
    ),
    (
        "runtime",
        "selects another container runtime on the host",
        "remove it",
    ),
    (
        "userns_mode",
        "can switch off user-namespace isolation",
        "remove it",
    ),
    (
        "isolation",
        "changes the container's isolation technology",
        "remove it",
    ),
    (
        "env_file",
        "makes compose read a file on the host",
        "remove it and list the variables under `environment:` instead",
    ),
    (
        "label_file",
        "makes compose read a file on the host",
        "remove it and list the labels under `labels:` instead",
    ),
    (
        "build",
        "builds an image on the host (a CVM pulls its images)",
        "build and push the image, then name it with `image:` only",
    ),
    (
        "external_links",
        "links to containers that other CVMs may own",
        "remove it and use `depends_on` or a network of this file",
    ),
    (
        "container_name",
        "takes a name that is global on the shared engine (it could squat another CVM's container)",
        "remove it and let compose name the container",
    ),
    (
        "volume_driver",
        "selects a volume plugin on the host",
        "remove it",
    ),
    (
        "storage_opt",
        "sets storage-driver options on the host",
        "remove it",
    ),
    (
        "use_api_socket",
        "mounts the shared Docker engine's socket into the container",
        "remove it",
    ),
    (
        "provider",
        "runs a provider plugin binary on the host",
        "remove it and describe the service with `image:`",
    ),
    (
        "develop",
        "syncs files from the host into the container",
        "remove it",
    ),
    (
        "credential_spec",
        "reads credential specs from the host",
        "remove it",
    ),
    (
        "net",
        "is the legacy spelling of `network_mode` and is not checked",
        "remove it",
    ),
    (
        "log_driver",
        "is the legacy spelling of `logging.driver` and is not checked",
        "use `logging: {driver: json-file}` instead",
    ),
];

/// Top-level keys refused outright, with the same shape as
/// [`FORBIDDEN_SERVICE_KEYS`].
pub const FORBIDDEN_TOP_LEVEL_KEYS: &[(&str, &str, &str)] = &[
    (
        "include",
        "makes compose read other compose files from the host",
        "put all services in this one file",
    ),
    (
        "models",
        "runs Docker Model Runner on the host",
        "remove it",
    ),
];

/// The logging drivers that keep logs on the engine; the others ship them to
/// addresses of the file's choosing.
pub const LOGGING_DRIVERS: &[&str] = &["json-file", "local", "none"];

/// File names of the dstack guest agent socket (current and older).
const AGENT_SOCKETS: &[&str] = &["dstack.sock", "tappd.sock"];

/// How many nested levels of merge keys are resolved before giving up.
const MAX_MERGE_PASSES: usize = 64;

/// One service's image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceImage {
    /// The service name.
    pub service: String,
    /// The image as written in the compose file.
    pub written: String,
    /// The parsed, normalised reference.
    pub reference: ImageReference,
}

/// Why a compose file is refused: the service and key concerned, and one
/// sentence. Never quotes an environment value; names from the file are
/// shown with control characters escaped (in `service` as well).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ComposeError {
    /// The service concerned, if any (control characters escaped).
    pub service: Option<String>,
    /// The key concerned (`privileged`, `volumes`, …), if any.
    pub key: Option<String>,
    /// One sentence.
    pub message: String,
}

impl ComposeError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            service: None,
            key: None,
            message: message.into(),
        }
    }

    fn top(key: &str, message: String) -> Self {
        Self {
            service: None,
            key: Some(key.to_owned()),
            message,
        }
    }
}

/// A parsed compose file.
#[derive(Clone, Debug)]
pub struct ComposeFile {
    doc: Value,
    /// Every service's image, in file order.
    pub images: Vec<ServiceImage>,
}

impl ComposeFile {
    /// Parses the YAML, resolves its merge keys (`<<: *anchor`) and collects
    /// each service's image. A service with only `build:` is an error: a CVM
    /// pulls images, it does not build them.
    ///
    /// This does not apply the policy: use [`ComposeFile::parse_and_check`].
    pub fn parse(yaml: &str) -> Result<Self, ComposeError> {
        let mut doc: Value = serde_yaml_ng::from_str(yaml).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                .unwrap_or_default();
            ComposeError::new(format!("the compose file is not valid YAML{at}"))
        })?;
        resolve_merges(&mut doc)?;
        let services = doc
            .get("services")
            .and_then(Value::as_mapping)
            .ok_or_else(|| ComposeError::new("the compose file has no `services`"))?;
        let mut images = Vec::new();
        for (name, svc) in services {
            let service = name.as_str().unwrap_or("?").to_owned();
            let shown_service = shown(&service);
            let err = |key: &str, message: String| ComposeError {
                service: Some(shown_service.clone()),
                key: Some(key.to_owned()),
                message,
            };
            match svc.get("image").and_then(Value::as_str) {
                Some(written) => {
                    let reference = ImageReference::parse(written).map_err(|e| {
                        err(
                            "image",
                            format!("service `{shown_service}`: {}", escaped(&e.to_string())),
                        )
                    })?;
                    images.push(ServiceImage {
                        service,
                        written: written.to_owned(),
                        reference,
                    });
                }
                None if svc.get("build").is_some() => {
                    return Err(err(
                        "build",
                        format!(
                            "service `{shown_service}` has only `build:`; a CVM pulls images and cannot build them: build and push the image, then name it with `image:`"
                        ),
                    ));
                }
                None => {
                    return Err(err(
                        "image",
                        format!(
                            "service `{shown_service}` has no `image:`: name the image to run with `image:`"
                        ),
                    ));
                }
            }
        }
        if images.is_empty() {
            return Err(ComposeError::new("the compose file defines no services"));
        }
        Ok(Self { doc, images })
    }

    /// [`ComposeFile::parse`], then [`ComposeFile::check_policy`]: what the
    /// control plane (at provisioning) and the boot agent (before
    /// `compose up`) both call.
    pub fn parse_and_check(yaml: &str) -> Result<Self, ComposeError> {
        let file = Self::parse(yaml)?;
        file.check_policy()?;
        Ok(file)
    }

    /// Applies the shared-engine compose policy (see the [module
    /// documentation](self)): `Ok` if the file asks the engine for nothing
    /// beyond its own containers, else the first offending service and key.
    pub fn check_policy(&self) -> Result<(), ComposeError> {
        if let Some(path) = find_tag(&self.doc, &mut Vec::new()) {
            let at = if path.is_empty() {
                "the document".to_owned()
            } else {
                format!("`{}`", shown(&path.join(".")))
            };
            let (service, key) = match path.as_slice() {
                [s, service, key, ..] if s == "services" => (Some(shown(service)), key.clone()),
                [key, ..] => (None, key.clone()),
                [] => (None, "services".to_owned()),
            };
            return Err(ComposeError {
                service,
                key: Some(key),
                message: format!(
                    "the compose file uses a YAML tag (like `!reset` or `!override`) at {at}, which Berth does not check: remove the tag"
                ),
            });
        }
        let top = self
            .doc
            .as_mapping()
            .ok_or_else(|| ComposeError::new("the compose file is not a mapping"))?;
        for (key, value) in top {
            let Some(key) = key.as_str() else { continue };
            if let Some((_, why, todo)) = FORBIDDEN_TOP_LEVEL_KEYS.iter().find(|f| f.0 == key) {
                return Err(ComposeError::top(
                    key,
                    format!(
                        "the top-level `{key}` {why}; the shared engine does not allow it: {todo}"
                    ),
                ));
            }
            match key {
                "volumes" => check_top_volumes(value)?,
                "networks" => check_top_networks(value)?,
                "secrets" | "configs" => check_top_files(key, value)?,
                _ => {}
            }
        }
        let scope = Scope::of(top);
        let services = top
            .get("services")
            .and_then(Value::as_mapping)
            .ok_or_else(|| ComposeError::new("the compose file has no `services`"))?;
        for (name, svc) in services {
            let Some(name) = name.as_str().filter(|n| is_service_name(n)) else {
                let shown_name = shown(&scalar_text(name));
                return Err(ComposeError {
                    service: Some(shown_name.clone()),
                    key: Some("services".into()),
                    message: format!(
                        "service name `{shown_name}` is not valid: name the service with a string of letters, digits, `.`, `_` and `-`"
                    ),
                });
            };
            let svc = svc.as_mapping().ok_or_else(|| {
                Site::service(name, "services")
                    .err("is not a mapping: describe the service with `image:` and its settings")
            })?;
            check_service(&scope, name, svc)?;
        }
        Ok(())
    }

    /// The compose file to run, with each service's image replaced by what
    /// the engine knows it as (`replacements`: service → local name), so the
    /// compose tool finds every image locally and never pulls. Merge keys
    /// are already resolved: compose runs exactly what was checked.
    pub fn render(&self, replacements: &[(String, String)]) -> String {
        let mut doc = self.doc.clone();
        if let Some(services) = doc.get_mut("services").and_then(Value::as_mapping_mut) {
            for (service, image) in replacements {
                if let Some(svc) = services
                    .get_mut(service.as_str())
                    .and_then(Value::as_mapping_mut)
                {
                    svc.insert(Value::from("image"), Value::from(image.as_str()));
                    // Never pull, whatever the file asked for.
                    svc.remove("pull_policy");
                }
            }
        }
        serde_yaml_ng::to_string(&doc).expect("a parsed document serializes")
    }

    /// [`render`](Self::render), with the CVM's `limits` on every service:
    /// `cpus` and `mem_limit` (and the `deploy.resources.limits` the
    /// tenant wrote) are set to the platform's value, or kept where the
    /// tenant's own is smaller; reservations above the limit are lowered
    /// to it, and `cpu_quota`/`cpu_period` (which the engine refuses next
    /// to `cpus`) are dropped.
    pub fn render_with_limits(
        &self,
        replacements: &[(String, String)],
        limits: &ServiceLimits,
    ) -> String {
        let rendered = self.render(replacements);
        if limits.cpu_millis.is_none() && limits.memory_bytes.is_none() {
            return rendered;
        }
        let mut doc: Value =
            serde_yaml_ng::from_str(&rendered).expect("a rendered document parses");
        if let Some(services) = doc.get_mut("services").and_then(Value::as_mapping_mut) {
            for (_, svc) in services.iter_mut() {
                if let Some(svc) = svc.as_mapping_mut() {
                    limit_service(svc, limits);
                }
            }
        }
        serde_yaml_ng::to_string(&doc).expect("a parsed document serializes")
    }
}

/// The resources each container of a CVM may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceLimits {
    /// CPUs in thousandths (1000 = one CPU).
    pub cpu_millis: Option<u64>,
    /// Memory, bytes.
    pub memory_bytes: Option<u64>,
}

fn limit_service(svc: &mut Mapping, limits: &ServiceLimits) {
    let deploy_limits = |svc: &Mapping, key: &str| {
        svc.get("deploy")
            .and_then(|d| d.get("resources"))
            .and_then(|r| r.get("limits"))
            .and_then(|l| l.get(key))
            .cloned()
    };
    if let Some(max) = limits.cpu_millis {
        let tenant = [svc.get("cpus").cloned(), deploy_limits(svc, "cpus")]
            .into_iter()
            .flatten()
            .filter_map(|v| cpu_millis_of(&v))
            .min();
        let millis = tenant.map_or(max, |t| t.min(max)).max(1);
        let cpus = Value::from(millis as f64 / 1000.0);
        svc.insert(Value::from("cpus"), cpus.clone());
        svc.remove("cpu_quota");
        svc.remove("cpu_period");
        if let Some(l) = resources_mut(svc, "limits") {
            l.insert(Value::from("cpus"), Value::from(cpus_text(millis)));
        }
    }
    if let Some(max) = limits.memory_bytes {
        let tenant = [svc.get("mem_limit").cloned(), deploy_limits(svc, "memory")]
            .into_iter()
            .flatten()
            .filter_map(|v| bytes_of(&v))
            .min();
        let bytes = tenant.map_or(max, |t| t.min(max));
        svc.insert(Value::from("mem_limit"), Value::from(bytes));
        if let Some(l) = resources_mut(svc, "limits") {
            l.insert(Value::from("memory"), Value::from(bytes));
        }
        // A reservation above the limit, or a swap limit below it, makes
        // the engine refuse the container.
        if svc
            .get("mem_reservation")
            .is_some_and(|v| bytes_of(v).is_none_or(|r| r > bytes))
        {
            svc.insert(Value::from("mem_reservation"), Value::from(bytes));
        }
        if let Some(r) = resources_mut(svc, "reservations")
            && r.get("memory")
                .is_some_and(|v| bytes_of(v).is_none_or(|m| m > bytes))
        {
            r.insert(Value::from("memory"), Value::from(bytes));
        }
        if svc.get("memswap_limit").is_some_and(|v| {
            !matches!(v.as_i64(), Some(-1)) && bytes_of(v).is_none_or(|s| s < bytes)
        }) {
            svc.insert(Value::from("memswap_limit"), Value::from(bytes));
        }
    }
}

/// `deploy.resources.<which>`, if the tenant wrote it as a mapping.
fn resources_mut<'a>(svc: &'a mut Mapping, which: &str) -> Option<&'a mut Mapping> {
    svc.get_mut("deploy")?
        .get_mut("resources")?
        .get_mut(which)?
        .as_mapping_mut()
}

fn cpus_text(millis: u64) -> String {
    format!("{}.{:03}", millis / 1000, millis % 1000)
}

/// `cpus: 1.5` or `cpus: "0.5"` in thousandths; `None` when not a number
/// (an interpolation, say: the platform's value replaces it).
fn cpu_millis_of(v: &Value) -> Option<u64> {
    let f = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (f.is_finite() && f > 0.0).then(|| (f * 1000.0).round() as u64)
}

/// A compose byte value (`1g`, `512m`, `300kb`, `1048576`) in bytes.
fn bytes_of(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            let t = s.trim().to_ascii_lowercase();
            let t = t.strip_suffix('b').unwrap_or(&t);
            let (num, mult) = match t.chars().last()? {
                'k' => (&t[..t.len() - 1], 1u64 << 10),
                'm' => (&t[..t.len() - 1], 1 << 20),
                'g' => (&t[..t.len() - 1], 1 << 30),
                't' => (&t[..t.len() - 1], 1 << 40),
                _ => (t, 1),
            };
            let f: f64 = num.trim().parse().ok()?;
            (f.is_finite() && f >= 0.0).then_some((f * mult as f64) as u64)
        }
        _ => None,
    }
}

/// Resolves merge keys until none is left (one pass of
/// [`Value::apply_merge`] leaves the merge keys of merged-in anchors).
fn resolve_merges(doc: &mut Value) -> Result<(), ComposeError> {
    for _ in 0..MAX_MERGE_PASSES {
        if !has_merge_key(doc) {
            return Ok(());
        }
        doc.apply_merge().map_err(|_| {
            ComposeError::new(
                "the compose file has a YAML merge key `<<` that names neither a mapping nor a list of mappings: merge only mappings",
            )
        })?;
    }
    if has_merge_key(doc) {
        return Err(ComposeError::new(
            "the compose file nests YAML merge keys `<<` too deeply: flatten the anchors",
        ));
    }
    Ok(())
}

fn has_merge_key(v: &Value) -> bool {
    match v {
        Value::Mapping(m) => m
            .iter()
            .any(|(k, v)| k.as_str() == Some("<<") || has_merge_key(v)),
        Value::Sequence(s) => s.iter().any(has_merge_key),
        Value::Tagged(t) => has_merge_key(&t.value),
        _ => false,
    }
}

/// The path of the first tagged value (or key), if any.
fn find_tag(v: &Value, path: &mut Vec<String>) -> Option<Vec<String>> {
    match v {
        Value::Tagged(_) => Some(path.clone()),
        Value::Mapping(m) => m.iter().find_map(|(k, v)| {
            if let Value::Tagged(_) = k {
                return Some(path.clone());
            }
            path.push(scalar_text(k));
            let found = find_tag(v, path);
            path.pop();
            found
        }),
        Value::Sequence(s) => s.iter().enumerate().find_map(|(i, v)| {
            path.push(i.to_string());
            let found = find_tag(v, path);
            path.pop();
            found
        }),
        _ => None,
    }
}

/// What this file defines, for the keys that may refer to it.
struct Scope {
    services: BTreeSet<String>,
    networks: BTreeSet<String>,
    secrets: BTreeSet<String>,
    configs: BTreeSet<String>,
}

impl Scope {
    fn of(top: &Mapping) -> Self {
        let names = |key: &str| -> BTreeSet<String> {
            top.get(key)
                .and_then(Value::as_mapping)
                .map(|m| {
                    m.keys()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        Self {
            services: names("services"),
            networks: names("networks"),
            secrets: names("secrets"),
            configs: names("configs"),
        }
    }
}

/// Where an error is: a service's key, or a top-level entry.
struct Site<'a> {
    service: Option<&'a str>,
    key: &'a str,
    /// For top-level entries: the entry's name under `key`.
    entry: Option<&'a str>,
}

impl<'a> Site<'a> {
    fn service(service: &'a str, key: &'a str) -> Self {
        Self {
            service: Some(service),
            key,
            entry: None,
        }
    }

    fn entry(key: &'a str, entry: &'a str) -> Self {
        Self {
            service: None,
            key,
            entry: Some(entry),
        }
    }

    /// "service `web`" or "top-level `volumes.data`".
    fn who(&self) -> String {
        match (self.service, self.entry) {
            (Some(s), _) => format!("service `{}`", shown(s)),
            (None, Some(e)) => format!("top-level `{}.{}`", self.key, shown(e)),
            (None, None) => format!("top-level `{}`", self.key),
        }
    }

    /// One sentence: who, then `rest` (which should name the key and say
    /// what to do).
    fn err(&self, rest: &str) -> ComposeError {
        ComposeError {
            service: self.service.map(shown),
            key: Some(self.key.to_owned()),
            message: format!("{} {rest}", self.who()),
        }
    }

    fn interpolated(&self, what: &str) -> ComposeError {
        self.err(&format!(
            "has `$` in {what}, which compose would replace with an env value when it runs, after this check (so it could become `host` or a host path): write the value literally, without `$`"
        ))
    }
}

fn check_service(scope: &Scope, name: &str, svc: &Mapping) -> Result<(), ComposeError> {
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
            "networks" => check_refs(&site, value, &scope.networks, true)?,
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
            if let Some(source) = source
                && is_agent_socket(source)
            {
                return Err(agent_socket(site, source));
            }
            let kind = match m.get("type") {
                Some(Value::String(t)) if t.contains('$') => {
                    return Err(site.interpolated("the `type` of an entry of `volumes`"));
                }
                Some(Value::String(t)) => t.as_str(),
                _ => {
                    return Err(site.err("has a `volumes` entry without a `type`: use `type: volume` with a volume name, or `type: tmpfs`"));
                }
            };
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
        "mounts `{}` in `volumes`: this is the dstack guest agent socket, and Berth's local mode has no per-CVM guest agent yet, so the mount is refused rather than mapped to a host path: remove this volume for now",
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
fn check_labels(site: &Site, what: &str, value: &Value) -> Result<(), ComposeError> {
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

fn check_top_volumes(value: &Value) -> Result<(), ComposeError> {
    for (name, entry) in top_entries("volumes", value)? {
        let site = Site::entry("volumes", &name);
        external(&site, entry)?;
        driver_only(&site, entry, "local")?;
    }
    Ok(())
}

fn check_top_networks(value: &Value) -> Result<(), ComposeError> {
    for (name, entry) in top_entries("networks", value)? {
        let site = Site::entry("networks", &name);
        external(&site, entry)?;
        driver_only(&site, entry, "bridge")?;
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
fn check_top_files(key: &str, value: &Value) -> Result<(), ComposeError> {
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

/// Compose's grammar for service names.
fn is_service_name(name: &str) -> bool {
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

/// A scalar key or value as text (for names that are not strings).
fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => "null".to_owned(),
        _ => "(not a scalar)".to_owned(),
    }
}

/// A name from the file, as shown in a message: control and invisible
/// characters escaped, at most 80 characters.
fn shown(s: &str) -> String {
    const MAX: usize = 80;
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        push_escaped(&mut out, c);
    }
    out
}

/// `s` with control and invisible characters escaped.
fn escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        push_escaped(&mut out, c);
    }
    out
}

fn push_escaped(out: &mut String, c: char) {
    let invisible = matches!(
        c,
        '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}'
            | '\u{FEFF}'
    );
    if c.is_control() || invisible {
        out.extend(c.escape_default());
    } else {
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_and_errors() {
        let c = ComposeFile::parse(
            "services:\n  web:\n    image: alice/web:1\n    environment:\n      - A=${A}\n  db:\n    image: ghcr.io/o/db@sha256:1111111111111111111111111111111111111111111111111111111111111111\n",
        )
        .unwrap();
        assert_eq!(c.images.len(), 2);
        assert_eq!(c.images[0].reference.to_string(), "docker.io/alice/web:1");
        let out = c.render(&[("db".into(), "sha256:abc".into())]);
        assert!(
            out.contains("image: sha256:abc") && out.contains("A=${A}"),
            "{out}"
        );
        let e = ComposeFile::parse("services:\n  x:\n    build: .\n").unwrap_err();
        assert!(e.message.contains("only `build:`"), "{}", e.message);
        assert!(ComposeFile::parse("services: [").is_err());
        assert!(ComposeFile::parse("services:\n  x:\n    image: Bad:Ref:x\n").is_err());
    }

    /// A file with one service `web` (plus `db`) whose extra keys are
    /// `extra` (indented by four spaces, one key per line).
    fn web(extra: &str) -> String {
        let extra: String = extra.lines().map(|l| format!("    {l}\n")).collect();
        format!("services:\n  web:\n    image: alice/web:1\n{extra}  db:\n    image: postgres:16\n")
    }

    fn refused(yaml: &str) -> ComposeError {
        let e = match ComposeFile::parse_and_check(yaml) {
            Ok(_) => panic!("accepted:\n{yaml}"),
            Err(e) => e,
        };
        assert!(
            !e.message.contains('\n') && !e.message.contains('\r'),
            "{:?}",
            e.message
        );
        assert_eq!(e.to_string(), e.message);
        e
    }

    /// Refused for `web`, naming the service and `key`.
    fn refused_at(yaml: &str, key: &str) -> ComposeError {
        let e = refused(yaml);
        assert_eq!(e.service.as_deref(), Some("web"), "{yaml}\n{e:?}");
        assert_eq!(e.key.as_deref(), Some(key), "{yaml}\n{e:?}");
        assert!(e.message.contains("service `web`"), "{}", e.message);
        assert!(e.message.contains(&format!("`{key}")), "{}", e.message);
        e
    }

    fn refused_top(yaml: &str, key: &str) -> ComposeError {
        let e = refused(yaml);
        assert_eq!(e.service, None, "{e:?}");
        assert_eq!(e.key.as_deref(), Some(key), "{e:?}");
        assert!(e.message.contains(&format!("`{key}")), "{}", e.message);
        e
    }

    fn allowed(yaml: &str) {
        if let Err(e) = ComposeFile::parse_and_check(yaml) {
            panic!("refused: {e:?}\n{yaml}");
        }
    }

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
    fn dstack_socket() {
        for yaml in [
            web("volumes:\n  - /var/run/dstack.sock:/var/run/dstack.sock"),
            web("volumes:\n  - /var/run/tappd.sock:/var/run/tappd.sock"),
            web(
                "volumes:\n  - type: bind\n    source: /var/run/dstack.sock\n    target: /var/run/dstack.sock",
            ),
        ] {
            let e = refused_at(&yaml, "volumes");
            for part in [
                "the dstack guest agent socket",
                "Berth's local mode has no per-CVM guest agent yet",
                "refused rather than mapped to a host path",
                "remove this volume for now",
            ] {
                assert!(e.message.contains(part), "{}", e.message);
            }
            assert!(!e.message.contains("bind-mount"), "{}", e.message);
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
    fn top_level_objects() {
        let ok = "volumes:\n  a:\n  b:\n    driver: local\n    labels: {org.example: x}\nnetworks:\n  n:\n    driver: bridge\n    internal: true\n    ipam: {config: [{subnet: 10.5.0.0/16}]}\nsecrets:\n  s:\n    content: x\nconfigs:\n  c:\n    environment: C\n";
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

    #[test]
    fn hostile_file() {
        let hostile = [
            ("privileged: true", "privileged"),
            ("network_mode: host", "network_mode"),
            ("pid: host", "pid"),
            ("cap_add: [ALL]", "cap_add"),
            ("volumes: [\"/:/host\"]", "volumes"),
            (
                "volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]",
                "volumes",
            ),
            ("env_file: .env", "env_file"),
        ];
        for (line, key) in hostile {
            refused_at(&web(line), key);
        }
        let e = refused_top(
            &format!(
                "{}secrets:\n  x:\n    file: ../../../../kms/root.key\n",
                web("secrets: [x]")
            ),
            "secrets",
        );
        assert!(e.message.contains("`file`"), "{}", e.message);
        // All at once: refused at the first offence.
        let all: Vec<&str> = hostile.iter().map(|h| h.0).collect();
        let all = all.join("\n").replace("volumes: [\"/:/host\"]\n", "");
        refused_at(&web(&all), "privileged");
    }

    #[test]
    fn merge_keys_are_resolved_before_the_check() {
        let smuggled = "x-base: &base\n  privileged: true\nservices:\n  web:\n    <<: *base\n    image: alice/web:1\n";
        refused_at(smuggled, "privileged");
        // A merge inside a merged anchor (one pass of `apply_merge` leaves it).
        let nested = "x-a: &a\n  network_mode: host\nx-b: &b\n  <<: *a\n  restart: always\nservices:\n  web:\n    <<: *b\n    image: alice/web:1\n";
        refused_at(nested, "network_mode");
        let listed =
            "x-a: &a {cap_add: [ALL]}\nservices:\n  web:\n    <<: [*a]\n    image: alice/web:1\n";
        refused_at(listed, "cap_add");
        // What is rendered is the merged document.
        let ok = "x-base: &base\n  restart: always\n  environment: [A=1]\nservices:\n  web:\n    <<: *base\n    image: alice/web:1\n";
        let c = ComposeFile::parse_and_check(ok).unwrap();
        let out = c.render(&[]);
        assert!(!out.contains("<<"), "{out}");
        let again: Value = serde_yaml_ng::from_str(&out).unwrap();
        assert_eq!(again["services"]["web"]["restart"], Value::from("always"));
        assert!(ComposeFile::parse("x: &a 1\nservices:\n  web:\n    <<: *a\n").is_err());
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

    #[test]
    fn names_from_the_file_are_escaped() {
        let e = refused("services:\n  \"a\\nb\":\n    image: nginx\n    privileged: true\n");
        assert_eq!(e.service.as_deref(), Some("a\\nb"));
        assert!(e.message.contains("`a\\nb`"), "{}", e.message);
        let e = refused("services:\n  \"a\\u202eb\":\n    image: nginx\n");
        assert!(e.message.contains("a\\u{202e}b"), "{}", e.message);
        let e = refused(&web("volumes: [\"/x\\ny:/z\"]"));
        assert!(e.message.contains("/x\\ny"), "{}", e.message);
        let e = refused("services:\n  \"a\\nb\":\n    image: \"Bad\\nRef\"\n");
        assert!(e.message.contains("a\\nb"), "{}", e.message);
        let e = refused(&format!(
            "{}networks:\n  \"n\\r\\n\":\n    external: true\n",
            web("")
        ));
        assert!(e.message.contains("n\\r\\n"), "{}", e.message);
        let e = refused(&web(&format!("extends: {}", "x".repeat(500))));
        assert!(e.message.len() < 400, "{}", e.message);
    }

    #[test]
    fn yaml_tags_and_service_names() {
        refused(&web("volumes: !override [\"/:/host\"]"));
        refused(&web("privileged: !reset null"));
        refused("services:\n  web:\n    image: alice/web:1\n  bad name:\n    image: nginx\n");
        // Standard tags are resolved by the parser, not kept.
        allowed(&web("restart: !!str always"));
    }

    #[test]
    fn realistic_file_passes() {
        let yaml = r#"
name: shop
x-common: &common
  restart: unless-stopped
  logging:
    driver: json-file
    options: {max-size: "10m", max-file: "3"}
services:
  app:
    <<: *common
    image: ghcr.io/acme/shop:1.4.2
    ports: ["8080:8080", "127.0.0.1:9090:9090"]
    expose: ["9000"]
    environment:
      DATABASE_URL: postgres://shop:${DB_PASSWORD}@db:5432/shop
      API_KEY: ${API_KEY}
      MODE: ${MODE:-production}
    command: ["serve", "--port", "8080"]
    entrypoint: /entry.sh
    user: "1000:1000"
    working_dir: /app
    hostname: shop
    dns: [1.1.1.1]
    extra_hosts: ["api.local:10.0.0.5"]
    tmpfs: [/tmp]
    volumes:
      - uploads:/app/uploads
      - type: tmpfs
        target: /cache
    depends_on:
      db:
        condition: service_healthy
    healthcheck:
      test: ["CMD", "curl", "-f", "http://localhost:8080/health"]
      interval: 30s
      retries: 3
    deploy:
      resources:
        limits: {cpus: "1.0", memory: 1G}
    mem_limit: 1g
    cpus: 1.5
    ulimits: {nofile: {soft: 65536, hard: 65536}}
    labels:
      org.acme.tier: frontend
    networks: [front, back]
    x-notes: anything
  db:
    <<: *common
    image: postgres:16-alpine
    ipc: private
    environment:
      - POSTGRES_PASSWORD=${DB_PASSWORD}
    volumes: ["pgdata:/var/lib/postgresql/data", "/var/lib/extra"]
    healthcheck:
      test: ["CMD-SHELL", "pg_isready -U shop"]
    networks:
      back:
        aliases: [database]
    secrets: [db_seed]
volumes:
  uploads:
  pgdata:
    driver: local
networks:
  front:
  back:
    internal: true
secrets:
  db_seed:
    environment: DB_SEED
x-deploy-note: fine
"#;
        let c = ComposeFile::parse_and_check(yaml).unwrap();
        assert_eq!(c.images.len(), 2);
        let out = c.render(&[("app".into(), "sha256:abc".into())]);
        assert!(
            out.contains("${DB_PASSWORD}") && !out.contains("<<"),
            "{out}"
        );
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    fn service(rendered: &str, name: &str) -> Mapping {
        let doc: Value = serde_yaml_ng::from_str(rendered).unwrap();
        doc["services"][name].as_mapping().unwrap().clone()
    }

    #[test]
    fn limits_are_set_lowered_and_kept_when_smaller() {
        let c = ComposeFile::parse_and_check(
            "services:\n  plain:\n    image: alice/web:1\n  greedy:\n    image: alice/web:1\n    cpus: 8\n    mem_limit: 100g\n    cpu_quota: 800000\n    mem_reservation: 50g\n    deploy:\n      resources:\n        limits: {cpus: '6', memory: 90G}\n  modest:\n    image: alice/web:1\n    cpus: \"0.25\"\n    mem_limit: 64m\n  interpolated:\n    image: alice/web:1\n    mem_limit: ${MEM}\n",
        )
        .unwrap();
        let limits = ServiceLimits {
            cpu_millis: Some(1000),
            memory_bytes: Some(2048 << 20),
        };
        let out = c.render_with_limits(&[], &limits);
        let plain = service(&out, "plain");
        assert_eq!(plain["cpus"].as_f64(), Some(1.0));
        assert_eq!(plain["mem_limit"].as_u64(), Some(2048 << 20));
        let greedy = service(&out, "greedy");
        assert_eq!(greedy["cpus"].as_f64(), Some(1.0));
        assert_eq!(greedy["mem_limit"].as_u64(), Some(2048 << 20));
        assert_eq!(greedy["mem_reservation"].as_u64(), Some(2048 << 20));
        assert!(greedy.get("cpu_quota").is_none());
        let dl = &greedy["deploy"]["resources"]["limits"];
        assert_eq!(dl["cpus"].as_str(), Some("1.000"));
        assert_eq!(dl["memory"].as_u64(), Some(2048 << 20));
        let modest = service(&out, "modest");
        assert_eq!(modest["cpus"].as_f64(), Some(0.25));
        assert_eq!(modest["mem_limit"].as_u64(), Some(64 << 20));
        let interp = service(&out, "interpolated");
        assert_eq!(interp["mem_limit"].as_u64(), Some(2048 << 20));
        // No limits: the plain rendering.
        assert_eq!(
            c.render_with_limits(&[], &ServiceLimits::default()),
            c.render(&[])
        );
    }

    #[test]
    fn compose_byte_values() {
        for (text, bytes) in [
            ("1g", 1u64 << 30),
            ("512M", 512 << 20),
            ("300kb", 300 << 10),
            ("1048576", 1 << 20),
            ("1.5g", 3 << 29),
        ] {
            assert_eq!(bytes_of(&Value::from(text)), Some(bytes), "{text}");
        }
        assert_eq!(bytes_of(&Value::from("${X}")), None);
        assert_eq!(cpu_millis_of(&Value::from(1.5)), Some(1500));
        assert_eq!(cpu_millis_of(&Value::from("abc")), None);
    }
}
