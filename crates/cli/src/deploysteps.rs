//! The steps `berth deploy` and `berth deploy --update` share: their flags
//! ([`DeployArgs`]), the registry pre-flight, pinning each image to its
//! digest, and following the boot. Kept apart from both commands so that
//! neither imports the other back.

use crate::cloudapi::{ApiArgs, api_failure};
use crate::failure::Failure;
use clap::Args;
use cloud::ApiClient;
use contract::CvmStatus;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
    /// The app's image policy (JSON: `require_digests`, and cosign public
    /// keys per registry or repository prefix), measured in its manifest.
    /// With --update: the new policy (without it, the current one is kept).
    #[arg(long, value_name = "FILE")]
    pub(crate) image_policy: Option<PathBuf>,
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

/// The image policy of --image-policy, read and checked (a malformed one
/// is refused here with the sentence saying what is wrong).
pub(crate) fn read_image_policy(
    args: &DeployArgs,
) -> Result<Option<contract::ImagePolicy>, Failure> {
    let Some(path) = &args.image_policy else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::io(format!("cannot read {}", path.display()), &e))?;
    let policy = contract::ImagePolicy::parse(&text).map_err(|e| {
        Failure::config(format!("{}: {e}", path.display())).hint(
            "write {\"require_digests\": true, \"signatures\": [{\"scope\": \"ghcr.io/acme\", \"keys\": [\"<cosign.pub>\"]}]}",
        )
    })?;
    eprintln!("Image policy: {}", policy.describe());
    Ok(Some(policy))
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
    // Read as the container isolation mode reads it (the server applies
    // the node's own rules): a service that builds has nothing to pin.
    let file = ComposeFile::parse_for(compose, contract::Isolation::Container)
        .map_err(|e| Failure::config(e.message))?;
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
        .and_then(|c| ComposeFile::parse_for(c, contract::Isolation::Container).ok())
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
    let mut waits: Option<String> = None;
    loop {
        let cvm = api.get(id).await.map_err(api_failure)?;
        // The node's boot queue: its position, each time it changes.
        if cvm.booting() && cvm.boot_progress != waits {
            if let Some(w) = &cvm.boot_progress {
                eprintln!("{w}");
            }
            waits = cvm.boot_progress.clone();
        }
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
