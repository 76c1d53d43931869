//! `berth deploy --update ID`: a new compose file (and optionally a new
//! env) for a running app, in place; the owner key that authorizes it; and
//! `berth cvms history`.
//!
//! The owner signs only a manifest it has read: the server's prepared
//! manifest must hold exactly the compose file and env names given here, the
//! image policy given (if one is; else the one it keeps is shown) and this
//! owner's key, and its sha256 must be the hash signed. A control plane that
//! altered the manifest gets no signature.

use crate::cloudapi::{api_failure, client, trust_failure, trusted_kms_key};
use crate::deploysteps::{DeployArgs, follow_boot, pin, preflight, read_image_policy};
use crate::envargs;
use crate::failure::Failure;
use kms::owner::OwnerKey;
use sha2::Digest as _;
use std::path::{Path, PathBuf};

/// Where the owner key lives when no flag says: `BERTH_OWNER_KEY`, else
/// beside the user's config (`$XDG_CONFIG_HOME/berth/owner-key`, else
/// `~/.config/berth/owner-key`).
pub fn default_owner_key_path() -> PathBuf {
    if let Some(p) = std::env::var_os("BERTH_OWNER_KEY").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("berth")
        .join("owner-key")
}

/// The owner key at `path` (or the default place), created if missing.
pub fn owner_key(path: Option<&Path>) -> Result<OwnerKey, Failure> {
    let path = path
        .map(Path::to_path_buf)
        .unwrap_or_else(default_owner_key_path);
    let (key, created) = OwnerKey::load_or_create(&path)
        .map_err(|e| Failure::io(format!("cannot use the owner key {}", path.display()), &e))?;
    if created {
        eprintln!(
            "Created owner key {} (mode 0600): keep it; only compose files it signs will get this app's secrets",
            path.display()
        );
    }
    Ok(key)
}

/// Why the prepared manifest is not what this client asked for.
fn check_prepared(
    prepared: &cloud::PreparedUpdate,
    app_id: &str,
    compose: &str,
    keys: Option<&[String]>,
    owner: Option<&OwnerKey>,
    image_policy: Option<&contract::ImagePolicy>,
) -> Result<(), Failure> {
    let refuse = |what: &str| {
        Failure::config(format!(
            "the server's manifest for this update {what}; nothing was signed or sent"
        ))
        .hint("the control plane altered the update: do not trust it with this app")
    };
    let hash = hex::encode(sha2::Sha256::digest(prepared.app_compose.as_bytes()));
    if hash != prepared.compose_hash {
        return Err(refuse("does not hash to the compose hash it names"));
    }
    if prepared.app_id != app_id {
        return Err(refuse("names another app"));
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&prepared.app_compose).map_err(|_| refuse("is not JSON"))?;
    if manifest["docker_compose_file"].as_str() != Some(compose) {
        return Err(refuse("holds another compose file"));
    }
    if let Some(keys) = keys {
        let listed: Vec<&str> = manifest["allowed_envs"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        if listed.len() != keys.len() || keys.iter().any(|k| !listed.contains(&k.as_str())) {
            return Err(refuse("allows other env variables"));
        }
    }
    if let Some(owner) = owner
        && manifest["berth_owner_key"].as_str() != Some(owner.public_hex().as_str())
    {
        return Err(refuse("does not name your owner key"));
    }
    // The image policy signed is the one given, or (none given) the one the
    // server kept, shown before anything is signed.
    let signed = match manifest.get(contract::image_policy::IMAGE_POLICY_FIELD) {
        None | Some(serde_json::Value::Null) => contract::ImagePolicy::default(),
        Some(v) => contract::ImagePolicy::from_value(v)
            .map_err(|_| refuse("holds a malformed image policy"))?,
    };
    if let Some(want) = image_policy
        && signed != *want
    {
        return Err(refuse("holds another image policy"));
    }
    if owner.is_some() {
        eprintln!("Image policy of the update: {}", signed.describe());
    }
    Ok(())
}

/// `berth deploy --update ID -c compose.yml [-e .env] [--wait]`.
pub fn update(args: DeployArgs, id: &str) -> Result<(), Failure> {
    let api = client(&args.api)?;
    let compose = std::fs::read_to_string(&args.compose)
        .map_err(|e| Failure::io(format!("cannot read {}", args.compose.display()), &e))?;
    let env = if args.env.is_empty() {
        None
    } else {
        Some(envargs::load(&args.env)?)
    };
    let keys: Option<Vec<String>> = env.as_ref().map(|e| e.keys().map(str::to_owned).collect());
    if let Some(env) = &env
        && !args.no_check
        && env.keys().any(|k| k.starts_with("DSTACK_"))
    {
        preflight(&args, env, &compose)?;
    }
    let trusted = match &env {
        Some(_) => Some(trusted_kms_key(args.kms_pubkey.as_deref())?),
        None => None,
    };
    let image_policy = read_image_policy(&args)?;
    let policy_value = image_policy
        .as_ref()
        .map(|p| serde_json::to_value(p).expect("json"));
    let (cvm, compose) = if args.no_pin {
        let cvm = crate::runtime()
            .block_on(api.get(id))
            .map_err(api_failure)?;
        (cvm, compose)
    } else {
        let (cvm, current) = crate::runtime().block_on(async {
            let cvm = api.get(id).await.map_err(api_failure)?;
            let current = api.compose_file(&cvm.id).await.map_err(api_failure)?;
            Ok::<_, Failure>((cvm, current))
        })?;
        let empty = envseal::Env::default();
        let compose = pin(
            &args,
            env.as_ref().unwrap_or(&empty),
            &compose,
            Some(&current),
        )?;
        (cvm, compose)
    };
    crate::runtime().block_on(async {
        let prepared = api
            .prepare_update(&cvm.id, &compose, keys.as_deref(), policy_value.as_ref())
            .await
            .map_err(api_failure)?;
        let owner = match prepared.upgrade_authority.as_str() {
            "owner" => Some(owner_key(args.owner_key.as_deref())?),
            _ => None,
        };
        check_prepared(
            &prepared,
            &cvm.app_id,
            &compose,
            keys.as_deref(),
            owner.as_ref(),
            image_policy.as_ref(),
        )?;
        let authorization = match &owner {
            Some(o) => Some(
                o.authorize(
                    &prepared.app_id,
                    &prepared.compose_hash,
                    prepared.counter + 1,
                )
                .map_err(|e| Failure::config(format!("cannot sign the update: {e}")))?,
            ),
            None => {
                eprintln!(
                    "note: {} is cloud-authorized: the operator may also register new code for it",
                    cvm.name
                );
                None
            }
        };
        let sealed = match (&env, &trusted) {
            (Some(env), Some(trusted)) => {
                let offer = kms::trust::EnvKeyOffer {
                    app_id: &prepared.app_id,
                    env_pubkey: &prepared.env_pubkey,
                    signature: prepared.signature.as_deref(),
                    signature_v1: prepared.signature_v1.as_deref(),
                    timestamp: prepared.timestamp,
                };
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                kms::trust::seal_env(&offer, trusted, env, now)
                    .map_err(trust_failure)?
                    .map(|s| s.to_hex())
            }
            _ => None,
        };
        api.update(
            &cvm.id,
            &compose,
            keys.as_deref(),
            sealed.as_deref(),
            authorization.as_ref(),
            policy_value.as_ref(),
        )
        .await
        .map_err(api_failure)?;
        println!("CVM ID:       {}", cvm.id);
        println!("App ID:       {}", prepared.app_id);
        println!("Compose hash: {}", prepared.compose_hash);
        println!(
            "Authorized by: {}",
            match &owner {
                Some(o) => format!("your owner key {}", o.public_hex()),
                None => "the cloud (cloud-authorized app)".to_owned(),
            }
        );
        if args.wait {
            follow_boot(&api, &cvm.id).await
        } else {
            Ok(())
        }
    })
}

/// The table of `berth cvms history`.
pub fn history_table(h: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or("-").to_owned();
    let mut out = format!(
        "App ID:   app_{}\nUpgrades: {}{}\nCounter:  {}\n\n",
        s(h, "app_id"),
        s(h, "upgrade_authority"),
        h["owner_key"]
            .as_str()
            .map(|k| format!(" (owner key {k})"))
            .unwrap_or_default(),
        h["counter"].as_u64().unwrap_or(0)
    );
    out.push_str(&format!(
        "{:<3}{:<22}{:<66}{:<8}{}\n",
        "", "ACCEPTED", "COMPOSE HASH", "COUNTER", "AUTHORIZED BY"
    ));
    for v in h["versions"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<3}{:<22}{:<66}{:<8}{}\n",
            if v["current"].as_bool() == Some(true) {
                "*"
            } else {
                ""
            },
            s(v, "created_at").replace('T', " ").trim_end_matches('Z'),
            s(v, "compose_hash"),
            v["counter"].as_u64().unwrap_or(0),
            s(v, "authorized_by")
        ));
    }
    out
}
