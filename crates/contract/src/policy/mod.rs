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
//!     mounts, no `image`/`npipe`/`cluster` volumes), except a bind of
//!     the dstack guest agent socket from one of [`AGENT_SOCKET_PATHS`]
//!     (to any target), which [`ComposeFile::render_with_limits`] maps to
//!     the CVM's own agent socket;
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
//! - **Addresses, ports and size** (`network`): no `ipam.config` or
//!   `ipam.options` (subnets and gateways come from the engine's pool, which
//!   is Berth's own range), no fixed container addresses, ports published
//!   only on all of the host's addresses or its loopback
//!   ([`PUBLISH_ADDRESSES`]) and never on a port the cloud reserves
//!   ([`ComposeFile::check_reserved_ports`]: its API, a mapped registry), at
//!   most [`MAX_NETWORKS`] networks, [`MAX_CONTAINERS`] containers and
//!   [`MAX_PUBLISHED_PORTS`] published ports.
//! - **Size of the document**: at most [`MAX_EXPANDED_NODES`] YAML nodes
//!   once aliases are expanded, counted before the document is built.
//! - **Interpolation**: compose replaces `$VAR`s with the tenant's env values
//!   when it runs, after this check, so `network_mode: ${MODE}` could become
//!   `host`. Every checked value above is refused if it contains `$`.
//! - **YAML**: merge keys (`<<: *anchor`) are resolved before the check and
//!   [`ComposeFile::render`] writes the resolved document, so what is checked
//!   is exactly what compose runs; YAML tags (`!reset`, `!override`, …) are
//!   refused; service names follow compose's grammar.
//!
//! Everything else is left to compose, which refuses keys it does not know:
//! environment, healthchecks, resource limits (which the rendering holds to
//! the CVM's), `x-*` fields, …
//!
//! # The container isolation mode ("dstack's rules")
//!
//! When a CVM is a system container of its own ([`Isolation::Container`]:
//! its own user, mount, network, PID, IPC, UTS and cgroup namespaces, its
//! own engine inside), a privileged container, a host namespace, a host
//! path or the engine's socket are the **CVM's own**: `/` is the CVM's
//! root, `/var/run/docker.sock` its engine, `/var/run/dstack.sock` its
//! guest agent, `network_mode: host` its network. So the compose file gets
//! what it would get on dstack, and [`ComposeFile::parse_and_check_for`]
//! keeps only what still reaches past the CVM, or what Berth itself needs
//! to hold:
//!
//! - **Allowed** (each refused in the shared mode): `build:` (a service
//!   may have only `build:`; `context`, `dockerfile`, `dockerfile_inline`,
//!   `args`, `target`, `additional_contexts` naming another service's image,
//!   an image or a folder), `privileged`, `cap_add`, `cap_drop`, `devices`,
//!   `security_opt`, `sysctls`, bind mounts of any path, `container_name`,
//!   host `network_mode`/`pid`/`ipc`/`uts`/`cgroup`, `cgroup_parent`,
//!   `runtime`, `userns_mode`, any logging driver, `com.docker.compose.*`
//!   labels, external or named volumes and networks, subnets, fixed
//!   addresses, ports on any address.
//! - **Still refused**, each with a sentence:
//!   - YAML tags, documents above [`MAX_EXPANDED_NODES`], service names
//!     outside compose's grammar (what is checked must be what runs);
//!   - more than [`MAX_CONTAINERS`] containers, [`MAX_NETWORKS`] networks
//!     or [`MAX_PUBLISHED_PORTS`] published ports: a published port is a
//!     listener on the host, a container a share of the node's machine;
//!   - a GPU: `gpus` or `deploy.resources.reservations.devices` (the node
//!     passes no GPU into a CVM);
//!   - paths compose reads inside the CVM (`env_file`, `label_file`, the
//!     top-level `secrets`/`configs` `file`, a build `context`,
//!     `dockerfile` or folder in `additional_contexts`) that leave the
//!     compose file's folder: absolute, `..` or `~`. They would read files
//!     of the CVM's root (which are not the host's, but neither the app's);
//!     URLs of Git or HTTP contexts are fetched by the CVM's engine;
//!   - another compose file: top-level `include` and `extends.file`, which
//!     Berth does not check;
//!   - `$` where an env value would change what is checked: a port (the
//!     count), `scale`/`deploy.replicas`, the paths above, an
//!     `additional_contexts` entry. Elsewhere `$` is allowed: whatever
//!     `privileged`, `network_mode` or a bind could become, it is allowed
//!     written literally. In `dockerfile_inline`, `$` is interpolated as
//!     compose does (`$$`, `${NAME:-default}`, …; dstack's examples set a
//!     password that way) when the boot agent writes the Dockerfile; a `$`
//!     compose could not interpolate is refused, and a base image named by
//!     an env value is left to the engine to pull.
//!
//! [`ComposeFile::builds`] lists what the CVM builds, with the base images
//! of inline Dockerfiles ([`BaseImage`]), which the boot agent pulls with
//! the CVM's credentials and names as the Dockerfile does;
//! [`ComposeFile::render_in_container`] writes the file for the compose
//! tool with every inline Dockerfile as a file of its own (Debian 12's
//! `docker-compose` 1.29 knows neither `dockerfile_inline` nor
//! `additional_contexts`).
//!
//! Every [`ComposeError`] names the service and the key and says what to
//! do, in one sentence. Names from the file are shown with control
//! characters escaped, and no message quotes an environment value.
//!
//! # Where each part lives
//!
//! - this file: the refused keys ([`FORBIDDEN_SERVICE_KEYS`],
//!   [`FORBIDDEN_TOP_LEVEL_KEYS`], [`LOGGING_DRIVERS`]), [`ComposeFile`]'s
//!   parsing and [`ComposeFile::check_policy`], which walks the file;
//! - `service`: the rules for one service's keys;
//! - `top_level`: the rules for top-level `volumes`, `networks`,
//!   `secrets` and `configs`;
//! - `yaml`: merge keys, YAML tags, and how names from the file are shown;
//! - `render`: the file handed to the compose tool, with the CVM's
//!   [`ServiceLimits`];
//! - `container`: the rules of the container isolation mode, and what a
//!   service with `build:` builds;
//! - `dockerfile`: the base images of an inline Dockerfile, and its text
//!   as written to a file.

mod container;

mod dockerfile;

mod network;

mod pin;

mod render;

mod service;

#[cfg(test)]
mod test_support;

mod top_level;

mod yaml;

pub use network::{
    MAX_CONTAINERS, MAX_NETWORKS, MAX_PUBLISHED_PORTS, PUBLISH_ADDRESSES, PublishedPort,
    ReservedPort, registry_reserved_ports,
};
pub use pin::{PinnedCompose, pin_images};
pub use render::{BUILD_DIR, BuildFile, RenderedCompose, ServiceLimits};

use crate::isolation::Isolation;
use crate::reference::ImageReference;
use serde_yaml_ng::{Mapping, Value};
use std::collections::BTreeSet;
use yaml::{check_expanded_size, escaped, find_tag, resolve_merges, scalar_text, shown};

pub use yaml::MAX_EXPANDED_NODES;

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

/// The host paths of dstack's guest agent socket that a compose file may
/// bind-mount (short or long syntax, any target): the rendering mounts the
/// CVM's own agent socket of the same file name there
/// ([`ServiceLimits::agent_socket_dir`]). Every other host path is refused.
pub const AGENT_SOCKET_PATHS: &[&str] = &[
    "/var/run/dstack.sock",
    "/run/dstack.sock",
    "/var/run/tappd.sock",
    "/run/tappd.sock",
];

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

/// A service the CVM builds (container isolation mode only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceBuild {
    /// The service name.
    pub service: String,
    /// The image the build is tagged as (the service's `image:`), if any.
    pub image: Option<ImageReference>,
    /// The base images named by its `dockerfile_inline` (`FROM`,
    /// `COPY --from=`; not `scratch`, stages, or names made of `ARG`s) and
    /// by its `docker-image://` additional contexts, each once.
    pub bases: Vec<BaseImage>,
}

/// An image a build starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseImage {
    /// As written in the Dockerfile (the name the build looks for).
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
    isolation: Isolation,
    /// Every service's image, in file order: in the container mode, the
    /// services that do not build.
    pub images: Vec<ServiceImage>,
    /// The services that build, in file order (container mode only).
    pub builds: Vec<ServiceBuild>,
}

impl ComposeFile {
    /// Parses the YAML, resolves its merge keys (`<<: *anchor`) and collects
    /// each service's image. A service with only `build:` is an error: a CVM
    /// pulls images, it does not build them.
    ///
    /// This does not apply the policy: use [`ComposeFile::parse_and_check`].
    pub fn parse(yaml: &str) -> Result<Self, ComposeError> {
        Self::parse_for(yaml, Isolation::Shared)
    }

    /// [`ComposeFile::parse`] for a CVM in `isolation`: in the container
    /// mode a service may build (`build:`, with or without `image:`), and
    /// is then listed in [`ComposeFile::builds`], not in `images`.
    pub fn parse_for(yaml: &str, isolation: Isolation) -> Result<Self, ComposeError> {
        check_expanded_size(yaml)?;
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
        let mut builds = Vec::new();
        for (name, svc) in services {
            let service = name.as_str().unwrap_or("?").to_owned();
            let shown_service = shown(&service);
            let err = |key: &str, message: String| ComposeError {
                service: Some(shown_service.clone()),
                key: Some(key.to_owned()),
                message,
            };
            let build = svc.get("build").filter(|b| !b.is_null());
            if let (Isolation::Container, Some(build)) = (isolation, build) {
                let image = svc.get("image").and_then(Value::as_str);
                builds.push(container::service_build(&service, image, build)?);
                continue;
            }
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
                None if isolation == Isolation::Container => {
                    return Err(err(
                        "image",
                        format!(
                            "service `{shown_service}` has neither `image:` nor `build:`: name the image to run with `image:`, or build one with `build:`"
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
        if images.is_empty() && builds.is_empty() {
            return Err(ComposeError::new("the compose file defines no services"));
        }
        Ok(Self {
            doc,
            isolation,
            images,
            builds,
        })
    }

    /// The isolation mode the file was parsed for.
    pub fn isolation(&self) -> Isolation {
        self.isolation
    }

    /// Every base image of [`ComposeFile::builds`], each once, in order.
    pub fn base_images(&self) -> Vec<&BaseImage> {
        let mut out: Vec<&BaseImage> = Vec::new();
        for b in self.builds.iter().flat_map(|b| &b.bases) {
            if !out.iter().any(|o| o.written == b.written) {
                out.push(b);
            }
        }
        out
    }

    /// [`ComposeFile::parse`], then [`ComposeFile::check_policy`]: what the
    /// control plane (at provisioning) and the boot agent (before
    /// `compose up`) both call.
    pub fn parse_and_check(yaml: &str) -> Result<Self, ComposeError> {
        Self::parse_and_check_for(yaml, Isolation::Shared)
    }

    /// [`ComposeFile::parse_for`], then [`ComposeFile::check_policy`] (the
    /// rules of `isolation`).
    pub fn parse_and_check_for(yaml: &str, isolation: Isolation) -> Result<Self, ComposeError> {
        let file = Self::parse_for(yaml, isolation)?;
        file.check_policy()?;
        Ok(file)
    }

    /// Applies the compose policy of the file's isolation mode (see the
    /// [module documentation](self)). Shared: `Ok` if the file asks the
    /// engine for nothing beyond its own containers; container: `Ok` if it
    /// reaches no further than its CVM. Else the first offending service
    /// and key.
    pub fn check_policy(&self) -> Result<(), ComposeError> {
        match self.isolation {
            Isolation::Shared => self.check_shared_policy(),
            Isolation::Container => self.check_container_policy(),
        }
    }

    /// YAML tags are refused in every mode: compose would read them, the
    /// check does not.
    fn check_tags(&self) -> Result<(), ComposeError> {
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
        Ok(())
    }

    fn check_shared_policy(&self) -> Result<(), ComposeError> {
        self.check_tags()?;
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
                "volumes" => top_level::check_top_volumes(value)?,
                "networks" => top_level::check_top_networks(value)?,
                "secrets" | "configs" => top_level::check_top_files(key, value)?,
                _ => {}
            }
        }
        let scope = Scope::of(top);
        let services = top
            .get("services")
            .and_then(Value::as_mapping)
            .ok_or_else(|| ComposeError::new("the compose file has no `services`"))?;
        let mut sizes = Sizes::default();
        for (name, svc) in services {
            let (name, svc) = named_service(name, svc)?;
            service::check_service(&scope, name, svc)?;
            sizes.add(name, svc)?;
        }
        Ok(())
    }
}

/// A service's name (compose's grammar) and its mapping, or why not.
fn named_service<'v>(
    name: &'v Value,
    svc: &'v Value,
) -> Result<(&'v str, &'v Mapping), ComposeError> {
    let Some(name) = name.as_str().filter(|n| service::is_service_name(n)) else {
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
    Ok((name, svc))
}

/// The containers and published ports counted so far, held to
/// [`MAX_CONTAINERS`] and [`MAX_PUBLISHED_PORTS`] in every mode.
#[derive(Default)]
struct Sizes {
    containers: u64,
    published: u32,
}

impl Sizes {
    fn add(&mut self, name: &str, svc: &Mapping) -> Result<(), ComposeError> {
        if let Some(ports) = svc.get("ports") {
            self.published = self.published.saturating_add(network::published_count(
                &Site::service(name, "ports"),
                ports,
            ));
            if self.published > MAX_PUBLISHED_PORTS {
                return Err(Site::service(name, "ports").err(&format!(
                    "brings the ports the CVM publishes in `ports` to {}, more than the {MAX_PUBLISHED_PORTS} a CVM may publish (each is a listener on the host): publish fewer ports",
                    self.published
                )));
            }
        }
        let n = network::containers_of(&Site::service(name, "scale"), svc)?;
        self.containers = self.containers.saturating_add(n);
        if self.containers > MAX_CONTAINERS {
            let key = if svc.contains_key("scale") {
                "scale"
            } else {
                "deploy"
            };
            return Err(Site::service(name, key).err(&format!(
                "brings the CVM to {} containers (`scale`, `deploy.replicas`), more than the {MAX_CONTAINERS} a CVM may run: run fewer replicas",
                self.containers
            )));
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::test_support::*;
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
