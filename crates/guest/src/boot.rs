//! The boot, step by step. Each step is a line in the serial log with its
//! duration; the last line is `BOOT OK` or `BOOT FAILED: <category>: …`.

use crate::error::{BootError, Hint};
use crate::handoff;
use crate::keys::{EnvKeyProvider, Kms};
use crate::redact::Redactor;
use crate::runtime::{ComposeTool, DockerRuntime, Handoff};
use crate::serial::SerialLog;
use crate::shared::HostShared;
use contract::{BootOutcome, Measurement};
use contract::{ComposeFile, Isolation};
use envseal::{Env, Limits};
use registry::{Category, CredentialSet, Endpoints, PullEvent, PullOptions, Puller};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How to boot.
pub struct BootOptions {
    /// The host-shared folder.
    pub shared: PathBuf,
    /// The CVM's persistent state folder (image store, compose file).
    pub state: PathBuf,
    /// Where the env key comes from; `None`: the KMS named by
    /// `sys-config.json` (`kms_url`).
    pub key_provider: Option<Box<dyn EnvKeyProvider>>,
    /// The compose project name; default: derived from the app.
    pub project: Option<String>,
    /// Retry budget of each registry request.
    pub retry_budget: Duration,
    /// The one-time KMS boot ticket the node handed to this boot.
    pub kms_ticket: Option<zeroize::Zeroizing<String>>,
}

/// What a successful boot did.
#[derive(Clone, Debug)]
pub struct BootReport {
    /// The app's measurement.
    pub measurement: Measurement,
    /// The compose project name.
    pub project: String,
    /// Images pulled (or found in the store).
    pub images: Vec<registry::PulledImage>,
    /// Total time.
    pub elapsed: Duration,
}

/// How long a boot may take, all its steps together, unless the caller says
/// otherwise ([`boot_within`]). Bytes arriving restore a pull's retry budget,
/// so without a deadline a registry that trickles a layer (or keeps
/// answering without completing it) holds a boot, and the node's boot slot,
/// as long as it likes. 30 minutes pulls a 10 GB image over 100 Mbit/s
/// twice over.
pub const BOOT_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// Time a failed pull's hand-off gets to remove its prefix images, past the
/// deadline (what it leaves, the next boot removes).
const ABANDON_GRACE: Duration = Duration::from_secs(10);

/// The boot's deadline: when it passes, the step running fails.
#[derive(Clone, Copy, Debug)]
struct Deadline {
    at: tokio::time::Instant,
    limit: Duration,
}

impl Deadline {
    fn after(limit: Duration) -> Self {
        Self {
            at: tokio::time::Instant::now() + limit,
            limit,
        }
    }

    /// `f`, unless the deadline passes first: then the failure of step `n`
    /// (`name`).
    async fn bound<T, F>(&self, n: usize, name: &str, f: F) -> Result<T, BootError>
    where
        F: std::future::Future<Output = Result<T, BootError>>,
    {
        match tokio::time::timeout_at(self.at, f).await {
            Ok(out) => out,
            Err(_) => Err(self.passed(n, name)),
        }
    }

    /// The failure of step `n` (`name`), running when the deadline passed:
    /// the images that did not arrive, or the step that did not end.
    fn passed(&self, n: usize, name: &str) -> BootError {
        let limit = humantime::format_duration(self.limit);
        if n == PULL_STEP {
            return BootError::new(
                Category::Unreachable,
                format!(
                    "the images did not arrive within the boot's deadline of {limit}: the registry, or the link to it, was too slow, or kept answering without completing a layer"
                ),
            )
            .hint("boot again when the registry is faster, or use a smaller image; the node's operator sets the boot deadline");
        }
        let category = if n > PULL_STEP {
            Category::Runtime
        } else {
            Category::Unreachable
        };
        BootError::new(
            category,
            format!(
                "step {n}/{} ({name}) had not ended when the boot's deadline of {limit} passed",
                Steps::TOTAL
            ),
        )
    }
}

/// The step that pulls (it bounds its pull itself, to clean up after it).
const PULL_STEP: usize = 5;

struct Steps<'a> {
    serial: &'a SerialLog,
    n: usize,
    deadline: Deadline,
}

impl Steps<'_> {
    const TOTAL: usize = 7;

    /// Runs the next step, `name`, ended by the boot's deadline if it is
    /// still running then.
    async fn run<T, F>(&mut self, name: &str, f: F) -> Result<T, BootError>
    where
        F: std::future::Future<Output = Result<T, BootError>>,
    {
        self.n += 1;
        let started = Instant::now();
        self.serial
            .line(&format!("[{}/{}] {name}", self.n, Self::TOTAL));
        let out = if self.n == PULL_STEP {
            f.await
        } else {
            self.deadline.bound(self.n, name, f).await
        };
        let ms = started.elapsed().as_millis();
        match &out {
            Ok(_) => self.serial.line(&format!(
                "[{}/{}] {name}: done in {ms} ms",
                self.n,
                Self::TOTAL
            )),
            Err(_) => self.serial.line(&format!(
                "[{}/{}] {name}: failed after {ms} ms",
                self.n,
                Self::TOTAL
            )),
        }
        out
    }
}

/// A compose project name from the app name: lowercase letters, digits, `-`, `_`.
pub fn project_name(app_name: &str, app_id: &str) -> String {
    let mut p: String = app_name
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    p = p.trim_start_matches(['-', '_']).to_owned();
    if p.is_empty() {
        p = format!("app-{}", &app_id[..12]);
    }
    p
}

/// Runs the boot, writing to `serial`, within [`BOOT_DEADLINE`]. The
/// caller writes the last lines ([`final_lines`]).
pub async fn boot(opts: BootOptions, serial: &SerialLog) -> Result<BootReport, BootError> {
    boot_within(opts, BOOT_DEADLINE, serial).await
}

/// Runs the boot, writing to `serial`; when `deadline` has passed, the step
/// running fails (the pull's with [`Category::Unreachable`]) and so does the
/// boot.
pub async fn boot_within(
    opts: BootOptions,
    deadline: Duration,
    serial: &SerialLog,
) -> Result<BootReport, BootError> {
    let started = Instant::now();
    let deadline = Deadline::after(deadline);
    let mut steps = Steps {
        serial,
        n: 0,
        deadline,
    };

    // 1. Measure.
    let (shared, measurement) = steps
        .run("measure the app", async {
            let shared = HostShared::read(&opts.shared)?;
            // The app id was fixed by the app's first manifest; an update
            // keeps it (sys-config says which), the compose hash is measured.
            let measurement = Measurement::of_app(
                &shared.app_compose_bytes,
                shared.sys_config.app_id.as_deref(),
            );
            // The manifest may have been altered on the host: the env-name
            // rules hold again here, whatever the control plane checked.
            for key in &shared.app_compose.allowed_envs {
                contract::env_rules::check_tenant_key(key).map_err(|e| {
                    BootError::new(
                        Category::Config,
                        format!("app-compose.json allowed_envs: {e}"),
                    )
                })?;
            }
            serial.line(&format!(
                "app {}: compose_hash {}",
                shared.app_compose.name, measurement.compose_hash
            ));
            serial.line(&format!("app_id {}", measurement.app_id));
            serial.line(&format!(
                "upgrades: {}",
                shared.app_compose.upgrade_authority()
            ));
            Ok((shared, measurement))
        })
        .await?;

    // 2. Key and env.
    let (env, key_material) = steps
        .run("open the env", async {
            let Some(sealed) = &shared.sealed_env else {
                serial.line("no encrypted-env: the app runs without secrets");
                return Ok((Env::new(), None));
            };
            let kms;
            let provider: &dyn EnvKeyProvider = match (&opts.key_provider, &shared.sys_config.kms_url) {
                (Some(p), _) => p.as_ref(),
                (None, Some(url)) => {
                    kms = Kms {
                        url: url.clone(),
                        ticket: opts.kms_ticket.clone(),
                    };
                    &kms
                }
                (None, None) => {
                    return Err(BootError::new(
                        Category::Config,
                        "no env key provider: sys-config.json names no kms_url and no key file was given",
                    )
                    .with_hint(Hint::EnvKeySource));
                }
            };
            serial.line(&format!("env key from {}", provider.describe()));
            let key = provider.env_key(&measurement).await?;
            let mut env = key.open(sealed).map_err(|e| {
                BootError::new(Category::Integrity, format!("the encrypted env does not open: {e}"))
                    .hint("the env must be sealed to this app's env public key (re-deploy with the key the API returned)")
            })?;
            let allowed = &shared.app_compose.allowed_envs;
            for dropped in env.retain_keys(|k| allowed.iter().any(|a| a == k)) {
                serial.line(&format!("warning: env variable {dropped} is not in allowed_envs; dropped"));
            }
            env.validate(&Limits::GUEST)
                .map_err(|e| BootError::new(Category::Config, format!("the env breaks the guest's limits: {e}")))?;
            serial.set_redactor(Redactor::for_env(&env));
            let keys: Vec<&str> = env.keys().collect();
            serial.line(&format!("env: {} variables ({})", keys.len(), keys.join(", ")));
            Ok((env, Some(key.to_hex())))
        })
        .await?;

    // 3. Credentials.
    let credentials = steps
        .run("resolve registry credentials", async {
            registry_credentials(
                &env.vars()
                    .iter()
                    .map(|v| (v.key.clone(), v.value.clone()))
                    .collect::<Vec<_>>(),
                serial,
            )
        })
        .await?;

    // 4. Compose file.
    let compose = steps
        .run("read the compose file", async {
            let yaml = shared
                .app_compose
                .docker_compose_file
                .as_deref()
                .ok_or_else(|| {
                    BootError::new(
                        Category::Config,
                        "app-compose.json has no docker_compose_file",
                    )
                })?;
            // The policy again, inside the CVM: the host-shared compose may
            // have been altered after the control plane checked it. Its
            // rules are those of the CVM's isolation boundary.
            let isolation = shared.sys_config.isolation;
            serial.line(&format!("isolation: {isolation}"));
            let compose = ComposeFile::parse_and_check_for(yaml, isolation)?;
            // No published port on one the cloud keeps (its API, a mapped
            // registry, whether or not it is up right now).
            compose.check_reserved_ports(&shared.sys_config.all_reserved_ports())?;
            // Image references are public (measured) text: a registry user
            // name inside one stays readable, and is redacted elsewhere.
            serial.set_public(
                compose
                    .images
                    .iter()
                    .flat_map(|i| [i.written.clone(), i.reference.to_string()])
                    .chain(
                        compose
                            .base_images()
                            .into_iter()
                            .flat_map(|b| [b.written.clone(), b.reference.to_string()]),
                    )
                    .collect(),
            );
            for i in &compose.images {
                serial.line(&format!("service {}: {}", i.service, i.reference));
            }
            for b in &compose.builds {
                let bases: Vec<String> = b.bases.iter().map(|b| b.reference.to_string()).collect();
                serial.line(&format!(
                    "service {}: built in the CVM{}{}",
                    b.service,
                    b.image
                        .as_ref()
                        .map(|i| format!(" as {i}"))
                        .unwrap_or_default(),
                    if bases.is_empty() {
                        String::new()
                    } else {
                        format!(" from {}", bases.join(", "))
                    }
                ));
            }
            Ok(compose)
        })
        .await?;

    // 5. Pull, handing each image's layers to the engine as they are
    // verified (`handoff`): the engine unpacks the first layers while the
    // pull fetches the later ones.
    let store_dir = opts.state.join("images");
    let images = steps
        .run("pull images", async {
            // The app's image policy (measured with its manifest): digests
            // now, signatures by the pull, before anything of an image is
            // fetched or handed to the engine.
            let signatures = image_policy(&shared.app_compose, &compose, serial)?;
            let mut popts = cvm_pull_options(
                &store_dir,
                credentials,
                opts.retry_budget,
                &shared.sys_config,
                |k| env.get(k).map(|v| v.expose().to_owned()),
            )?;
            popts.signatures = signatures;
            let store = registry::OciStore::open(&store_dir)?;
            let handoff = handoff::start(
                store,
                wanted(&compose),
                serial.clone(),
                opts.state.join("handoff-prefixes"),
            );
            let watch = handoff.watch();
            let log = pull_log(serial);
            let events: registry::EventSink = Arc::new(move |e: &PullEvent| {
                log(e);
                watch.observe(e);
            });
            let puller = match Puller::new(popts, events) {
                Ok(p) => p,
                Err(e) => {
                    handoff.abandon().await;
                    return Err(e.into());
                }
            };
            // The base images of inline Dockerfiles too, after the
            // services' own (step 6 tells them apart by position).
            let refs: Vec<_> = compose
                .images
                .iter()
                .map(|i| i.reference.clone())
                .chain(compose.base_images().into_iter().map(|b| b.reference.clone()))
                .collect();
            let pull = async { puller.pull_all(&refs).await.map_err(BootError::from) };
            let pulled = match deadline.bound(PULL_STEP, "pull images", pull).await {
                Ok(p) => p,
                Err(e) => {
                    // The pull is dropped: its connections close, what it
                    // downloaded stays in the store for the next boot.
                    let _ = tokio::time::timeout(ABANDON_GRACE, handoff.abandon()).await;
                    return Err(e);
                }
            };
            for p in &pulled {
                if let Some(v) = &p.signed_by {
                    serial.line(&format!(
                        "pull: {}: cosign signature of {} verified (key {}, policy scope {})",
                        p.reference, p.digest, v.key, v.scope
                    ));
                }
            }
            let counts = puller.request_counts().await;
            let (down, reused) = pulled.iter().fold((0, 0), |a, p| (a.0 + p.bytes_downloaded, a.1 + p.bytes_reused));
            serial.line(&format!(
                "pulled {} images: {} bytes downloaded, {} reused; manifest requests: {} HEAD, {} GET",
                pulled.len(),
                down,
                reused,
                counts.manifest_heads,
                counts.manifest_gets
            ));
            Ok((handoff, pulled))
        })
        .await?;
    let (handoff, pulled) = images;

    // 6. The rest of the hand-off: the loads of the layers verified last.
    let runtime = steps
        .run("hand images to the container runtime", async {
            let handed = handoff.finish().await?;
            let runtime = DockerRuntime::connect().await?;
            let mut replacements = Vec::new();
            let mut image_ids = Vec::new();
            let (service_images, base_images) =
                pulled.split_at(compose.images.len().min(pulled.len()));
            let bases = hand_bases(&compose, base_images, &handed, serial)?;
            for (svc, img) in compose.images.iter().zip(service_images) {
                // Every service runs the image ID this boot pulled and
                // verified, never a name: in a shared engine a name may point
                // at another tenant's image.
                let h = handed
                    .iter()
                    .find(|h| h.reference == img.reference && h.manifest == img.digest)
                    .ok_or_else(|| {
                        BootError::new(
                            Category::Runtime,
                            format!(
                                "{} was pulled as {} but not handed to the engine",
                                svc.written, img.digest
                            ),
                        )
                    })?;
                let how = match h.how {
                    Handoff::Present => "already in the engine",
                    Handoff::Tagged => "tagged in the engine",
                    Handoff::Loaded => "loaded into the engine",
                };
                serial.line(&format!("{}: {} ({how})", svc.written, &h.image_id[..19]));
                image_ids.push((svc.service.clone(), h.image_id.clone()));
                replacements.push((svc.service.clone(), h.image_id.clone()));
            }
            Ok((runtime, replacements, image_ids, bases))
        })
        .await?;
    let (runtime, replacements, image_ids, bases) = runtime;

    // 7. Compose up.
    let project = opts
        .project
        .clone()
        .or(shared.sys_config.project_name.clone())
        .unwrap_or_else(|| project_name(&shared.app_compose.name, &measurement.app_id));
    steps
        .run("start the app", async {
            let dir = opts.state.join("compose");
            std::fs::create_dir_all(&dir).map_err(|e| {
                BootError::new(
                    Category::Config,
                    format!("cannot create {}: {e}", dir.display()),
                )
            })?;
            // The CVM's vCPUs and memory bound every container (in the
            // container mode, the CVM's cgroup bounds the whole machine).
            let limits = shared.sys_config.limits();
            let isolation = compose.isolation();
            let (rendered, build_files) = match isolation {
                Isolation::Shared => (
                    compose.render_with_limits(&replacements, &limits)?,
                    Vec::new(),
                ),
                Isolation::Container => {
                    // Inline Dockerfiles are interpolated from the env
                    // the compose tool gets (as compose would do it).
                    let lookup = |k: &str| {
                        contract::env_rules::reserved_reason(k)
                            .is_none()
                            .then(|| env.get(k).map(|v| v.expose().to_owned()))
                            .flatten()
                    };
                    let r = compose.render_in_container(&replacements, &bases, &limits, &lookup)?;
                    (r.yaml, r.files)
                }
            };
            if isolation == Isolation::Shared && limits != Default::default() {
                serial.line(&format!(
                    "limits {}: {} CPUs, {} MiB, {} processes",
                    match &limits.cgroup_parent {
                        Some(cg) => format!("of the CVM as a whole (cgroup {cg})"),
                        None => "shared among its containers".to_owned(),
                    },
                    limits
                        .cpu_millis
                        .map_or("no limit".into(), |m| format!("{:.3}", m as f64 / 1000.0)),
                    limits
                        .memory_bytes
                        .map_or("no limit".into(), |b| (b >> 20).to_string()),
                    limits.pids.map_or("no limit".into(), |p| p.to_string())
                ));
            }
            let fingerprint = fingerprint(
                key_material.as_deref().map(|k| k.as_str()),
                &project,
                &rendered,
                &env,
                &image_ids,
            );
            let marker = dir.join("last-up");
            // What a CVM builds has no image ID before the build: the
            // compose tool runs (the engine's build cache keeps it short).
            if compose.builds.is_empty()
                && std::fs::read_to_string(&marker).ok().as_deref() == Some(fingerprint.as_str())
                && restart_existing(&runtime, &project, &image_ids, serial).await?
            {
                return Ok(());
            }
            let _ = std::fs::remove_file(&marker);
            let tool = ComposeTool::detect().await?;
            let file = dir.join("docker-compose.yml");
            std::fs::write(&file, &rendered).map_err(|e| {
                BootError::new(
                    Category::Config,
                    format!("cannot write {}: {e}", file.display()),
                )
            })?;
            write_build_files(&dir, &build_files, serial)?;
            serial.line(&format!("{} up, project {project}", tool.name()));
            let up = tool.up(&project, &file, &env, isolation, serial).await;
            // The build files may hold env values: gone once built.
            for f in &build_files {
                let _ = std::fs::remove_file(dir.join(&f.path));
            }
            up?;
            // Remember what was started, so an unchanged restart can skip the tool.
            let _ = std::fs::write(&marker, &fingerprint);
            Ok(())
        })
        .await?;

    Ok(BootReport {
        measurement,
        project,
        images: pulled,
        elapsed: started.elapsed(),
    })
}

/// The images the hand-off gives the engine: each reference of the compose
/// file once (and each base image of an inline Dockerfile, under the name
/// the Dockerfile uses), named as written unless it is pinned by digest.
fn wanted(compose: &ComposeFile) -> Vec<handoff::Wanted> {
    let mut out: Vec<handoff::Wanted> = Vec::new();
    let named = compose
        .images
        .iter()
        .map(|i| (&i.reference, &i.written))
        .chain(
            compose
                .base_images()
                .into_iter()
                .map(|b| (&b.reference, &b.written)),
        );
    for (reference, written) in named {
        let name = (reference.digest().is_none()).then(|| written.clone());
        let reference = reference.to_string();
        if !out
            .iter()
            .any(|w| w.reference == reference && w.name == name)
        {
            out.push(handoff::Wanted { reference, name });
        }
    }
    out
}

/// The base images of the CVM's builds as the engine now has them: each
/// as written in its Dockerfile → the name the build is to use (the name
/// itself, which the hand-off gave it; the image ID where the Dockerfile
/// pins a digest, which a loaded image cannot be named by).
fn hand_bases(
    compose: &ComposeFile,
    pulled: &[registry::PulledImage],
    handed: &[handoff::Handed],
    serial: &SerialLog,
) -> Result<Vec<(String, String)>, BootError> {
    let mut out = Vec::new();
    for (base, img) in compose.base_images().into_iter().zip(pulled) {
        let h = handed
            .iter()
            .find(|h| h.reference == img.reference && h.manifest == img.digest)
            .ok_or_else(|| {
                BootError::new(
                    Category::Runtime,
                    format!(
                        "base image {} was pulled as {} but not handed to the engine",
                        base.written, img.digest
                    ),
                )
            })?;
        let local = if base.reference.digest().is_some() {
            h.image_id.clone()
        } else {
            base.written.clone()
        };
        serial.line(&format!(
            "base image {}: {} (for the build)",
            base.written,
            &h.image_id[..h.image_id.len().min(19)]
        ));
        out.push((base.written.clone(), local));
    }
    Ok(out)
}

/// Writes the build files of the container mode next to the compose file
/// (`dir`): their paths are relative, made of plain components only.
fn write_build_files(
    dir: &std::path::Path,
    files: &[contract::policy::BuildFile],
    serial: &SerialLog,
) -> Result<(), BootError> {
    for f in files {
        let rel = std::path::Path::new(&f.path);
        if !rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            return Err(BootError::new(
                Category::Config,
                format!(
                    "a build file's path is not inside the compose folder: {}",
                    f.path
                ),
            ));
        }
        let path = dir.join(rel);
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, &f.content));
        written.map_err(|e| {
            BootError::new(
                Category::Config,
                format!("cannot write {}: {e}", path.display()),
            )
        })?;
        serial.line(&format!("wrote {} (from dockerfile_inline)", f.path));
    }
    Ok(())
}

/// What the compose tool was last run with: the project, the compose file
/// as handed over (with image IDs), and the env, keyed with the env key so
/// that the file reveals nothing about env values even inside the state dir.
fn fingerprint(
    key: Option<&str>,
    project: &str,
    rendered: &str,
    env: &Env,
    image_ids: &[(String, String)],
) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"berth-compose-fingerprint\0");
    h.update(key.unwrap_or("").as_bytes());
    h.update([0]);
    h.update(project.as_bytes());
    h.update([0]);
    h.update(rendered.as_bytes());
    for (service, id) in image_ids {
        h.update([0]);
        h.update(service.as_bytes());
        h.update(b"=");
        h.update(id.as_bytes());
    }
    for v in env.vars() {
        h.update([0]);
        h.update(v.key.as_bytes());
        h.update(b"=");
        h.update(v.value.expose().as_bytes());
    }
    hex::encode(h.finalize())
}

/// The restart fast path: when nothing changed since the last successful
/// `up`, the containers the compose tool made are started through the
/// engine API, without running the tool (which costs ~0.5 s of its own).
/// Returns false when the containers are not all there as expected, so the
/// caller falls back to the compose tool.
async fn restart_existing(
    runtime: &DockerRuntime,
    project: &str,
    image_ids: &[(String, String)],
    serial: &SerialLog,
) -> Result<bool, BootError> {
    let containers = runtime.project_containers(project).await?;
    let complete = image_ids.iter().all(|(service, id)| {
        containers
            .iter()
            .any(|c| &c.service == service && &c.image_id == id)
    }) && containers.iter().all(|c| {
        image_ids
            .iter()
            .any(|(s, id)| s == &c.service && id == &c.image_id)
    });
    if !complete || containers.is_empty() {
        return Ok(false);
    }
    let mut started = 0;
    for c in containers.iter().filter(|c| !c.running) {
        runtime.start_container(&c.id).await?;
        started += 1;
    }
    serial.line(&format!(
        "app unchanged since its last start: {} containers, {started} started through the engine API (compose tool not needed)",
        containers.len()
    ));
    Ok(true)
}

/// The app's image policy, checked before the pull: a malformed policy is
/// a `config` failure; an image without a digest under `require_digests`
/// is `untrusted_image`, naming it. Returns the signature rules for the
/// pull (`None`: no signature required).
fn image_policy(
    app: &contract::AppCompose,
    compose: &ComposeFile,
    serial: &SerialLog,
) -> Result<Option<registry::cosign::SignaturePolicy>, BootError> {
    let policy = app
        .image_policy()
        .map_err(|e| BootError::new(Category::Config, e.to_string()))?;
    let Some(policy) = policy else {
        return Ok(None);
    };
    serial.line(&format!("image policy: {}", policy.describe()));
    if policy.require_digests
        && let Some(subject) = contract::image_policy::first_unpinned(compose)
    {
        return Err(BootError::new(
            Category::UntrustedImage,
            contract::image_policy::unpinned_sentence(&subject, "the app's image policy"),
        )
        .hint("deploy the image pinned to its digest (name@sha256:…); berth deploy pins every tag by default"));
    }
    if policy.signatures.is_empty() {
        return Ok(None);
    }
    Ok(Some(registry::cosign::SignaturePolicy::new(&policy)?))
}

/// The boot's outcome as the node reads it ([`BootOutcome`]).
pub fn outcome(result: &Result<BootReport, BootError>, elapsed: Duration) -> BootOutcome {
    match result {
        Ok(_) => BootOutcome::Ok { elapsed },
        Err(e) => BootOutcome::Failed {
            category: e.category,
            message: e.message.clone(),
        },
    }
}

/// The last lines of the serial log for `result`: the troubleshooting
/// lines, each hint worded by `word` (`Hint::to_string` words them for a
/// CVM's serial log), then the [`BootOutcome`] line, which is the very
/// last, so the node finds it there.
pub fn final_lines(
    result: &Result<BootReport, BootError>,
    elapsed: Duration,
    word: &dyn Fn(&Hint) -> String,
) -> Vec<String> {
    let mut lines = Vec::new();
    if let Err(e) = result {
        for h in &e.hints {
            lines.push(format!("  troubleshooting: {}", word(h)));
        }
    }
    lines.push(outcome(result, elapsed).render());
    lines
}

/// The registry logins of the env (`DSTACK_DOCKER_*`, `DSTACK_AWS_*`),
/// each named on `serial` (its registry, never its secret).
pub(crate) fn registry_credentials(
    pairs: &[(String, contract::SecretValue)],
    serial: &SerialLog,
) -> Result<CredentialSet, BootError> {
    let creds = CredentialSet::from_env_pairs(pairs).map_err(|e| {
        BootError::new(Category::Config, e.to_string())
            .hint("set all the variables of one login in the env")
    })?;
    if let Some(d) = &creds.docker {
        serial.line(&format!(
            "registry login for {} (DSTACK_DOCKER_*)",
            d.registry
        ));
    }
    if let Some(e) = &creds.ecr {
        serial.line(&format!("ECR login for {} (DSTACK_AWS_*)", e.registry));
    }
    if creds.is_empty() {
        serial.line("no registry credentials: public images only");
    }
    Ok(creds)
}

/// A pull's options inside a CVM: the store, the logins, the operator's
/// mappings of `sys` (registry endpoints, CA certificates, the ECR
/// endpoint), and the ECR endpoint override the app's variables name
/// (`var` reads one).
pub(crate) fn cvm_pull_options(
    store_dir: &std::path::Path,
    credentials: CredentialSet,
    retry_budget: Duration,
    sys: &contract::SysConfig,
    var: impl Fn(&str) -> Option<String>,
) -> Result<PullOptions, BootError> {
    let mut popts = PullOptions::new(store_dir);
    popts.credentials = credentials;
    popts.retry.budget = retry_budget;
    let mut endpoints = Endpoints::new();
    for (name, url) in &sys.registry_endpoints {
        endpoints.insert(name, url)?;
    }
    popts.endpoints = endpoints;
    popts.ca_certs_pem = sys.ca_certs.iter().map(|c| c.as_bytes().to_vec()).collect();
    let ecr_from = |k: &str| {
        if k == "AWS_ENDPOINT_URL_ECR"
            && let Some(v) = &sys.aws_endpoint_url_ecr
        {
            return Some(v.clone());
        }
        var(k)
    };
    popts.ecr_endpoint = registry::ecr::endpoint_override(ecr_from)?;
    // A CVM's network is the host's: loopback and private addresses
    // only for what the operator mapped (sys-config), never for what
    // a tenant's image reference, registry answer or env names.
    popts.private_targets = registry::PrivateTargets::OnlyMapped;
    popts.ecr_endpoint_mapped = sys
        .aws_endpoint_url_ecr
        .as_deref()
        .is_some_and(|v| !v.is_empty());
    Ok(popts)
}

/// Pull progress as serial-log lines: one per image and per blob, retries,
/// and the rate limits seen.
fn pull_log(serial: &SerialLog) -> registry::EventSink {
    let serial = serial.clone();
    Arc::new(move |e: &PullEvent| match e {
        PullEvent::Resolved {
            image,
            digest,
            cached,
        } => serial.line(&format!(
            "pull: {image} -> {digest}{}",
            if *cached {
                " (manifest in store, HEAD only)"
            } else {
                ""
            }
        )),
        PullEvent::BlobQueued {
            digest,
            size,
            cached,
            ..
        } => {
            if *cached {
                serial.line(&format!(
                    "pull: {} already in store ({size} bytes)",
                    &digest.hex()[..12]
                ));
            }
        }
        PullEvent::BlobProgress { .. } => {}
        PullEvent::BlobDone {
            digest,
            size,
            downloaded,
            elapsed,
        } => {
            let ms = elapsed.as_millis();
            serial.line(&format!(
                "pull: {} downloaded {downloaded} of {size} bytes in {ms} ms",
                &digest.hex()[..12]
            ));
        }
        PullEvent::Retrying {
            registry,
            what,
            attempt,
            delay,
            reason,
        } => serial.line(&format!(
            "pull: {registry}: {what}: {reason}; attempt {attempt} in {} ms",
            delay.as_millis()
        )),
        PullEvent::RateLimit { registry, limit } => {
            let name = if registry == registry::reference::DOCKER_HUB {
                "Docker Hub"
            } else {
                registry.as_str()
            };
            serial.line(&format!("{name}: {limit}"));
        }
        PullEvent::Done { .. } => {}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_step_still_running_at_the_deadline_fails_naming_it() {
        let deadline = Deadline::after(Duration::from_millis(200));
        let started = Instant::now();
        let never = std::future::pending::<Result<(), BootError>>();
        let err = deadline
            .bound(6, "hand images to the container runtime", never)
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(err.category, Category::Runtime);
        assert!(
            err.message
                .contains("step 6/7 (hand images to the container runtime)")
                && err.message.contains("200ms"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn a_pull_still_running_at_the_deadline_fails_as_unreachable() {
        let deadline = Deadline::after(Duration::from_millis(200));
        let never = std::future::pending::<Result<(), BootError>>();
        let err = deadline
            .bound(PULL_STEP, "pull images", never)
            .await
            .unwrap_err();
        assert_eq!(err.category, Category::Unreachable);
        assert!(err.message.contains("did not arrive"), "{}", err.message);
        let line = outcome(&Err(err), Duration::from_millis(200)).render();
        assert!(line.starts_with("BOOT FAILED: unreachable: the images did not arrive within the boot's deadline of 200ms"), "{line}");
    }

    #[tokio::test]
    async fn a_step_that_ends_in_time_keeps_its_outcome() {
        let deadline = Deadline::after(Duration::from_secs(60));
        let failed = async { Err::<(), _>(BootError::new(Category::Config, "bad")) };
        assert_eq!(
            deadline
                .bound(4, "read the compose file", failed)
                .await
                .unwrap_err()
                .message,
            "bad"
        );
        assert_eq!(deadline.bound(4, "x", async { Ok(7) }).await.unwrap(), 7);
    }
}
