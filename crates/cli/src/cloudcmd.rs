//! `berth deploy` and `berth cvms …`: the client of the local cloud. What
//! they share with the other API commands is in [`crate::cloudapi`], with
//! `berth deploy --update` in [`crate::deploysteps`].

use crate::cloudapi::{ApiArgs, api_failure, client, trust_failure, trusted_kms_key};
use crate::deploysteps::{DeployArgs, follow_boot, pin, preflight};
use crate::envargs;
use crate::failure::Failure;
use clap::{Args, Subcommand};
use cloud::CvmInfo;
use contract::CvmStatus;
use std::io::Write;

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
    let image_policy = crate::deploysteps::read_image_policy(&args)?
        .map(|p| serde_json::to_value(p).expect("json"));
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
            .provision(
                &name,
                &compose,
                &keys,
                owner_public.as_deref(),
                image_policy.as_ref(),
            )
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
    if c.booting()
        && let Some(waits) = &c.boot_progress
    {
        status.push_str(&format!(": {waits}"));
    }
    if c.status != CvmStatus::Running
        && let Some(cat) = &c.boot_category
    {
        status.push_str(&format!(" ({cat})"));
        // The boot's last serial line repeats the category: say it once.
        if let Some(line) = c.boot_error.as_deref() {
            let msg = match contract::BootOutcome::parse(line) {
                Some(contract::BootOutcome::Failed { category, message })
                    if category.to_string() != *cat =>
                {
                    format!("{category}: {message}")
                }
                Some(contract::BootOutcome::Failed { message, .. }) => message,
                _ => line
                    .strip_prefix(cat.as_str())
                    .and_then(|m| m.strip_prefix(": "))
                    .unwrap_or(line)
                    .to_owned(),
            };
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
    for (i, line) in pinned_images(c).iter().enumerate() {
        let k = if i == 0 { "Images:" } else { "" };
        out.push_str(&format!("{k:<15}{line}\n"));
    }
    out
}

/// Each service's image as deployed, with the digest that pins it (what
/// the compose hash measures), or `not pinned`.
fn pinned_images(c: &CvmInfo) -> Vec<String> {
    let Some(file) = c.compose_file.as_deref().and_then(|yaml| {
        contract::ComposeFile::parse_and_check_for(yaml, contract::Isolation::Container).ok()
    }) else {
        return Vec::new();
    };
    let width = file
        .images
        .iter()
        .map(|i| i.service.chars().count())
        .max()
        .unwrap_or(0);
    file.images
        .iter()
        .map(|i| {
            let pin = match i.reference.digest() {
                Some(d) => d.to_string(),
                None => "not pinned (tag only)".to_owned(),
            };
            let name = i.written.split('@').next().unwrap_or(&i.written);
            format!("{:<width$}  {pin}  ({name})", i.service)
        })
        .collect()
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
