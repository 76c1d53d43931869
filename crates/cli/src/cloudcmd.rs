//! `berth deploy` and `berth cvms …`: the client of the local cloud.

use crate::envargs;
use crate::failure::Failure;
use clap::{Args, Subcommand};
use cloud::{ApiClient, ClientError, CvmInfo};
use contract::CvmStatus;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct ApiArgs {
    /// API base URL (…/api/v1). Default: BERTH_API_URL, else PHALA_CLOUD_API_PREFIX.
    #[arg(long, value_name = "URL")]
    pub(crate) api_url: Option<String>,
}

#[derive(Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// The CVM's name (5 to 63 letters, digits or `-`); not with --update.
    #[arg(short = 'n', long, required_unless_present = "update")]
    pub(crate) name: Option<String>,
    /// Update the CVM ID in place (its id, app id, env key and image cache
    /// stay): boot the new compose file, and the new env if -e is given
    /// (else the current env stays). An owner-authorized app's update is
    /// signed with the owner key.
    #[arg(long, value_name = "ID", conflicts_with = "name")]
    pub(crate) update: Option<String>,
    /// Make a cloud-authorized app: the operator may register new code for
    /// it. By default the app is owner-authorized: only compose files signed
    /// with the owner key (--owner-key) ever get its secrets.
    #[arg(long)]
    pub(crate) cloud_upgrades: bool,
    /// The owner key that signs upgrades (created, mode 0600, if missing).
    /// Default: BERTH_OWNER_KEY, else ~/.config/berth/owner-key.
    #[arg(long, value_name = "FILE")]
    pub(crate) owner_key: Option<PathBuf>,
    /// The Docker Compose file.
    #[arg(short = 'c', long = "compose", value_name = "FILE")]
    pub(crate) compose: PathBuf,
    /// A .env file, `-` for standard input, or KEY=VALUE (repeatable; later
    /// wins). Sealed on this machine. A secret written as KEY=VALUE is in this
    /// command's own arguments, which every local user can read (ps,
    /// /proc/PID/cmdline): put secrets in a file (`-e .env`) or pipe them
    /// (`-e -`).
    #[arg(short = 'e', long = "env", value_name = "FILE|-|KEY=VALUE")]
    pub(crate) env: Vec<String>,
    /// Follow the boot and exit with its category's exit code.
    #[arg(long)]
    pub(crate) wait: bool,
    /// The KMS public key to trust (default: BERTH_KMS_PUBKEY, else the one `berth up` wrote).
    #[arg(long, value_name = "HEX")]
    pub(crate) kms_pubkey: Option<String>,
    /// Deploy the images as written: do not pin each tag to the manifest
    /// digest it names now (by default the compose file is deployed with
    /// `image: name:tag@sha256:…`, so its hash measures exact images).
    #[arg(long)]
    pub(crate) no_pin: bool,
    /// Skip the registry pre-flight (the checks of `berth check`, run here).
    #[arg(long)]
    pub(crate) no_check: bool,
    /// For the pre-flight: reach registry R at URL (repeatable).
    #[arg(long = "registry-endpoint", value_name = "R=URL")]
    pub(crate) registry_endpoint: Vec<String>,
    /// For the pre-flight: trust this CA certificate (repeatable).
    #[arg(long = "ca-cert", value_name = "FILE")]
    pub(crate) ca_cert: Vec<PathBuf>,
}

#[derive(Subcommand)]
pub enum CvmsCommand {
    /// List your CVMs.
    List(ListArgs),
    /// Show one CVM: status (and why a boot failed), app, compose hash, registries.
    Get(IdArgs),
    /// Boot a stopped CVM.
    Start(IdArgs),
    /// Stop a CVM's containers.
    Stop(IdArgs),
    /// Stop and boot again.
    Restart(IdArgs),
    /// Remove a CVM, its containers and its folders.
    Delete(IdArgs),
    /// Print a CVM's logs.
    Logs(LogsArgs),
    /// The app's accepted versions: compose hash, when, who authorized it.
    History(IdArgs),
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Print one JSON object per CVM, one per line (for scripts).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct IdArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The CVM: its id, name or app id.
    id: String,
    /// Print the API's answer as JSON (for scripts).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct LogsArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The CVM: its id, name or app id.
    id: String,
    /// The boot agent's serial console (default).
    #[arg(long, group = "channel")]
    serial: bool,
    /// The app's standard output.
    #[arg(long, group = "channel")]
    stdout: bool,
    /// The app's standard error.
    #[arg(long, group = "channel")]
    stderr: bool,
    /// Keep printing while the CVM boots.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    tail: Option<usize>,
}

pub(crate) fn client(args: &ApiArgs) -> Result<ApiClient, Failure> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let url = args
        .api_url
        .clone()
        .or_else(|| env("BERTH_API_URL"))
        .or_else(|| env("PHALA_CLOUD_API_PREFIX"))
        .ok_or_else(|| {
            Failure::config("no API URL: set BERTH_API_URL (or PHALA_CLOUD_API_PREFIX)")
                .hint("`berth up` prints it, e.g. http://127.0.0.1:8000/api/v1")
        })?;
    let key = env("BERTH_API_KEY")
        .or_else(|| env("PHALA_CLOUD_API_KEY"))
        .ok_or_else(|| {
            Failure::config("no API key: set BERTH_API_KEY (or PHALA_CLOUD_API_KEY)")
                .hint("`berth up` prints the admin key")
        })?;
    Ok(ApiClient::new(&url, &key))
}

pub(crate) fn api_failure(e: ClientError) -> Failure {
    let code = if e.is_client_error() { 2 } else { 1 };
    Failure {
        message: e.to_string(),
        hint: None,
        code,
    }
}

/// The KMS key the client trusts.
pub(crate) fn trusted_kms_key(arg: Option<&str>) -> Result<kms::KmsPublicKey, Failure> {
    let text = arg
        .map(str::to_owned)
        .or_else(|| std::env::var("BERTH_KMS_PUBKEY").ok().filter(|v| !v.is_empty()))
        .or_else(|| {
            std::fs::read_to_string(crate::upcmd::default_state().join("kms-public-key"))
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .ok_or_else(|| {
            Failure::config("no trusted KMS public key: pass --kms-pubkey or set BERTH_KMS_PUBKEY")
                .hint("`berth up` prints the KMS public key; Berth checks the env key's signature against it before sealing anything")
        })?;
    kms::KmsPublicKey::from_hex(&text)
        .map_err(|e| Failure::config(format!("the trusted KMS public key: {e}")))
}

/// Why `berth deploy` sealed nothing, in its own terms.
pub(crate) fn trust_failure(e: kms::trust::TrustError) -> Failure {
    use kms::trust::TrustError;
    match e {
        TrustError::Unsigned => Failure::config(
            "the API returned the env public key without a KMS signature; refusing to seal",
        )
        .hint("is this a Berth server? the official Phala Cloud does not sign keys of its default KMS"),
        e if e.is_verification_failure() => Failure::config(format!(
            "the env public key is not signed by the trusted KMS: {e}"
        ))
        .hint("nothing was sealed or sent; check --kms-pubkey / BERTH_KMS_PUBKEY against `berth up`'s output"),
        e => Failure::config(format!("the API's answer cannot be sealed to: {e}"))
            .hint("nothing was sealed or sent"),
    }
}

pub fn deploy(args: DeployArgs) -> Result<(), Failure> {
    if args.env.iter().any(|a| {
        a != "-"
            && !std::path::Path::new(a).is_file()
            && a.split_once('=')
                .is_some_and(|(k, _)| k.starts_with("DSTACK_"))
    }) {
        eprintln!(
            "note: -e KEY=VALUE puts the credential in this command's arguments, which other local users can read; prefer -e FILE or -e -"
        );
    }
    if let Some(id) = args.update.clone() {
        return crate::updatecmd::update(args, &id);
    }
    let name = args.name.clone().unwrap_or_default();
    let api = client(&args.api)?;
    let compose = std::fs::read_to_string(&args.compose)
        .map_err(|e| Failure::io(format!("cannot read {}", args.compose.display()), &e))?;
    let env = envargs::load(&args.env)?;
    let keys: Vec<String> = env.keys().map(str::to_owned).collect();
    let trusted = trusted_kms_key(args.kms_pubkey.as_deref())?;
    if !args.no_check && keys.iter().any(|k| k.starts_with("DSTACK_")) {
        preflight(&args, &env, &compose)?;
    }
    let compose = pin(&args, &env, &compose, None)?;
    let owner = if args.cloud_upgrades {
        None
    } else {
        Some(crate::updatecmd::owner_key(args.owner_key.as_deref())?)
    };
    let rt = crate::runtime();
    rt.block_on(async {
        eprintln!("Provisioning {name}…");
        let owner_public = owner.as_ref().map(|o| o.public_hex());
        let p = api
            .provision(&name, &compose, &keys, owner_public.as_deref())
            .await
            .map_err(api_failure)?;
        // A control plane must not be able to swap in a key of its own.
        let offer = kms::trust::EnvKeyOffer {
            app_id: &p.app_id,
            env_pubkey: &p.env_pubkey,
            signature: p.signature.as_deref(),
            signature_v1: p.signature_v1.as_deref(),
            timestamp: p.timestamp,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let sealed = kms::trust::seal_env(&offer, &trusted, &env, now).map_err(trust_failure)?;
        eprintln!("Env public key verified against KMS {}", trusted.to_hex());
        let sealed = sealed.map(|s| s.to_hex());
        let cvm = api
            .commit(&p.app_id, &p.compose_hash, sealed.as_deref(), &keys)
            .await
            .map_err(api_failure)?;
        println!("CVM ID: {}", cvm.id);
        println!("Name:   {}", cvm.name);
        println!("App ID: {}", cvm.app_id);
        println!("Status: {}", cvm.status);
        println!(
            "Upgrades: {}",
            match &owner_public {
                Some(_) => "owner-authorized (only compose files signed with your owner key get the app's secrets)",
                None => "cloud-authorized (the operator may register new code for this app)",
            }
        );
        if args.wait {
            follow_boot(&api, &cvm.id).await
        } else {
            Ok(())
        }
    })
}

/// `berth check` on the compose file's images with the env's credentials,
/// in this process: the env was read once (`-e -` consumed standard input)
/// and no value goes on another process's command line.
pub(crate) fn preflight(
    args: &DeployArgs,
    env: &envseal::Env,
    compose: &str,
) -> Result<(), Failure> {
    // The cloud checks the file with its own rules (they depend on how it
    // isolates CVMs); here, only the images matter, under the widest rules.
    let images = cloud::appcompose::images(compose, contract::Isolation::Container)
        .map_err(|e| Failure::config(e.message))?;
    if images.is_empty() {
        return Ok(());
    }
    eprintln!(
        "Pre-flight: checking {} image{} with the credentials in the env (HEAD only)…",
        images.len(),
        if images.len() == 1 { "" } else { "s" }
    );
    crate::pullcmd::preflight(env, &args.registry_endpoint, &args.ca_cert, &images).map_err(|e| {
        Failure {
            message: format!(
                "the pre-flight check failed: {} [{}]; nothing was deployed",
                e.message, e.category
            ),
            hint: Some(format!(
                "{}; or pass --no-check to deploy anyway",
                crate::failure::pull_hint(&e.hint).trim_end_matches('.')
            )),
            code: crate::failure::exit_code(e.category),
        }
    })
}

/// The compose file with every tag pinned to the manifest digest it names
/// now (HEAD requests with the env's credentials), and one line per service
/// saying what was pinned. With `current` (an update), each line also says
/// whether the digest changed from the CVM's current compose file. An image
/// whose digest cannot be learnt is deployed as written, with a warning.
pub(crate) fn pin(
    args: &DeployArgs,
    env: &envseal::Env,
    compose: &str,
    current: Option<&str>,
) -> Result<String, Failure> {
    use contract::policy::ComposeFile;
    use std::collections::BTreeMap;
    if args.no_pin {
        return Ok(compose.to_owned());
    }
    let file = ComposeFile::parse(compose).map_err(|e| Failure::config(e.message))?;
    let mut to_resolve: Vec<(String, registry::ImageReference)> = Vec::new();
    for i in &file.images {
        if i.reference.digest().is_none() && !to_resolve.iter().any(|(w, _)| *w == i.written) {
            to_resolve.push((i.written.clone(), i.reference.clone()));
        }
    }
    let mut digests: BTreeMap<String, String> = BTreeMap::new();
    if !to_resolve.is_empty() {
        let refs: Vec<_> = to_resolve.iter().map(|(_, r)| r.clone()).collect();
        let results =
            crate::pullcmd::resolve_digests(env, &args.registry_endpoint, &args.ca_cert, &refs)
                .map_err(|e| Failure::config(format!("cannot pin the images: {}", e.message)))?;
        for ((written, _), r) in to_resolve.iter().zip(results) {
            match r {
                Ok(d) => {
                    digests.insert(written.clone(), d.to_string());
                }
                Err(e) => eprintln!(
                    "warning: {written} is not pinned ({}: {}): each boot runs whatever its tag names then; pass --no-pin to deploy unpinned on purpose",
                    e.category, e.message
                ),
            }
        }
    }
    let pins: BTreeMap<String, String> = digests
        .iter()
        .map(|(w, d)| (w.clone(), format!("{w}@{d}")))
        .collect();
    let pinned = contract::policy::pin_images(compose, &pins)
        .map_err(|e| Failure::config(format!("cannot pin the images: {}", e.message)))?;
    if pinned.rerendered {
        eprintln!(
            "note: the compose file was re-rendered to pin its images (comments and layout are not kept)"
        );
    }
    let before: BTreeMap<String, Option<String>> = current
        .and_then(|c| ComposeFile::parse(c).ok())
        .map(|f| {
            f.images
                .into_iter()
                .map(|i| (i.service, i.reference.digest().map(|d| d.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let width = file
        .images
        .iter()
        .map(|i| i.service.len())
        .max()
        .unwrap_or(0);
    let mut changed = 0;
    println!("Pinned images:");
    for i in &file.images {
        let service = i.service.escape_debug().to_string();
        let digest = i
            .reference
            .digest()
            .map(|d| d.to_string())
            .or_else(|| digests.get(&i.written).cloned());
        let Some(digest) = digest else {
            println!("{service:width$}  {}  (not pinned)", i.written);
            continue;
        };
        let shown = i.written.split('@').next().unwrap_or(&i.written);
        let note = match current.map(|_| before.get(&i.service)) {
            None => String::new(),
            Some(Some(Some(old))) if *old == digest => "  (unchanged)".to_owned(),
            Some(Some(Some(old))) => {
                changed += 1;
                format!("  (changed, was {old})")
            }
            Some(_) => {
                changed += 1;
                "  (changed, was not pinned)".to_owned()
            }
        };
        println!("{service:width$}  {shown} -> {digest}{note}");
    }
    if current.is_some() {
        match changed {
            0 => println!("No pinned digest changed."),
            n => println!(
                "{n} pinned digest{} changed.",
                if n == 1 { "" } else { "s" }
            ),
        }
    }
    Ok(pinned.yaml)
}

/// Prints the serial log as the CVM boots; exits with the boot's category.
pub(crate) async fn follow_boot(api: &ApiClient, id: &str) -> Result<(), Failure> {
    let started = Instant::now();
    let mut printed = 0usize;
    loop {
        let cvm = api.get(id).await.map_err(api_failure)?;
        if let Ok(resp) = api.logs(&cvm, "serial", None, false).await
            && let Ok(text) = resp.text().await
        {
            let lines: Vec<&str> = text.lines().collect();
            for l in lines.iter().skip(printed) {
                println!("{l}");
            }
            printed = printed.max(lines.len());
        }
        if !cvm.booting() {
            let _ = std::io::stdout().flush();
            return match cvm.status {
                CvmStatus::Running => Ok(()),
                _ => {
                    let category = cvm
                        .boot_category
                        .clone()
                        .unwrap_or_else(|| "runtime".into());
                    let code = category_code(&category);
                    Err(Failure {
                        message: format!(
                            "the CVM did not boot ({}): {}",
                            cvm.status,
                            cvm.boot_error.unwrap_or_default()
                        ),
                        hint: Some(format!("berth cvms logs {id} --serial")),
                        code,
                    })
                }
            };
        }
        if started.elapsed() > Duration::from_secs(30 * 60) {
            return Err(Failure::config(
                "gave up waiting for the boot after 30 minutes",
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn category_code(category: &str) -> u8 {
    category
        .parse::<contract::Category>()
        .map(crate::failure::exit_code)
        .unwrap_or(1)
}

/// The registries a CVM's images come from, in the order of its compose file.
fn registries(c: &CvmInfo) -> Vec<String> {
    let images = c
        .compose_file
        .as_deref()
        .and_then(|yaml| cloud::appcompose::images(yaml, contract::Isolation::Container).ok())
        .unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    for image in images {
        if let Ok(r) = contract::reference::ImageReference::parse(&image)
            && !out.iter().any(|x| x == r.registry())
        {
            out.push(r.registry().to_owned());
        }
    }
    out
}

/// `2026-05-01T12:00:00Z` as `2026-05-01 12:00:00 UTC`.
fn when(rfc3339: &str) -> String {
    match rfc3339.strip_suffix('Z') {
        Some(t) => format!("{} UTC", t.replacen('T', " ", 1)),
        None => rfc3339.replacen('T', " ", 1),
    }
}

/// The status, with the boot's category when it failed.
fn status_cell(c: &CvmInfo) -> String {
    match &c.boot_category {
        Some(cat) if c.status != CvmStatus::Running => format!("{} ({cat})", c.status),
        _ => c.status.to_string(),
    }
}

/// One JSON object per CVM for `berth cvms list --json`, with stable names.
fn list_json(c: &CvmInfo) -> serde_json::Value {
    serde_json::json!({
        "id": c.id, "name": c.name, "status": c.status, "app_id": c.app_id,
        "compose_hash": c.compose_hash, "registries": registries(c),
        "boot_category": c.boot_category, "boot_error": c.boot_error, "created_at": c.created_at,
    })
}

/// The table of `berth cvms list`: a header row, then one row per CVM.
fn list_table(cvms: &[CvmInfo]) -> String {
    let header = ["NAME", "STATUS", "APP ID", "CREATED", "ID"];
    let rows: Vec<[String; 5]> = cvms
        .iter()
        .map(|c| {
            [
                c.name.clone(),
                status_cell(c),
                format!("app_{}", c.app_id),
                when(&c.created_at),
                c.id.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}   "));
            }
        }
        l.push('\n');
        l
    };
    let mut out = line(header);
    for row in &rows {
        out.push_str(&line(row.each_ref().map(String::as_str)));
    }
    out
}

/// The view of `berth cvms get` (and of start/stop/restart).
fn detail(c: &CvmInfo) -> String {
    let none = "-".to_string();
    let mut status = c.status.to_string();
    if c.status != CvmStatus::Running
        && let Some(cat) = &c.boot_category
    {
        status.push_str(&format!(" ({cat})"));
        // The boot's last serial line repeats the category: say it once.
        if let Some(msg) = c.boot_error.as_deref() {
            let msg = msg.strip_prefix("BOOT FAILED: ").unwrap_or(msg);
            let msg = msg
                .strip_prefix(cat.as_str())
                .and_then(|m| m.strip_prefix(": "))
                .unwrap_or(msg);
            if !msg.is_empty() {
                status.push_str(&format!(": {msg}"));
            }
        }
    }
    let regs = registries(c);
    let fields = [
        ("Name", c.name.clone()),
        ("ID", c.id.clone()),
        ("Status", status),
        ("App ID", format!("app_{}", c.app_id)),
        (
            "Compose hash",
            c.compose_hash.clone().unwrap_or_else(|| none.clone()),
        ),
        (
            "Upgrades",
            match c.raw["upgrade_authority"].as_str() {
                Some("owner") => {
                    "owner-authorized (only the owner key can register new code)".into()
                }
                Some("cloud") => "cloud-authorized (the operator can register new code)".into(),
                _ => none.clone(),
            },
        ),
        ("Created", when(&c.created_at)),
        (
            "Registries",
            if regs.is_empty() {
                none.clone()
            } else {
                regs.join(", ")
            },
        ),
        (
            "Boot category",
            c.boot_category.clone().unwrap_or_else(|| {
                if c.status == CvmStatus::Running {
                    "ok".into()
                } else {
                    none.clone()
                }
            }),
        ),
    ];
    let mut out = String::new();
    for (k, v) in fields {
        out.push_str(&format!("{:<15}{v}\n", format!("{k}:")));
    }
    out
}

fn print_one(c: &CvmInfo, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&c.raw).unwrap_or_default()
        );
    } else {
        print!("{}", detail(c));
    }
}

pub fn cvms(cmd: CvmsCommand) -> Result<(), Failure> {
    let cmd = match cmd {
        CvmsCommand::Start(a) => return action(a, "start"),
        CvmsCommand::Stop(a) => return action(a, "stop"),
        CvmsCommand::Restart(a) => return action(a, "restart"),
        other => other,
    };
    let rt = crate::runtime();
    rt.block_on(async {
        match cmd {
            CvmsCommand::List(a) => {
                let api = client(&a.api)?;
                let cvms = api.list().await.map_err(api_failure)?;
                if a.json {
                    for c in &cvms {
                        println!("{}", list_json(c));
                    }
                } else {
                    print!("{}", list_table(&cvms));
                }
                Ok(())
            }
            CvmsCommand::Get(a) => {
                let c = client(&a.api)?.get(&a.id).await.map_err(api_failure)?;
                print_one(&c, a.json);
                Ok(())
            }
            CvmsCommand::History(a) => {
                let h = client(&a.api)?.history(&a.id).await.map_err(api_failure)?;
                if a.json {
                    println!("{}", serde_json::to_string_pretty(&h).unwrap_or_default());
                } else {
                    print!("{}", crate::updatecmd::history_table(&h));
                }
                Ok(())
            }
            CvmsCommand::Start(_) | CvmsCommand::Stop(_) | CvmsCommand::Restart(_) => Ok(()),
            CvmsCommand::Delete(a) => {
                client(&a.api)?.delete(&a.id).await.map_err(api_failure)?;
                println!("deleted {}", a.id);
                Ok(())
            }
            CvmsCommand::Logs(a) => {
                let api = client(&a.api)?;
                let cvm = api.get(&a.id).await.map_err(api_failure)?;
                let ch = if a.stdout {
                    "stdout"
                } else if a.stderr {
                    "stderr"
                } else {
                    "serial"
                };
                let mut resp = api
                    .logs(&cvm, ch, a.tail, a.follow)
                    .await
                    .map_err(api_failure)?;
                let mut out = std::io::stdout();
                while let Ok(Some(chunk)) = resp.chunk().await {
                    let _ = out.write_all(&chunk);
                    let _ = out.flush();
                }
                Ok(())
            }
        }
    })
}

/// `berth cvms start|stop|restart`.
pub fn action(a: IdArgs, action: &str) -> Result<(), Failure> {
    crate::runtime().block_on(async {
        let c = client(&a.api)?
            .action(&a.id, action)
            .await
            .map_err(api_failure)?;
        print_one(&c, a.json);
        Ok(())
    })
}
