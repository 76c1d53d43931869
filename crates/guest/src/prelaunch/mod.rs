//! `berth guest prelaunch`: Berth's pull inside a **real dstack CVM**, run
//! by the pre-launch script dstack's `app-compose.sh` sources just before
//! `docker compose up` ([`script`] writes that script).
//!
//! dstack runs the app itself; this step only makes sure that when it
//! does, every image the compose file names is already in the CVM's Docker
//! engine under exactly the name compose looks for, so compose pulls
//! nothing:
//!
//! 1. read the guest ([`inputs`]): the manifest, the compose file dstack
//!    will run, the decrypted env (`.decrypted-env.json` preferred);
//! 2. list the images as compose will ([`compose`]: `${VAR}`s interpolated,
//!    built and inactive services left out, one compose parser);
//! 3. check the store on the persistent disk again ([`verify`]: that disk
//!    has no integrity protection);
//! 4. pull with Berth's engine into that store (HEAD only when it holds the
//!    manifest already), handing layers to the engine as they are verified
//!    ([`crate::handoff`]), Docker login and ECR at once;
//! 5. decide: an image whose registry is unreachable or rate-limited but
//!    which the engine already holds under its name is a warning; wrong
//!    credentials, a denied or missing image, bad content: the step fails.
//!
//! Every step is a timestamped, redacted line on standard output (dstack
//! relays it to the serial console) and a `boot.progress` / `boot.error`
//! notification to the host ([`notify`]). No secret is written to disk:
//! images are loaded into the engine directly, no `config.json` is made.
//!
//! Runners: `docker-compose` is supported. `bash` has nothing to pull.
//! `nerdctl-compose` (containerd) is not: the step says so and exits with
//! [`NOT_FOR_THIS_RUNNER`], and the script falls back to the default flow.

pub mod compose;
pub mod inputs;
pub mod notify;
pub mod script;
pub mod verify;

use crate::error::BootError;
use crate::handoff;
use crate::redact::Redactor;
use crate::runtime::Handoff;
use crate::serial::SerialLog;
use inputs::Runner;
use notify::Notifier;
use registry::{Category, ImageReference, PullEvent, PulledImage, Puller};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The exit code that tells the script "not for this runner: use the
/// default flow".
pub const NOT_FOR_THIS_RUNNER: u8 = 64;

/// The store's place on dstack's persistent disk, under the root.
pub const DEFAULT_STORE: &str = "dstack/persistent/berth/images";

/// How long the whole step may take unless told otherwise.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(20 * 60);

/// How to run the step.
#[derive(Clone, Debug)]
pub struct PrelaunchOptions {
    /// The guest's root (`/` in a CVM; a folder laid out as one in tests).
    pub root: PathBuf,
    /// The image store; default [`DEFAULT_STORE`] under `root`.
    pub store: Option<PathBuf>,
    /// Retry budget of each registry request.
    pub retry_budget: Duration,
    /// The whole step's deadline.
    pub deadline: Duration,
    /// How long one `notify-host` may take.
    pub notify_timeout: Duration,
}

impl PrelaunchOptions {
    /// Defaults for the guest at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            store: None,
            retry_budget: Duration::from_secs(120),
            deadline: DEFAULT_DEADLINE,
            notify_timeout: Duration::from_secs(5),
        }
    }

    fn store_dir(&self) -> PathBuf {
        self.store
            .clone()
            .unwrap_or_else(|| self.root.join(DEFAULT_STORE))
    }
}

/// How the step ended, when it did not fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrelaunchOutcome {
    /// Every image compose needs is in the engine (`warnings` of them
    /// only from an earlier boot, their registry being unreachable).
    Ready {
        /// Images handed to the engine (or found there).
        images: usize,
        /// Images kept from an earlier boot.
        warnings: usize,
    },
    /// The runner is not one this step serves; the script's default flow
    /// takes over.
    NotForThisRunner(String),
}

/// Runs the step. `process_env` is the environment the script was sourced
/// with. On failure, `boot.error` has been sent; the caller writes the last
/// lines ([`failure_lines`]).
pub async fn run(
    opts: &PrelaunchOptions,
    process_env: &[(String, String)],
    serial: &SerialLog,
) -> Result<PrelaunchOutcome, BootError> {
    let notifier = Notifier::new(serial.clone(), opts.notify_timeout);
    notifier
        .send(notify::PROGRESS, "berth: pulling images")
        .await;
    let grace = Duration::from_secs(60);
    let result = match tokio::time::timeout(
        opts.deadline + grace,
        steps(opts, process_env, serial, &notifier),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(BootError::new(
            Category::Unreachable,
            format!(
                "the pre-launch step did not end within its deadline of {}",
                humantime::format_duration(opts.deadline)
            ),
        )),
    };
    match &result {
        Ok(PrelaunchOutcome::Ready { images, warnings }) => {
            let text = if *warnings > 0 {
                format!("berth: {images} images ready, {warnings} kept from an earlier boot")
            } else {
                format!("berth: {images} images ready")
            };
            notifier.send(notify::PROGRESS, &text).await;
        }
        Ok(PrelaunchOutcome::NotForThisRunner(_)) => {}
        Err(e) => {
            notifier
                .send(
                    notify::ERROR,
                    &format!("berth: {}: {}", e.category.as_str(), e.message),
                )
                .await;
        }
    }
    result
}

/// The last lines of a failed step: troubleshooting, then
/// `BOOT FAILED: <category>: <message>`.
pub fn failure_lines(e: &BootError) -> Vec<String> {
    let mut lines: Vec<String> = e
        .hints
        .iter()
        .map(|h| format!("  troubleshooting: {h}"))
        .collect();
    lines.push(
        contract::BootOutcome::Failed {
            category: e.category,
            message: e.message.clone(),
        }
        .render(),
    );
    lines
}

async fn steps(
    opts: &PrelaunchOptions,
    process_env: &[(String, String)],
    serial: &SerialLog,
    notifier: &Notifier,
) -> Result<PrelaunchOutcome, BootError> {
    let started = Instant::now();
    // 1. The guest.
    let guest = inputs::read(&opts.root, process_env)?;
    serial.set_redactor(Redactor::for_env(&guest.secrets));
    serial.line(&format!(
        "env: {} secret variables ({})",
        guest.secrets.len(),
        if guest.from_json {
            ".decrypted-env.json"
        } else {
            "the environment"
        }
    ));
    match &guest.runner {
        Runner::DockerCompose => {}
        Runner::Bash => {
            serial.line("runner bash: no compose file, nothing to pull");
            return Ok(PrelaunchOutcome::Ready {
                images: 0,
                warnings: 0,
            });
        }
        Runner::NerdctlCompose => {
            serial.line("runner nerdctl-compose: not supported by Berth's agent (it loads images into the Docker engine, not containerd)");
            return Ok(PrelaunchOutcome::NotForThisRunner("nerdctl-compose".into()));
        }
        Runner::Other(r) => {
            serial.line(&format!(
                "runner {}: unknown to Berth's agent",
                crate::serial::escape_controls(r)
            ));
            return Ok(PrelaunchOutcome::NotForThisRunner(r.clone()));
        }
    }

    // 2. The images, as compose will see them.
    let yaml = guest.compose_yaml.as_deref().ok_or_else(|| {
        BootError::new(
            Category::Config,
            "app-compose.json has no docker_compose_file",
        )
    })?;
    let listed = compose::images(yaml, &guest.vars)?;
    serial.line(&format!(
        "compose file {}: {} services to pull for",
        guest.compose_source.display(),
        listed.images.len()
    ));
    // Image names are public (measured) text only as the file writes them:
    // a name that `${VAR}` interpolation made may carry an env value, and
    // stays redacted.
    let mut public: Vec<String> = Vec::new();
    for i in listed
        .images
        .iter()
        .filter(|i| yaml.contains(i.written.as_str()))
    {
        public.push(i.written.clone());
        public.push(i.reference.to_string());
    }
    serial.set_public(public);
    for i in &listed.images {
        serial.line(&format!("service {}: {}", i.service, i.written));
    }
    for s in &listed.built {
        serial.line(&format!(
            "service {s}: built by compose in the CVM (nothing to pull)"
        ));
    }
    for s in &listed.inactive {
        serial.line(&format!(
            "service {s}: has profiles, not started by `up` (not pulled)"
        ));
    }
    for v in &listed.unset {
        serial.line(&format!(
            "warning: the compose file uses {v}, which is not set (compose uses an empty string)"
        ));
    }

    // 3. Credentials.
    let pairs: Vec<(String, contract::SecretValue)> = guest
        .secrets
        .vars()
        .iter()
        .map(|v| (v.key.clone(), v.value.clone()))
        .collect();
    let credentials = crate::boot::registry_credentials(&pairs, serial)?;
    if listed.images.is_empty() {
        serial.line("nothing to pull");
        return Ok(PrelaunchOutcome::Ready {
            images: 0,
            warnings: 0,
        });
    }

    // 4. The store, checked again.
    let store_dir = opts.store_dir();
    std::fs::create_dir_all(&store_dir).map_err(|e| {
        BootError::new(
            Category::Config,
            format!("cannot create the store {}: {e}", store_dir.display()),
        )
        .hint("the persistent disk must be mounted and writable")
    })?;
    let check_dir = store_dir.clone();
    let checked = tokio::task::spawn_blocking(move || verify::check_store(&check_dir))
        .await
        .unwrap_or_default();
    serial.line(&format!(
        "store {}: {} blobs ({} bytes) verified again",
        store_dir.display(),
        checked.checked,
        checked.bytes
    ));
    for d in &checked.removed {
        serial.line(&format!(
            "warning: store: blob {d} on the persistent disk no longer matches its digest: removed, it is fetched again"
        ));
    }

    // 5. Pull, handing layers to the engine as they are verified.
    let popts = crate::boot::cvm_pull_options(
        &store_dir,
        credentials,
        opts.retry_budget,
        &guest.sys,
        |k| guest.vars.get(k).cloned(),
    )?;

    let wanted = wanted(&listed.images);
    for w in wanted.iter().filter(|w| w.name.is_none()) {
        serial.line(&format!(
            "warning: {} is pinned by digest: the engine cannot give a loaded image that name, so compose asks the registry for it itself (name the image by a tag to avoid that)",
            w.reference
        ));
    }
    let mut refs: Vec<ImageReference> = Vec::new();
    for i in &listed.images {
        if !refs.contains(&i.reference) {
            refs.push(i.reference.clone());
        }
    }
    let pending = store_dir.with_file_name("handoff-prefixes");
    let store = registry::OciStore::open(&store_dir)?;
    let overlap = handoff::start(
        store.clone(),
        wanted.clone(),
        serial.clone(),
        pending.clone(),
    );
    let watch = overlap.watch();
    let log = pull_log(serial);
    let events: registry::EventSink = Arc::new(move |e: &PullEvent| {
        log(e);
        watch.observe(e);
    });
    let puller = match Puller::new(popts, events) {
        Ok(p) => p,
        Err(e) => {
            overlap.abandon().await;
            return Err(e.into());
        }
    };
    notifier
        .send(
            notify::PROGRESS,
            &format!("berth: pulling {} images", refs.len()),
        )
        .await;
    let pulls = futures_util::future::join_all(refs.iter().map(|r| puller.pull(r)));
    let results: Vec<Result<PulledImage, BootError>> =
        match tokio::time::timeout(opts.deadline, pulls).await {
            Ok(rs) => rs.into_iter().map(|r| r.map_err(BootError::from)).collect(),
            Err(_) => refs
                .iter()
                .map(|r| {
                    Err(BootError::new(
                        Category::Unreachable,
                        format!(
                            "{r} did not arrive within the deadline of {}",
                            humantime::format_duration(opts.deadline)
                        ),
                    ))
                })
                .collect(),
        };
    let counts = puller.request_counts().await;
    serial.line(&format!(
        "registry requests: {} manifest HEAD, {} manifest GET, {} token",
        counts.manifest_heads, counts.manifest_gets, counts.token_fetches
    ));

    // 6. Decide, and finish the hand-off.
    let handed = if results.iter().all(Result::is_ok) {
        overlap.finish().await?
    } else {
        overlap.abandon().await;
        let mut fatal: Option<BootError> = None;
        let mut kept = Vec::new();
        for (r, result) in refs.iter().zip(&results) {
            let Err(e) = result else { continue };
            let tolerable = matches!(e.category, Category::Unreachable | Category::RateLimited);
            let names: Vec<&handoff::Wanted> = wanted
                .iter()
                .filter(|w| w.reference == r.to_string())
                .collect();
            let mut present = !names.is_empty();
            for w in &names {
                present &= match &w.name {
                    Some(n) => engine_has(n).await,
                    None => false,
                };
            }
            if tolerable && present {
                serial.line(&format!(
                    "warning: {r}: {} ({}); the engine holds it from an earlier boot: that one is used",
                    e.message,
                    e.category.as_str()
                ));
                kept.push(r.to_string());
            } else {
                serial.line(&format!("{r}: {}: {}", e.category.as_str(), e.message));
                let worse = fatal
                    .as_ref()
                    .is_none_or(|f| rank(e.category) < rank(f.category));
                if worse {
                    fatal = Some(e.clone());
                }
            }
        }
        if let Some(e) = fatal {
            return Err(e);
        }
        // The images that did arrive are handed over now.
        let ok: Vec<&PulledImage> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        let subset: Vec<handoff::Wanted> = wanted
            .iter()
            .filter(|w| ok.iter().any(|p| p.reference == w.reference))
            .cloned()
            .collect();
        let late = handoff::start(store, subset, serial.clone(), pending);
        let watch = late.watch();
        for p in &ok {
            watch.observe(&PullEvent::Resolved {
                image: p.reference.clone(),
                digest: p.digest.clone(),
                cached: true,
            });
        }
        let mut handed = late.finish().await?;
        for k in kept {
            handed.retain(|h| h.reference != k);
        }
        handed
    };
    let mut warnings = 0;
    for i in &listed.images {
        match handed
            .iter()
            .find(|h| h.reference == i.reference.to_string())
        {
            Some(h) => {
                let how = match h.how {
                    Handoff::Present => "already in the engine",
                    Handoff::Tagged => "tagged in the engine",
                    Handoff::Loaded => "loaded into the engine",
                };
                serial.line(&format!(
                    "service {}: {} is {} ({how})",
                    i.service,
                    i.written,
                    &h.image_id[..h.image_id.len().min(19)]
                ));
            }
            None => warnings += 1,
        }
    }
    serial.line(&format!(
        "images ready in {} ms: compose will pull nothing",
        started.elapsed().as_millis()
    ));
    Ok(PrelaunchOutcome::Ready {
        images: refs.len(),
        warnings,
    })
}

/// Whether the engine holds an image under `name`.
async fn engine_has(name: &str) -> bool {
    match bollard::Docker::connect_with_defaults() {
        Ok(d) => d.inspect_image(name).await.is_ok(),
        Err(_) => false,
    }
}

/// Which failure is reported when several images fail: the ones the user
/// must act on first.
fn rank(c: Category) -> u8 {
    match c {
        Category::CredentialsRejected => 0,
        Category::AccessDenied => 1,
        Category::NotFound => 2,
        Category::Integrity => 3,
        Category::Config => 4,
        _ => 5,
    }
}

/// Each reference of the compose file once, under the name compose looks
/// for (as written, interpolated), unless it is pinned by digest.
fn wanted(images: &[contract::ServiceImage]) -> Vec<handoff::Wanted> {
    let mut out: Vec<handoff::Wanted> = Vec::new();
    for i in images {
        let reference = i.reference.to_string();
        let name = i.reference.digest().is_none().then(|| i.written.clone());
        if !out
            .iter()
            .any(|w| w.reference == reference && w.name == name)
        {
            out.push(handoff::Wanted { reference, name });
        }
    }
    out
}

/// Pull progress as lines: resolutions, downloads, retries, rate limits.
fn pull_log(serial: &SerialLog) -> registry::EventSink {
    let serial = serial.clone();
    let seen: Arc<std::sync::Mutex<BTreeMap<String, ()>>> = Arc::default();
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
        PullEvent::BlobDone {
            digest,
            size,
            downloaded,
            elapsed,
        } => serial.line(&format!(
            "pull: {} downloaded {downloaded} of {size} bytes in {} ms",
            &digest.hex()[..12],
            elapsed.as_millis()
        )),
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
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.insert(registry.clone(), ()).is_none() {
                serial.line(&format!("{registry}: {limit}"));
            }
        }
        _ => {}
    })
}
