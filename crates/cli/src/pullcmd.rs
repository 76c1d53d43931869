//! `berth pull` and `berth check`: the pull engine on a user's machine.

use crate::envargs;
use crate::failure::Failure;
use clap::Args;
use envseal::{Env, SecretValue};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use registry::docker_config::DockerConfig;
use registry::{
    CredentialSet, Endpoints, ImageReference, Platform, PullError, PullEvent, PullOptions, Puller,
};
use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Options shared by `pull` and `check`: where credentials and registries come from.
#[derive(Args)]
pub struct RegistryArgs {
    /// A .env file or KEY=VALUE with DSTACK_* registry credentials (repeatable;
    /// later wins; these override the same variables in the process environment).
    #[arg(short = 'e', long = "env", value_name = "FILE|KEY=VALUE")]
    env: Vec<String>,
    /// Reach registry R at URL instead (a mirror, cache or test server); credentials stay R's.
    #[arg(long = "registry-endpoint", value_name = "R=URL")]
    registry_endpoint: Vec<String>,
    /// Trust this CA certificate (PEM) in addition to the system roots (repeatable).
    #[arg(long = "ca-cert", value_name = "FILE")]
    ca_cert: Vec<PathBuf>,
    /// A JSON config file with "registry_endpoints" {R: URL} and "ca_certs" [FILE, ...].
    #[arg(long, value_name = "FILE", env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Print one JSON object on stdout instead of progress.
    #[arg(long)]
    json: bool,
    /// Longest time one request may spend retrying transient failures.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    max_retry_time: u64,
}

#[derive(Args)]
pub struct PullArgs {
    #[command(flatten)]
    registry: RegistryArgs,
    /// The OCI layout directory to pull into.
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Platform to pull from multi-platform images (os/arch[/variant]); default: this machine's.
    #[arg(long, value_name = "P")]
    platform: Option<String>,
    /// Most blob downloads at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// Images to pull (Docker reference syntax).
    #[arg(value_name = "IMAGE", required = true)]
    images: Vec<String>,
}

#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    registry: RegistryArgs,
    /// Images to check (Docker reference syntax).
    #[arg(value_name = "IMAGE", required = true)]
    images: Vec<String>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    registry_endpoints: BTreeMap<String, String>,
    #[serde(default)]
    ca_certs: Vec<PathBuf>,
}

fn pull_failure(e: PullError, json: bool) -> Failure {
    if json {
        let obj = serde_json::json!({"error": {
            "category": e.category.as_str(),
            "registry": e.registry,
            "image": e.image,
            "message": e.message,
            "hint": crate::failure::pull_hint(&e.hint),
        }});
        println!("{obj}");
        return Failure::silent(crate::failure::exit_code(e.category));
    }
    Failure {
        message: format!("{} [{}]", e.message, e.category),
        hint: Some(crate::failure::pull_hint(&e.hint)),
        code: crate::failure::exit_code(e.category),
    }
}

/// The pull options that `pull` and `check` share, from arguments, the
/// process environment and the config file.
fn options(args: &RegistryArgs, store: PathBuf) -> Result<PullOptions, PullError> {
    let env = envargs::load(&args.env).map_err(|f| PullError::config(f.message))?;
    options_with_env(args, store, &env)
}

/// [`options`] with the `-e` env already loaded (by `berth deploy`, whose
/// standard input can be read only once).
fn options_with_env(
    args: &RegistryArgs,
    store: PathBuf,
    env: &Env,
) -> Result<PullOptions, PullError> {
    let mut opts = PullOptions::new(store);
    opts.retry.budget = std::time::Duration::from_secs(args.max_retry_time);
    // Credentials: DSTACK_* from the process environment, overridden by -e.
    let mut vars: BTreeMap<String, SecretValue> = std::env::vars()
        .filter(|(k, _)| k.starts_with("DSTACK_") || k.starts_with("AWS_ENDPOINT_URL"))
        .map(|(k, v)| (k, SecretValue::new(v)))
        .collect();
    for v in env.vars() {
        vars.insert(v.key.clone(), v.value.clone());
    }
    opts.credentials = CredentialSet::from_env(&vars).map_err(|e| {
        PullError::config(e.to_string())
            .hint("set all the variables of one login (see README.md, \"Registry credentials\")")
    })?;
    opts.ecr_endpoint =
        registry::ecr::endpoint_override(|k| vars.get(k).map(|v| v.expose().to_owned()))?;
    if let Some(dir) = DockerConfig::default_dir()
        && dir.join("config.json").is_file()
    {
        match DockerConfig::load(&dir) {
            Ok(cfg) => opts.docker_config = Some(cfg),
            Err(e) => eprintln!("warning: ignoring the Docker client's config: {e}"),
        }
    }
    let mut endpoints = Endpoints::new();
    let mut ca_files = args.ca_cert.clone();
    if let Some(path) = &args.config {
        let text = std::fs::read(path).map_err(|e| {
            PullError::config(format!(
                "cannot read the config file {}: {e}",
                path.display()
            ))
        })?;
        let cfg: ConfigFile = serde_json::from_slice(&text).map_err(|e| {
            PullError::config(format!(
                "the config file {} is not valid (line {}, column {})",
                path.display(),
                e.line(),
                e.column()
            ))
            .hint("expected {\"registry_endpoints\": {\"REGISTRY\": \"URL\"}, \"ca_certs\": [\"FILE\"]}")
        })?;
        for (name, url) in &cfg.registry_endpoints {
            endpoints.insert(name, url)?;
        }
        ca_files.extend(cfg.ca_certs);
    }
    for m in &args.registry_endpoint {
        endpoints.add_mapping(m)?;
    }
    opts.endpoints = endpoints;
    for f in ca_files {
        let pem = std::fs::read(&f).map_err(|e| {
            PullError::config(format!(
                "cannot read the CA certificate {}: {e}",
                f.display()
            ))
        })?;
        opts.ca_certs_pem.push(pem);
    }
    Ok(opts)
}

fn parse_refs(images: &[String]) -> Result<Vec<ImageReference>, PullError> {
    images
        .iter()
        .map(|i| {
            ImageReference::parse(i).map_err(|e| {
                PullError::config(e.to_string()).hint(
                    "use the Docker reference syntax: [REGISTRY/]REPOSITORY[:TAG][@sha256:DIGEST]",
                )
            })
        })
        .collect()
}

pub fn pull(args: PullArgs) -> Result<(), Failure> {
    let json = args.registry.json;
    run_pull(args).map_err(|e| pull_failure(e, json))
}

fn run_pull(args: PullArgs) -> Result<(), PullError> {
    let refs = parse_refs(&args.images)?;
    let store = args
        .store
        .unwrap_or_else(|| crate::data_dir().join("store"));
    let mut opts = options(&args.registry, store)?;
    if let Some(p) = &args.platform {
        opts.platform = Platform::parse(p)?;
    }
    opts.jobs = args.jobs as usize;
    let progress = if args.registry.json {
        Progress::Quiet
    } else if std::io::stderr().is_terminal() {
        Progress::bars()
    } else {
        Progress::Lines
    };
    let started = Instant::now();
    let puller = Puller::new(opts, progress.sink())?;
    let rt = crate::runtime();
    let result = rt.block_on(puller.pull_all(&refs));
    let limits = rt.block_on(puller.rate_limits());
    progress.finish();
    let images = result?;
    if args.registry.json {
        let out = serde_json::json!({
            "images": images,
            "rate_limits": limits.iter().map(|(r, l)| serde_json::json!({
                "registry": r, "limit": l.limit, "remaining": l.remaining, "window_secs": l.window_secs,
            })).collect::<Vec<_>>(),
        });
        println!("{out}");
    } else {
        for img in &images {
            println!(
                "{}@{}: {} layers, {} downloaded, {} reused",
                img.reference,
                img.digest,
                img.layers,
                human_bytes(img.bytes_downloaded),
                human_bytes(img.bytes_reused)
            );
        }
        for (r, l) in &limits {
            println!("{r}: {l}");
        }
        eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}

pub fn check(args: CheckArgs) -> Result<(), Failure> {
    let json = args.registry.json;
    run_check(args).map_err(|e| pull_failure(e, json))
}

fn run_check(args: CheckArgs) -> Result<(), PullError> {
    let refs = parse_refs(&args.images)?;
    // Nothing is written: the store is a throwaway directory.
    let scratch = scratch_store();
    let opts = options(&args.registry, scratch.clone())?;
    check_refs(opts, &refs, args.registry.json, &mut std::io::stdout())
}

/// `berth check` as a function, for `berth deploy`'s pre-flight: the same
/// checks in this process, with the env the caller already loaded (so
/// `-e -` is read once, and no value is put on another process's command
/// line). Progress rows go to standard error.
pub fn preflight(
    env: &Env,
    registry_endpoint: &[String],
    ca_cert: &[PathBuf],
    images: &[String],
) -> Result<(), PullError> {
    let refs = parse_refs(images)?;
    let args = RegistryArgs {
        env: Vec::new(),
        registry_endpoint: registry_endpoint.to_vec(),
        ca_cert: ca_cert.to_vec(),
        config: std::env::var_os("BERTH_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
        json: false,
        max_retry_time: 120,
    };
    let opts = options_with_env(&args, scratch_store(), env)?;
    check_refs(opts, &refs, false, &mut std::io::stderr())
}

/// The manifest digest each image's tag names now, from HEAD requests with
/// the env's credentials (and the Docker client's logins): for `berth
/// deploy` to pin. One result per image, in order.
pub fn resolve_digests(
    env: &Env,
    registry_endpoint: &[String],
    ca_cert: &[PathBuf],
    refs: &[ImageReference],
) -> Result<Vec<Result<registry::Digest, PullError>>, PullError> {
    let args = RegistryArgs {
        env: Vec::new(),
        registry_endpoint: registry_endpoint.to_vec(),
        ca_cert: ca_cert.to_vec(),
        config: std::env::var_os("BERTH_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
        json: false,
        max_retry_time: 60,
    };
    let opts = options_with_env(&args, scratch_store(), env)?;
    let scratch = opts.store.clone();
    let puller = Puller::new(opts, registry::no_events())?;
    let results = crate::runtime().block_on(futures_join(&puller, refs));
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(results
        .into_iter()
        .zip(refs)
        .map(|(r, reference)| {
            r.and_then(|c| {
                c.digest.ok_or_else(|| {
                    PullError::new(
                        registry::Category::RegistryError,
                        format!("{} did not report the digest of {reference}", c.registry),
                    )
                })
            })
        })
        .collect())
}

fn scratch_store() -> PathBuf {
    std::env::temp_dir().join(format!("berth-check-{}", std::process::id()))
}

fn check_refs(
    opts: PullOptions,
    refs: &[ImageReference],
    json: bool,
    out: &mut dyn Write,
) -> Result<(), PullError> {
    let scratch = opts.store.clone();
    let puller = Puller::new(opts, registry::no_events())?;
    let rt = crate::runtime();
    let results: Vec<_> = rt.block_on(futures_join(&puller, refs));
    let limits = rt.block_on(puller.rate_limits());
    let _ = std::fs::remove_dir_all(&scratch);
    let mut first_err = None;
    let mut rows = Vec::new();
    for (r, res) in refs.iter().zip(results) {
        match res {
            Ok(c) => {
                if !json {
                    let _ = writeln!(
                        out,
                        "ok      {}  {}  ({})",
                        c.reference,
                        c.digest
                            .as_ref()
                            .map(|d| d.to_string())
                            .unwrap_or_else(|| "digest not reported".into()),
                        c.auth
                    );
                }
                rows.push(serde_json::json!({"image": c.reference, "ok": true, "digest": c.digest, "auth": c.auth}));
            }
            Err(e) => {
                if !json {
                    let _ = writeln!(out, "FAILED  {r}  {}: {}", e.category, e.message);
                }
                rows.push(serde_json::json!({"image": r.to_string(), "ok": false, "category": e.category.as_str(), "message": e.message}));
                first_err.get_or_insert(e);
            }
        }
    }
    if !json {
        for (r, l) in &limits {
            let _ = writeln!(out, "{r}: {l}");
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => {
            if json {
                let obj = serde_json::json!({
                    "images": rows,
                    "rate_limits": limits.iter().map(|(r, l)| serde_json::json!({
                        "registry": r, "limit": l.limit, "remaining": l.remaining, "window_secs": l.window_secs,
                    })).collect::<Vec<_>>(),
                });
                let _ = writeln!(out, "{obj}");
            }
            Ok(())
        }
    }
}

/// Checks every image at once (the puller shares one client per registry,
/// with one token fetch in flight); the results in the order of `refs`.
async fn futures_join(
    puller: &Puller,
    refs: &[ImageReference],
) -> Vec<Result<registry::CheckedImage, PullError>> {
    futures_util::future::join_all(refs.iter().map(|r| puller.check(r))).await
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn short(d: &registry::Digest) -> String {
    d.hex()[..12].to_owned()
}

/// How progress is shown: docker-like bars on a terminal, plain lines
/// otherwise, nothing with `--json`.
enum Progress {
    Quiet,
    Lines,
    Bars(Arc<(MultiProgress, Mutex<HashMap<registry::Digest, ProgressBar>>)>),
}

impl Progress {
    fn bars() -> Self {
        Progress::Bars(Arc::new((MultiProgress::new(), Mutex::new(HashMap::new()))))
    }

    fn sink(&self) -> registry::EventSink {
        match self {
            Progress::Quiet => registry::no_events(),
            Progress::Lines => Arc::new(plain_line),
            Progress::Bars(state) => {
                let state = state.clone();
                Arc::new(move |e: &PullEvent| bar_event(e, &state.0, &state.1))
            }
        }
    }

    fn finish(&self) {
        if let Progress::Bars(state) = self {
            for bar in state.1.lock().unwrap().values() {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
        }
    }
}

fn plain_line(e: &PullEvent) {
    match e {
        PullEvent::Resolved {
            image,
            digest,
            cached,
        } => {
            eprintln!(
                "{image}: resolved to {digest}{}",
                if *cached { " (manifest in store)" } else { "" }
            )
        }
        PullEvent::BlobQueued {
            digest,
            size,
            cached,
            ..
        } => {
            if *cached {
                eprintln!("{}: already exists ({})", short(digest), human_bytes(*size));
            } else {
                eprintln!("{}: downloading {}", short(digest), human_bytes(*size));
            }
        }
        PullEvent::BlobProgress { .. } => {}
        PullEvent::BlobDone {
            digest,
            size,
            downloaded,
            elapsed,
        } => {
            let secs = elapsed.as_secs_f64();
            let resumed = if downloaded < size {
                format!(", {} resumed", human_bytes(size - downloaded))
            } else {
                String::new()
            };
            eprintln!(
                "{}: pull complete ({} in {secs:.1} s{resumed})",
                short(digest),
                human_bytes(*size)
            );
        }
        PullEvent::Retrying {
            registry,
            what,
            attempt,
            delay,
            reason,
        } => {
            eprintln!(
                "{registry}: {what}: {reason}; attempt {attempt} in {:.1} s",
                delay.as_secs_f64()
            )
        }
        PullEvent::RateLimit { registry, limit } => eprintln!("{registry}: {limit}"),
        PullEvent::Done { image, digest } => eprintln!("{image}: pulled {digest}"),
    }
}

fn bar_event(
    e: &PullEvent,
    multi: &MultiProgress,
    bars: &Mutex<HashMap<registry::Digest, ProgressBar>>,
) {
    let style = ProgressStyle::with_template(
        "{prefix}: {msg:<14} [{bar:30}] {decimal_bytes}/{decimal_total_bytes}",
    )
    .expect("static template")
    .progress_chars("=> ");
    match e {
        PullEvent::BlobQueued {
            digest,
            size,
            cached,
            ..
        } => {
            let mut bars = bars.lock().unwrap();
            if bars.contains_key(digest) {
                return;
            }
            let bar = multi.add(ProgressBar::new(*size));
            bar.set_style(style);
            bar.set_prefix(short(digest));
            if *cached {
                bar.set_position(*size);
                bar.finish_with_message("Already exists");
            } else {
                bar.set_message("Waiting");
            }
            bars.insert(digest.clone(), bar);
        }
        PullEvent::BlobProgress { digest, done, .. } => {
            if let Some(bar) = bars.lock().unwrap().get(digest) {
                bar.set_message("Downloading");
                bar.set_position(*done);
            }
        }
        PullEvent::BlobDone { digest, size, .. } => {
            if let Some(bar) = bars.lock().unwrap().get(digest) {
                bar.set_position(*size);
                bar.finish_with_message("Pull complete");
            }
        }
        PullEvent::Resolved { image, digest, .. } => {
            let _ = multi.println(format!("{image}: resolved to {digest}"));
        }
        PullEvent::Retrying {
            registry,
            what,
            attempt,
            delay,
            reason,
        } => {
            let _ = multi.println(format!(
                "{registry}: {what}: {reason}; attempt {attempt} in {:.1} s",
                delay.as_secs_f64()
            ));
        }
        PullEvent::RateLimit { registry, limit } => {
            let _ = multi.println(format!("{registry}: {limit}"));
        }
        PullEvent::Done { image, digest } => {
            let _ = multi.println(format!("{image}: pulled {digest}"));
        }
    }
}
