//! The compose file handed to the compose tool: each service's image
//! replaced by the ID the boot verified, `pull_policy` dropped, and the
//! CVM's [`ServiceLimits`] on every service.

use super::ComposeFile;
use serde_yaml_ng::{Mapping, Value};

impl ComposeFile {
    /// The compose file to run, with each service's image replaced by what
    /// the engine knows it as (`replacements`: service → local name), so the
    /// compose tool finds every image locally and never pulls. Merge keys
    /// are already resolved: compose runs exactly what was checked.
    pub fn render(&self, replacements: &[(String, String)]) -> String {
        serde_yaml_ng::to_string(&self.rendered(replacements))
            .expect("a parsed document serializes")
    }

    /// [`render`](Self::render), with the CVM's `limits` on every service:
    /// `cpus`, `mem_limit` and `pids_limit` (and the
    /// `deploy.resources.limits` the tenant wrote) are set to the
    /// platform's value, or kept where the tenant's own is smaller (a 0,
    /// which the engine reads as "no limit", is no value); reservations
    /// above the limit are lowered to it, swap is held to it, and
    /// `cpu_quota`/`cpu_period` (which the engine refuses next to `cpus`)
    /// are dropped. Every container goes under the CVM's cgroup when
    /// there is one, else gets an equal share of the CVM (replicas
    /// counted); logs are rotated at the platform's size.
    ///
    /// A mount of the guest agent socket (one of
    /// [`super::AGENT_SOCKET_PATHS`]) becomes a bind of the CVM's own
    /// socket of the same file name in [`ServiceLimits::agent_socket_dir`];
    /// without one, the file is refused (this CVM has no guest agent).
    pub fn render_with_limits(
        &self,
        replacements: &[(String, String)],
        limits: &ServiceLimits,
    ) -> Result<String, super::ComposeError> {
        let mut doc = self.rendered(replacements);
        if let Some(services) = doc.get_mut("services").and_then(Value::as_mapping_mut) {
            for (name, svc) in services.iter_mut() {
                let name = name.as_str().unwrap_or("?").to_owned();
                if let Some(volumes) = svc.get_mut("volumes").and_then(Value::as_sequence_mut) {
                    for v in volumes.iter_mut() {
                        map_agent_socket(&name, v, limits.agent_socket_dir.as_deref())?;
                    }
                }
            }
            let containers: u64 = services
                .iter()
                .filter_map(|(name, svc)| {
                    let name = name.as_str()?;
                    super::network::containers_of(
                        &super::Site::service(name, "scale"),
                        svc.as_mapping()?,
                    )
                    .ok()
                })
                .sum();
            let each = per_container(limits, containers);
            for (_, svc) in services.iter_mut() {
                if let Some(svc) = svc.as_mapping_mut() {
                    limit_service(svc, &each);
                }
            }
        }
        Ok(serde_yaml_ng::to_string(&doc).expect("a parsed document serializes"))
    }

    /// The document with the images replaced and `pull_policy` dropped.
    fn rendered(&self, replacements: &[(String, String)]) -> Value {
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
        doc
    }
}

/// The folder, next to the compose file, that holds the Dockerfiles the
/// boot agent writes for `dockerfile_inline` ([`RenderedCompose::files`]).
pub const BUILD_DIR: &str = "build";

/// The folder, in a build's context, of the files that hold the bodies of
/// its Dockerfile's heredocs (the engine's classic builder has none).
const HEREDOC_FOLDER: &str = ".berth-heredoc";

/// The compose file of a CVM in the container mode, and the files to write
/// next to it before the compose tool runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderedCompose {
    /// The compose file.
    pub yaml: String,
    /// The build files, paths relative to the compose file's folder.
    pub files: Vec<BuildFile>,
}

/// A file the compose file's builds read. Its text may hold env values
/// (interpolated as compose would), so it is not printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct BuildFile {
    /// Relative to the compose file's folder (`build/<service>/Dockerfile`):
    /// plain components, no `..`.
    pub path: String,
    /// Its text.
    pub content: String,
}

impl std::fmt::Debug for BuildFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildFile")
            .field("path", &self.path)
            .field("content", &format_args!("<{} bytes>", self.content.len()))
            .finish()
    }
}

impl ComposeFile {
    /// The compose file to run in a CVM of the container mode, for a
    /// compose tool that knows neither `dockerfile_inline` nor
    /// `additional_contexts` (Debian 12's `docker-compose` 1.29):
    ///
    /// - each service's image replaced as `replacements` says, as in
    ///   [`render`](Self::render);
    /// - every `dockerfile_inline` becomes the file
    ///   `build/<service>/Dockerfile` ([`RenderedCompose::files`]),
    ///   interpolated as compose would (`$$` is a `$`, `${NAME}` is
    ///   `env(NAME)`), its heredocs (`<<EOF` … `EOF`, which the engine's
    ///   classic builder lacks) as files of the build context
    ///   (`.berth-heredoc/<service>-N`), and each base image named as `bases` says
    ///   (as written → the name the engine has it under; those not listed
    ///   stay as written); its `context` is that folder unless the file
    ///   gives one;
    /// - `additional_contexts` of an image (`docker-image://REF`) or of
    ///   another service (`service:NAME`, whose `image:` names what it
    ///   builds; the service then also `depends_on` it, so it is built
    ///   first) are written into the Dockerfile where it names them;
    ///   folders and URLs there cannot be, and are refused;
    /// - no per-container limit and no `cgroup_parent`: the CVM's cgroup
    ///   bounds the whole machine; the guest agent's socket is the CVM's
    ///   own `/var/run/dstack.sock`, so its binds stay as written. Only the
    ///   logs are rotated, at `limits`' sizes (they fill the CVM's disk).
    pub fn render_in_container(
        &self,
        replacements: &[(String, String)],
        bases: &[(String, String)],
        limits: &ServiceLimits,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<RenderedCompose, super::ComposeError> {
        let mut doc = self.rendered(replacements);
        let bases: std::collections::BTreeMap<String, String> = bases.iter().cloned().collect();
        let images: std::collections::BTreeMap<String, Option<String>> = doc
            .get("services")
            .and_then(Value::as_mapping)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        let image = v.get("image").and_then(Value::as_str).map(str::to_owned);
                        (super::yaml::scalar_text(k), image)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut files = Vec::new();
        if let Some(services) = doc.get_mut("services").and_then(Value::as_mapping_mut) {
            for (name, svc) in services.iter_mut() {
                let name = super::yaml::scalar_text(name);
                let Some(svc) = svc.as_mapping_mut() else {
                    continue;
                };
                files.extend(inline_to_file(&name, svc, &bases, &images, env)?);
                if let (Some(size), Some(count)) = (limits.log_max_bytes, limits.log_max_files) {
                    limit_logging(svc, size, count);
                }
            }
        }
        Ok(RenderedCompose {
            yaml: serde_yaml_ng::to_string(&doc).expect("a parsed document serializes"),
            files,
        })
    }
}

/// One service's `build:` rewritten for a compose tool without
/// `dockerfile_inline` and `additional_contexts`, and the Dockerfile to
/// write, if it had an inline one.
fn inline_to_file(
    service: &str,
    svc: &mut Mapping,
    bases: &std::collections::BTreeMap<String, String>,
    images: &std::collections::BTreeMap<String, Option<String>>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<BuildFile>, super::ComposeError> {
    let site = super::Site::service(service, "build");
    let Some(build) = svc.get("build").and_then(Value::as_mapping).cloned() else {
        return Ok(Vec::new());
    };
    let build_value = Value::Mapping(build.clone());
    let contexts = super::container::additional_contexts(&build_value);
    let mut names = bases.clone();
    let mut needs = Vec::new();
    for (name, value) in &contexts {
        let value = value.as_str().unwrap_or_default();
        if let Some(image) = super::container::context_image(value) {
            let local = bases
                .get(image)
                .cloned()
                .unwrap_or_else(|| image.to_owned());
            names.insert(name.clone(), local);
        } else if let Some(other) = value.strip_prefix("service:") {
            let Some(Some(image)) = images.get(other) else {
                return Err(site.err(&format!(
                    "uses service `{}` in `build.additional_contexts`, which has no `image:`: name the image that service builds with `image:`",
                    super::yaml::shown(other)
                )));
            };
            names.insert(name.clone(), image.clone());
            needs.push(other.to_owned());
        } else {
            return Err(site.err(&format!(
                "uses the folder or URL `{}` in `build.additional_contexts.{}`, which this CVM's compose tool (docker-compose 1.29) cannot give a build: copy what it holds into the image another way, or use `docker-image://` or `service:`",
                super::yaml::shown(value),
                super::yaml::shown(name)
            )));
        }
    }
    let Some(inline) = build.get("dockerfile_inline") else {
        if contexts.is_empty() {
            return Ok(Vec::new());
        }
        return Err(site.err("uses `build.additional_contexts` with a Dockerfile of its context, which this CVM's compose tool (docker-compose 1.29) cannot give a build: write the Dockerfile in `dockerfile_inline`"));
    };
    if matches!(service, "." | "..") {
        return Err(site.err("builds from `dockerfile_inline` under a service name that is not a folder name: rename the service"));
    }
    let text = super::container::inline_text(&site, inline, env)?;
    let content = super::dockerfile::rewrite_bases(&text, &names);
    let path = format!("{BUILD_DIR}/{service}/Dockerfile");
    // The folder of the build context, inside the compose folder.
    let context_dir = match build.get("context").and_then(Value::as_str) {
        None => format!("{BUILD_DIR}/{service}"),
        Some(c) => c
            .split(['/', '\\'])
            .filter(|p| !p.is_empty() && *p != ".")
            .collect::<Vec<_>>()
            .join("/"),
    };
    let (content, heredocs) =
        super::dockerfile::lower_heredocs(&content, &format!("{HEREDOC_FOLDER}/"), service);
    let mut files = vec![BuildFile { path, content }];
    for (name, content) in heredocs {
        let path = [context_dir.as_str(), HEREDOC_FOLDER, name.as_str()]
            .iter()
            .filter(|p| !p.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join("/");
        files.push(BuildFile { path, content });
    }
    let path = &files[0].path;
    let mut build = build;
    build.remove("dockerfile_inline");
    build.remove("additional_contexts");
    match build.get("context").and_then(Value::as_str) {
        None => {
            build.insert(
                Value::from("context"),
                Value::from(format!("{BUILD_DIR}/{service}")),
            );
            build.insert(Value::from("dockerfile"), Value::from("Dockerfile"));
        }
        Some(context) if super::container::is_remote(context) => {
            return Err(site.err("builds from `dockerfile_inline` in a URL `context`, which this CVM's compose tool (docker-compose 1.29) cannot do: give a folder as `context`, or none"));
        }
        Some(context) => {
            let depth = context
                .split(['/', '\\'])
                .filter(|p| !p.is_empty() && *p != ".")
                .count();
            build.insert(
                Value::from("dockerfile"),
                Value::from(format!("{}{path}", "../".repeat(depth))),
            );
        }
    }
    svc.insert(Value::from("build"), Value::Mapping(build));
    for other in needs {
        add_dependency(svc, &other);
    }
    Ok(files)
}

/// `service` in the `depends_on` of `svc` (list or mapping form).
fn add_dependency(svc: &mut Mapping, service: &str) {
    let deps = svc
        .entry(Value::from("depends_on"))
        .or_insert_with(|| Value::Sequence(Vec::new()));
    match deps {
        Value::Sequence(list) => {
            if !list.iter().any(|d| d.as_str() == Some(service)) {
                list.push(Value::from(service));
            }
        }
        Value::Mapping(m) => {
            if !m.contains_key(service) {
                let mut cond = Mapping::new();
                cond.insert(Value::from("condition"), Value::from("service_started"));
                m.insert(Value::from(service), Value::Mapping(cond));
            }
        }
        other => *other = Value::Sequence(vec![Value::from(service)]),
    }
}

/// The resources of a CVM, and how its containers are held to them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceLimits {
    /// CPUs in thousandths (1000 = one CPU).
    pub cpu_millis: Option<u64>,
    /// Memory, bytes.
    pub memory_bytes: Option<u64>,
    /// Processes (threads included).
    pub pids: Option<u64>,
    /// A cgroup (of the engine's cgroup driver) that holds the CVM's
    /// vCPUs, memory and processes as a whole, made by the node: every
    /// container is placed under it. Without one, each container gets an
    /// equal share of the CVM's resources, so that all of them together
    /// stay within it.
    pub cgroup_parent: Option<String>,
    /// Each container's log: the largest file, bytes, and how many files
    /// are kept (the engine rotates them).
    pub log_max_bytes: Option<u64>,
    /// See [`ServiceLimits::log_max_bytes`].
    pub log_max_files: Option<u64>,
    /// The host folder holding this CVM's guest agent sockets
    /// (`dstack.sock`, `tappd.sock`), which its containers' mounts of the
    /// agent socket are given. `None`: the CVM has no guest agent, and a
    /// file that mounts its socket is refused.
    pub agent_socket_dir: Option<String>,
}

/// A `volumes` entry of service `service` that mounts the guest agent
/// socket, rewritten as a bind of the CVM's own socket in `dir` (long
/// syntax, so no path in it is split at a `:`); other entries are left.
fn map_agent_socket(
    service: &str,
    v: &mut Value,
    dir: Option<&str>,
) -> Result<(), super::ComposeError> {
    let (source, target, read_only) = match &*v {
        Value::String(s) => {
            let Some((source, rest)) = s.split_once(':') else {
                return Ok(());
            };
            let mut parts = rest.splitn(2, ':');
            let target = parts.next().unwrap_or_default().to_owned();
            let read_only = parts.next() == Some("ro");
            (
                source.to_owned(),
                Value::from(target),
                Value::from(read_only),
            )
        }
        Value::Mapping(m) => {
            let Some(source) = m.get("source").and_then(Value::as_str) else {
                return Ok(());
            };
            (
                source.to_owned(),
                m.get("target").cloned().unwrap_or(Value::Null),
                m.get("read_only").cloned().unwrap_or(Value::from(false)),
            )
        }
        _ => return Ok(()),
    };
    let Some(file) = super::service::agent_socket_of(&source) else {
        return Ok(());
    };
    let Some(dir) = dir else {
        return Err(super::ComposeError {
            service: Some(super::yaml::shown(service)),
            key: Some("volumes".into()),
            message: format!(
                "service `{}` mounts the guest agent socket `{}`, but this CVM has no guest agent (the node writes `agent_socket_dir` into sys-config.json when it runs one): deploy through the node, or remove this volume",
                super::yaml::shown(service),
                super::yaml::shown(&source)
            ),
        });
    };
    let mut m = Mapping::new();
    m.insert(Value::from("type"), Value::from("bind"));
    m.insert(
        Value::from("source"),
        Value::from(format!("{}/{file}", dir.trim_end_matches('/'))),
    );
    m.insert(Value::from("target"), target);
    m.insert(Value::from("read_only"), read_only);
    *v = Value::Mapping(m);
    Ok(())
}

/// The engine refuses a memory limit below 6 MB.
pub const MIN_MEMORY_BYTES: u64 = 6 << 20;

/// The fewest processes a container is limited to.
const MIN_PIDS: u64 = 16;

/// What one container may use: the CVM's limits, divided among its
/// `containers` when no cgroup holds them as a whole.
fn per_container(limits: &ServiceLimits, containers: u64) -> ServiceLimits {
    if limits.cgroup_parent.is_some() || containers <= 1 {
        return limits.clone();
    }
    ServiceLimits {
        cpu_millis: limits.cpu_millis.map(|c| (c / containers).max(10)),
        memory_bytes: limits
            .memory_bytes
            .map(|m| (m / containers).max(MIN_MEMORY_BYTES)),
        pids: limits.pids.map(|p| (p / containers).max(MIN_PIDS)),
        ..limits.clone()
    }
}

fn limit_service(svc: &mut Mapping, limits: &ServiceLimits) {
    let deploy_limits = |svc: &Mapping, key: &str| {
        svc.get("deploy")
            .and_then(|d| d.get("resources"))
            .and_then(|r| r.get("limits"))
            .and_then(|l| l.get(key))
            .cloned()
    };
    if let Some(parent) = &limits.cgroup_parent {
        svc.insert(Value::from("cgroup_parent"), Value::from(parent.as_str()));
    }
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
        // 0 (or a fraction that rounds to it) means "no limit" to the
        // engine: it is no value here, so the CVM's applies.
        let tenant = [svc.get("mem_limit").cloned(), deploy_limits(svc, "memory")]
            .into_iter()
            .flatten()
            .filter_map(|v| bytes_of(&v))
            .filter(|b| *b > 0)
            .min();
        let bytes = tenant
            .map_or(max, |t| t.min(max))
            .max(MIN_MEMORY_BYTES.min(max));
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
        // No swap beyond the memory limit: -1 (unlimited swap) or a
        // larger value would let the CVM use more than its memory.
        if svc.contains_key("memswap_limit") {
            svc.insert(Value::from("memswap_limit"), Value::from(bytes));
        }
    }
    if let Some(max) = limits.pids {
        // 0 and -1 mean "no limit" to the engine.
        let tenant = [svc.get("pids_limit").cloned(), deploy_limits(svc, "pids")]
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_u64().or_else(|| v.as_str()?.trim().parse().ok()))
            .filter(|p| *p > 0)
            .min();
        let pids = tenant.map_or(max, |t| t.min(max));
        svc.insert(Value::from("pids_limit"), Value::from(pids));
        if let Some(l) = resources_mut(svc, "limits") {
            l.insert(Value::from("pids"), Value::from(pids));
        }
    }
    if let (Some(size), Some(files)) = (limits.log_max_bytes, limits.log_max_files) {
        limit_logging(svc, size, files);
    }
}

/// The `json-file`/`local` log of a container rotated at `size` bytes,
/// `files` kept (the tenant's smaller values kept); `none` stays.
fn limit_logging(svc: &mut Mapping, size: u64, files: u64) {
    let logging = svc
        .entry(Value::from("logging"))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if !logging.is_mapping() {
        *logging = Value::Mapping(Mapping::new());
    }
    let logging = logging.as_mapping_mut().expect("a mapping");
    if logging.get("driver").and_then(Value::as_str) == Some("none") {
        return;
    }
    let options = logging
        .entry(Value::from("options"))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if !options.is_mapping() {
        *options = Value::Mapping(Mapping::new());
    }
    let options = options.as_mapping_mut().expect("a mapping");
    let tenant_size = options
        .get("max-size")
        .and_then(bytes_of)
        .filter(|b| *b > 0);
    let tenant_files = options
        .get("max-file")
        .and_then(|v| v.as_u64().or_else(|| v.as_str()?.trim().parse().ok()))
        .filter(|f| *f > 0);
    let size = tenant_size.map_or(size, |t| t.min(size));
    let files = tenant_files.map_or(files, |t| t.min(files));
    options.insert(Value::from("max-size"), Value::from(size.to_string()));
    options.insert(Value::from("max-file"), Value::from(files.to_string()));
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
            cgroup_parent: Some("/berth/cvm".into()),
            ..Default::default()
        };
        let out = c.render_with_limits(&[], &limits).unwrap();
        let plain = service(&out, "plain");
        assert_eq!(plain["cgroup_parent"].as_str(), Some("/berth/cvm"));
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
            c.render_with_limits(&[], &ServiceLimits::default())
                .unwrap(),
            c.render(&[])
        );
    }

    /// The audit's finding 7: `mem_limit: 0` (or a fraction) was no limit,
    /// no container had a pids limit, and `scale: 12` gave twelve
    /// full-size containers.
    #[test]
    fn the_cvm_is_bounded_as_a_whole() {
        let c = ComposeFile::parse_and_check(
            "services:\n  zero:\n    image: alice/web:1\n    mem_limit: 0\n    pids_limit: -1\n  tiny:\n    image: alice/web:1\n    mem_limit: \"0.0001\"\n    memswap_limit: -1\n  many:\n    image: alice/web:1\n    scale: 6\n    logging: {driver: json-file, options: {max-size: 1g, max-file: \"100\"}}\n  quiet:\n    image: alice/web:1\n    logging: {driver: none}\n",
        )
        .unwrap();
        let limits = ServiceLimits {
            cpu_millis: Some(2000),
            memory_bytes: Some(900 << 20),
            pids: Some(900),
            cgroup_parent: None,
            log_max_bytes: Some(10 << 20),
            log_max_files: Some(3),
            agent_socket_dir: None,
        };
        // No cgroup for the CVM: nine containers share it.
        let out = c.render_with_limits(&[], &limits).unwrap();
        for name in ["zero", "many", "quiet"] {
            let s = service(&out, name);
            assert_eq!(s["mem_limit"].as_u64(), Some(100 << 20), "{name}: {out}");
            assert_eq!(s["pids_limit"].as_u64(), Some(100), "{name}");
            assert_eq!(s["cpus"].as_f64(), Some(0.222), "{name}");
            assert!(s.get("cgroup_parent").is_none());
        }
        let tiny = service(&out, "tiny");
        assert_eq!(tiny["mem_limit"].as_u64(), Some(100 << 20));
        assert_eq!(tiny["memswap_limit"].as_u64(), Some(100 << 20));
        let many = service(&out, "many");
        assert_eq!(
            many["logging"]["options"]["max-size"].as_str(),
            Some("10485760")
        );
        assert_eq!(many["logging"]["options"]["max-file"].as_str(), Some("3"));
        let zero = service(&out, "zero");
        assert_eq!(zero["logging"]["options"]["max-file"].as_str(), Some("3"));
        assert!(service(&out, "quiet")["logging"].get("options").is_none());
        // With the CVM's cgroup: each container may use up to all of it,
        // the cgroup holds them together.
        let held = ServiceLimits {
            cgroup_parent: Some("/berth/x".into()),
            ..limits
        };
        let out = c.render_with_limits(&[], &held).unwrap();
        let many = service(&out, "many");
        assert_eq!(many["mem_limit"].as_u64(), Some(900 << 20));
        assert_eq!(many["pids_limit"].as_u64(), Some(900));
        assert_eq!(many["cgroup_parent"].as_str(), Some("/berth/x"));
    }

    #[test]
    fn agent_socket_mounts_become_the_cvms_own_socket() {
        let c = ComposeFile::parse_and_check(
            "services:\n  web:\n    image: alice/web:1\n    volumes:\n      - /var/run/dstack.sock:/var/run/dstack.sock\n      - /run/tappd.sock:/app/t.sock:ro\n      - data:/data\n      - type: bind\n        source: /run/dstack.sock\n        target: /x/d.sock\nvolumes:\n  data: {}\n",
        )
        .unwrap();
        let limits = ServiceLimits {
            agent_socket_dir: Some("/state/cvms/a b:c/agent/".into()),
            ..Default::default()
        };
        let out = c.render_with_limits(&[], &limits).unwrap();
        let web = service(&out, "web");
        let v = web["volumes"].as_sequence().unwrap();
        let bind = |i: usize| {
            (
                v[i]["type"].as_str().unwrap().to_owned(),
                v[i]["source"].as_str().unwrap().to_owned(),
                v[i]["target"].as_str().unwrap().to_owned(),
                v[i]["read_only"].as_bool().unwrap(),
            )
        };
        let dir = "/state/cvms/a b:c/agent";
        assert_eq!(
            bind(0),
            (
                "bind".into(),
                format!("{dir}/dstack.sock"),
                "/var/run/dstack.sock".into(),
                false
            )
        );
        assert_eq!(
            bind(1),
            (
                "bind".into(),
                format!("{dir}/tappd.sock"),
                "/app/t.sock".into(),
                true
            )
        );
        assert_eq!(v[2].as_str(), Some("data:/data"));
        assert_eq!(
            bind(3),
            (
                "bind".into(),
                format!("{dir}/dstack.sock"),
                "/x/d.sock".into(),
                false
            )
        );
        // No guest agent on this CVM: refused with a sentence.
        let e = c
            .render_with_limits(&[], &ServiceLimits::default())
            .unwrap_err();
        assert_eq!(e.service.as_deref(), Some("web"));
        assert!(
            e.message.contains("this CVM has no guest agent"),
            "{}",
            e.message
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
