//! The KMS's upgrade registry: for each app that was ever updated, the one
//! compose hash whose boots get its env key, who may change it, and the
//! history of accepted changes. Part of the KMS's HTTP edge ([`crate::server`]).
//!
//! An app that was never updated has no record: its first manifest's hash
//! (the one whose first 20 bytes are the app id) is the accepted one. An
//! update makes a record, and from then on only the record's hash is
//! accepted — a rollback is an update like any other and needs the same
//! authorization.
//!
//! Who may change the hash is decided by the app's first manifest, which the
//! app id measures ([`contract::upgrade`]): cloud-authorized apps take the
//! control plane's word; owner-authorized apps need the owner's signature
//! with a counter greater than every counter accepted before.
//!
//! One JSON file per app in the registry folder (inside the 0700 `STATE/kms/`),
//! written to a temporary name, synced and renamed, so a crash or a full disk
//! leaves the previous record whole. Memory is updated only after the file.

use crate::owner::{OwnerAuthError, verify_authorization};
use contract::Measurement;
use contract::app::{AppCompose, normalize_hex};
use contract::kms::{AppUpgradeState, ComposeHashRegistration};
use contract::upgrade::UpgradeAuthority;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

/// How many accepted updates a record remembers (the oldest are dropped).
const HISTORY: usize = 1000;

/// One app's record.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct AppRecord {
    app_id: String,
    owner_key: Option<String>,
    compose_hash: String,
    counter: u64,
    history: Vec<Accepted>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Accepted {
    compose_hash: String,
    counter: u64,
    authorized_by: String,
    at: u64,
}

impl AppRecord {
    fn state(&self) -> AppUpgradeState {
        AppUpgradeState {
            app_id: self.app_id.clone(),
            model: if self.owner_key.is_some() {
                "owner"
            } else {
                "cloud"
            }
            .to_owned(),
            owner_key: self.owner_key.clone(),
            compose_hash: self.compose_hash.clone(),
            counter: self.counter,
        }
    }
}

/// Why a compose hash is not registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The first manifest does not measure to the app id.
    #[error(
        "genesis_app_compose is not this app's first manifest: its sha256 does not start with the app id"
    )]
    NotGenesis,
    /// An owner-authorized app got no signature.
    #[error(
        "this app is owner-authorized: a new compose hash needs its owner's signature (update it with `berth deploy --update`, which signs with the owner key); nothing was changed"
    )]
    Unsigned,
    /// The signature does not verify.
    #[error("the owner's authorization is refused: {0}; nothing was changed")]
    BadSignature(#[from] OwnerAuthError),
    /// The counter is not fresh.
    #[error(
        "the owner's authorization is refused: its counter {got} is not greater than {last}, the last one accepted (a replayed or stale signature); nothing was changed"
    )]
    Replayed {
        /// The counter presented.
        got: u64,
        /// The last counter accepted.
        last: u64,
    },
    /// The record could not be written.
    #[error("the KMS could not record the update: {0}; nothing was changed")]
    Io(std::io::Error),
}

/// The registry: records on disk, cached in memory.
pub(crate) struct AppRegistry {
    dir: Option<PathBuf>,
    apps: Mutex<HashMap<String, AppRecord>>,
}

fn valid_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl AppRegistry {
    /// A registry kept in `dir` (created 0700 on first write); `None`: in
    /// memory only (tests).
    pub(crate) fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            apps: Mutex::new(HashMap::new()),
        }
    }

    /// The app's record: `Ok(None)` when it was never updated; an error
    /// when a record exists but cannot be read (then nothing is accepted:
    /// a damaged record must not fall back to the first manifest).
    fn load(
        &self,
        apps: &mut HashMap<String, AppRecord>,
        app_id: &str,
    ) -> std::io::Result<Option<AppRecord>> {
        if let Some(r) = apps.get(app_id) {
            return Ok(Some(r.clone()));
        }
        let Some(dir) = self.dir.as_ref() else {
            return Ok(None);
        };
        let path = dir.join(format!("{app_id}.json"));
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let record: AppRecord = serde_json::from_slice(&text)
            .ok()
            .filter(|r: &AppRecord| r.app_id == app_id)
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "{} is damaged; restore it from a backup",
                    path.display()
                ))
            })?;
        apps.insert(app_id.to_owned(), record.clone());
        Ok(Some(record))
    }

    /// The app's record, if it was ever updated.
    pub(crate) fn state(&self, app_id: &str) -> Option<AppUpgradeState> {
        let app_id = normalize_hex(app_id);
        let mut apps = self.apps.lock().unwrap();
        self.load(&mut apps, &app_id)
            .ok()
            .flatten()
            .map(|r| r.state())
    }

    /// Whether boots measuring `compose_hash` may have the app's env key.
    pub(crate) fn accepts(&self, app_id: &str, compose_hash: &str) -> bool {
        let (app_id, hash) = (normalize_hex(app_id), normalize_hex(compose_hash));
        let mut apps = self.apps.lock().unwrap();
        match self.load(&mut apps, &app_id) {
            Ok(Some(r)) => r.compose_hash == hash,
            Ok(None) => Measurement::hash_belongs_to(&hash, &app_id),
            Err(e) => {
                eprintln!("kms: {e}");
                false
            }
        }
    }

    /// Makes `req.compose_hash` the app's accepted hash, if its authority
    /// allows. Registering the hash that is already accepted changes nothing.
    pub(crate) fn register(
        &self,
        app_id: &str,
        req: &ComposeHashRegistration,
        now: u64,
    ) -> Result<AppUpgradeState, RegisterError> {
        let app_id = normalize_hex(app_id);
        let hash = normalize_hex(&req.compose_hash);
        if !valid_hex(&app_id, 40) {
            return Err(RegisterError::BadRequest(
                "app_id must be 40 hex characters".into(),
            ));
        }
        if !valid_hex(&hash, 64) {
            return Err(RegisterError::BadRequest(
                "compose_hash must be 64 hex characters".into(),
            ));
        }
        let genesis = hex::decode(normalize_hex(&req.genesis_app_compose)).map_err(|_| {
            RegisterError::BadRequest(
                "genesis_app_compose must be hex of the manifest's bytes".into(),
            )
        })?;
        let measured = Measurement::of(&genesis);
        if measured.app_id != app_id {
            return Err(RegisterError::NotGenesis);
        }
        let manifest: AppCompose = serde_json::from_slice(&genesis).map_err(|_| {
            RegisterError::BadRequest("genesis_app_compose is not an app-compose.json".into())
        })?;
        let authority = manifest.upgrade_authority();

        let mut apps = self.apps.lock().unwrap();
        let current = self
            .load(&mut apps, &app_id)
            .map_err(RegisterError::Io)?
            .unwrap_or(AppRecord {
                app_id: app_id.clone(),
                owner_key: authority.owner_key().map(str::to_owned),
                compose_hash: measured.compose_hash.clone(),
                counter: 0,
                history: Vec::new(),
            });
        if current.compose_hash == hash {
            // Already the accepted hash (a retried request, or an update
            // that changes nothing): nothing to authorize, nothing changes.
            return Ok(current.state());
        }
        let (counter, by) = match &authority {
            UpgradeAuthority::Cloud => (current.counter + 1, "cloud".to_owned()),
            UpgradeAuthority::Owner { public_key } => {
                let Some(auth) = &req.authorization else {
                    return Err(RegisterError::Unsigned);
                };
                verify_authorization(public_key, &app_id, &hash, auth)?;
                if auth.counter <= current.counter {
                    return Err(RegisterError::Replayed {
                        got: auth.counter,
                        last: current.counter,
                    });
                }
                let short = &public_key[..public_key.len().min(16)];
                (auth.counter, format!("owner key {short}…"))
            }
        };
        let mut next = current;
        next.compose_hash = hash.clone();
        next.counter = counter;
        next.history.push(Accepted {
            compose_hash: hash,
            counter,
            authorized_by: by,
            at: now,
        });
        if next.history.len() > HISTORY {
            next.history.remove(0);
        }
        self.write(&next).map_err(RegisterError::Io)?;
        apps.insert(app_id, next.clone());
        Ok(next.state())
    }

    fn write(&self, record: &AppRecord) -> std::io::Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let path = dir.join(format!("{}.json", record.app_id));
        let json = serde_json::to_vec_pretty(record).expect("json");
        ownership::write_atomic(&path, &json, 0o600)
    }
}
