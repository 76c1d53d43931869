//! The KMS's HTTP edge, run as its own process (`berth kms serve`), so the
//! control plane holds no env private key and links no code that derives one.
//!
//! It listens on a **Unix socket** in a folder only its owner can enter
//! (`STATE/kms/`, mode 0700): other local users and containers cannot
//! connect at all. The messages are [`contract::kms`]'s:
//!
//! - `GET /kms/v1/pubkey`: the KMS public key clients pin.
//! - `GET /kms/v1/apps/{app_id}/env-pubkey`: the app's env public key with
//!   dstack's two signatures (legacy and timestamped).
//! - `POST /kms/v1/boot-tickets` `{app_id, compose_hash}`, **node only**
//!   (`Authorization: Bearer <node secret>`, a secret `berth up` hands to the
//!   KMS and to the node on their standard input and to nobody else): a
//!   one-time boot ticket for that app and its registered compose hash.
//! - `POST /kms/v1/env-key` `{app_id, compose_hash, ticket, attestation}`:
//!   the app's env *private* key, released once per ticket, to a caller
//!   presenting the hash the ticket was issued for, which must be the hash
//!   the KMS accepts for the app now. The ticket is burnt by its first use,
//!   right or wrong.
//! - `POST /kms/v1/app-key` (same request): the app's secp256k1 **app
//!   key** and the KMS's signature over it ([`crate::app_key`]), to a
//!   caller redeeming a guest agent's ticket (`purpose: agent`) under the
//!   same rules. A ticket is good for one purpose: a boot's ticket gets no
//!   app key, an agent's no env key.
//! - `POST /kms/v1/apps/{app_id}/compose-hash` (`GET` to read it): the
//!   compose hash the app's boots get the key for from now on (an update).
//!   Until an app's first update, only its first manifest's hash (whose
//!   first 20 bytes are the app id) is accepted. A cloud-authorized app takes
//!   the word of whoever can reach this socket (the control plane); an
//!   owner-authorized app needs its owner's signature with a fresh counter
//!   (`crate::apps`).
//!
//! **Simulated TEE**: the measurement is computed by the boot agent and taken
//! on trust; what makes it believable in local mode is that only the node
//! can mint tickets and it hands each one to the boot agent it starts. With
//! TDX, the request would carry a quote whose event log holds the compose
//! hash, and [`Attestation`](contract::kms::Attestation) is where it goes.
//! Every release and refusal is logged (app id and hash, never a key or a
//! ticket).
//!
//! This module is the only part of the crate that does network I/O or reads
//! the clock.

use crate::apps::{AppRegistry, RegisterError};
use crate::{AppId, KmsRootKey};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use contract::kms::{
    APP_KEY_PATH, AppKeyAnswer, ComposeHashRegistration, ENV_KEY_PATH, EnvKeyAnswer, EnvKeyRequest,
    EnvPublicKeyAnswer, ErrorAnswer, KmsPublicKeyAnswer, PUBKEY_PATH, TICKET_PATH, TicketAnswer,
    TicketPurpose, TicketRequest,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// How long a boot ticket stays redeemable.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(600);

/// At most this many unredeemed tickets are kept (a node that mints more is
/// refused until some expire or are redeemed).
pub const MAX_OPEN_TICKETS: usize = 10_000;

struct Ticket {
    app_id: String,
    compose_hash: String,
    purpose: TicketPurpose,
    expires: Instant,
}

/// The KMS's state: the root key, the node's secret, the open tickets.
pub struct Kms {
    root: KmsRootKey,
    node_secret: Option<contract::SecretValue>,
    /// Keyed by the sha256 of the ticket, so the map holds no usable ticket.
    tickets: Mutex<HashMap<[u8; 32], Ticket>>,
    /// Which compose hash each updated app may boot.
    apps: AppRegistry,
}

impl Kms {
    /// A KMS over `root`. Tickets can be minted only by a caller presenting
    /// `node_secret`; with `None`, no ticket can be minted and no env key is
    /// ever released.
    pub fn new(root: KmsRootKey, node_secret: Option<contract::SecretValue>) -> Self {
        Self {
            root,
            node_secret: node_secret.filter(|s| !s.is_empty()),
            tickets: Mutex::new(HashMap::new()),
            apps: AppRegistry::new(None),
        }
    }

    /// Keeps the upgrade registry in `dir` (one file per updated app)
    /// instead of in memory only.
    pub fn with_registry(mut self, dir: std::path::PathBuf) -> Self {
        self.apps = AppRegistry::new(Some(dir));
        self
    }
}

fn error(status: StatusCode, detail: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorAnswer {
            detail: detail.into(),
        }),
    )
        .into_response()
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn ticket_id(ticket: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(ticket.trim().as_bytes()).into()
}

/// The KMS's routes.
pub fn router(kms: Arc<Kms>) -> Router {
    Router::new()
        .route(PUBKEY_PATH, get(pubkey))
        .route("/kms/v1/apps/{app_id}/env-pubkey", get(env_pubkey))
        .route(
            "/kms/v1/apps/{app_id}/compose-hash",
            get(compose_hash_state).post(register_compose_hash),
        )
        .route(TICKET_PATH, post(mint_ticket))
        .route(ENV_KEY_PATH, post(env_key))
        .route(APP_KEY_PATH, post(app_key))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(kms)
}

async fn pubkey(State(kms): State<Arc<Kms>>) -> Response {
    Json(KmsPublicKeyAnswer {
        kms_public_key: kms.root.public_key().to_hex(),
        attestation_public_key: attestation_public_key(&kms.root),
    })
    .into_response()
}

/// The public half of the key the agents of this KMS's CVMs sign their
/// simulated quotes with (`agent::AttestationKey` from the root's seed), hex.
pub fn attestation_public_key(root: &KmsRootKey) -> String {
    hex::encode(
        agent::AttestationKey::from_seed(&root.attestation_seed())
            .public_key()
            .to_raw(),
    )
}

fn parse_app(app_id: &str) -> Result<AppId, Box<Response>> {
    AppId::from_hex(app_id).map_err(|_| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "app_id must be 40 hex characters (20 bytes)",
        ))
    })
}

async fn env_pubkey(State(kms): State<Arc<Kms>>, Path(app_id): Path<String>) -> Response {
    let app = match parse_app(&app_id) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let signed = kms.root.signed_env_public_key(&app, now_unix());
    Json(EnvPublicKeyAnswer {
        app_id: app.to_hex(),
        public_key: signed.public_key.to_hex(),
        timestamp: signed.timestamp,
        signature: signed.signature.to_hex(),
        signature_v1: signed.signature_v1.to_hex(),
        kms_public_key: kms.root.public_key().to_hex(),
    })
    .into_response()
}

/// Whether `headers` carry the node's secret (constant-time comparison).
fn is_node(kms: &Kms, headers: &HeaderMap) -> bool {
    use subtle::ConstantTimeEq as _;
    let Some(secret) = &kms.node_secret else {
        return false;
    };
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let a = ticket_id(presented);
    let b = ticket_id(secret.expose());
    bool::from(a.ct_eq(&b))
}

async fn mint_ticket(
    State(kms): State<Arc<Kms>>,
    headers: HeaderMap,
    Json(req): Json<TicketRequest>,
) -> Response {
    if !is_node(&kms, &headers) {
        eprintln!("kms: refused to mint a boot ticket to a caller that is not the node");
        return error(
            StatusCode::FORBIDDEN,
            "only the node that starts CVMs may ask for boot tickets",
        );
    }
    let app = match parse_app(&req.app_id) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let hash = contract::app::normalize_hex(&req.compose_hash);
    if !kms.apps.accepts(&app.to_hex(), &hash) {
        eprintln!(
            "kms: refused a boot ticket for app {} and compose hash {}: not the hash the app may boot",
            app.to_hex(),
            hash.chars().take(64).collect::<String>()
        );
        return error(
            StatusCode::FORBIDDEN,
            "compose_hash is not the one this app may boot: its first manifest's, or the one its last authorized update registered",
        );
    }
    let ticket = {
        use rand_core::RngCore as _;
        let mut b = Zeroizing::new([0u8; 32]);
        rand_core::OsRng.fill_bytes(b.as_mut());
        hex::encode(b.as_ref())
    };
    let now = Instant::now();
    {
        let mut open = kms.tickets.lock().unwrap();
        open.retain(|_, t| t.expires > now);
        if open.len() >= MAX_OPEN_TICKETS {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many boot tickets are open; try again when some have been redeemed or expired",
            );
        }
        open.insert(
            ticket_id(&ticket),
            Ticket {
                app_id: app.to_hex(),
                compose_hash: hash.clone(),
                purpose: req.purpose,
                expires: now + TICKET_LIFETIME,
            },
        );
    }
    eprintln!(
        "kms: {} ticket issued for app {} (compose hash {hash})",
        purpose_name(req.purpose),
        app.to_hex()
    );
    Json(TicketAnswer {
        ticket,
        expires_in: TICKET_LIFETIME.as_secs(),
    })
    .into_response()
}

fn purpose_name(purpose: TicketPurpose) -> &'static str {
    match purpose {
        TicketPurpose::Boot => "boot",
        TicketPurpose::Agent => "guest agent",
    }
}

/// Redeems the ticket of `req` for a key of `purpose`: the app, when the
/// ticket is known, unexpired, issued for this app, this purpose and the
/// measured compose hash, which the KMS still accepts. The ticket is burnt
/// whatever the answer.
fn redeem(kms: &Kms, req: &EnvKeyRequest, purpose: TicketPurpose) -> Result<AppId, Box<Response>> {
    let what = match purpose {
        TicketPurpose::Boot => "env key",
        TicketPurpose::Agent => "app key",
    };
    let req_ticket = Zeroizing::new(req.ticket.clone());
    let app = parse_app(&req.app_id)?;
    let hash = contract::app::normalize_hex(&req.compose_hash);
    let refuse = |why: &str| {
        eprintln!(
            "kms: refused the {what} of app {} to a caller measuring compose hash {}: {why}",
            app.to_hex(),
            hash.chars().take(64).collect::<String>()
        );
        Box::new(error(
            StatusCode::FORBIDDEN,
            format!("the {what} is not released: {why}"),
        ))
    };
    if req_ticket.trim().is_empty() {
        return Err(refuse(
            "no boot ticket was presented; the key is released only to a process the node started",
        ));
    }
    // Burnt by its first use, right or wrong: a ticket cannot be guessed at twice.
    let ticket = kms.tickets.lock().unwrap().remove(&ticket_id(&req_ticket));
    let Some(ticket) = ticket else {
        return Err(refuse("the ticket is unknown, already used or expired"));
    };
    if ticket.expires <= Instant::now() {
        return Err(refuse("the ticket has expired"));
    }
    if ticket.purpose != purpose {
        return Err(refuse(&format!(
            "the ticket was issued for the {}, not for this key",
            purpose_name(ticket.purpose)
        )));
    }
    if ticket.app_id != app.to_hex() {
        return Err(refuse("the ticket was issued for another app"));
    }
    if ticket.compose_hash != hash || !kms.apps.accepts(&ticket.app_id, &hash) {
        return Err(refuse(
            "the measured compose hash is not the one registered for this app",
        ));
    }
    if req.attestation.kind != "simulated" {
        return Err(refuse(
            "this KMS understands only simulated attestation (local mode)",
        ));
    }
    eprintln!(
        "kms: released the {what} of app {} to the {} measuring compose hash {hash} (simulated TEE: measurement not hardware-attested)",
        app.to_hex(),
        purpose_name(purpose)
    );
    Ok(app)
}

/// A JSON answer whose bytes are zeroized once sent.
fn secret_json(body: Zeroizing<Vec<u8>>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_vec(),
    )
        .into_response()
}

async fn env_key(State(kms): State<Arc<Kms>>, Json(req): Json<EnvKeyRequest>) -> Response {
    let app = match redeem(&kms, &req, TicketPurpose::Boot) {
        Ok(app) => app,
        Err(r) => return *r,
    };
    let key = kms.root.env_key_for(&app);
    let mut answer = EnvKeyAnswer {
        app_id: app.to_hex(),
        env_private_key: key.to_hex().to_string(),
    };
    let body = Zeroizing::new(serde_json::to_vec(&answer).expect("json"));
    zeroize::Zeroize::zeroize(&mut answer.env_private_key);
    secret_json(body)
}

async fn app_key(State(kms): State<Arc<Kms>>, Json(req): Json<EnvKeyRequest>) -> Response {
    let app = match redeem(&kms, &req, TicketPurpose::Agent) {
        Ok(app) => app,
        Err(r) => return *r,
    };
    let key = kms.root.app_key_for(&app);
    let mut answer = AppKeyAnswer {
        app_id: app.to_hex(),
        app_key: hex::encode(**key.secret()),
        app_key_signature: hex::encode(key.signature()),
        kms_public_key: kms.root.public_key().to_hex(),
        attestation_seed: hex::encode(*kms.root.attestation_seed()),
    };
    let body = Zeroizing::new(serde_json::to_vec(&answer).expect("json"));
    zeroize::Zeroize::zeroize(&mut answer.app_key);
    zeroize::Zeroize::zeroize(&mut answer.attestation_seed);
    secret_json(body)
}

async fn compose_hash_state(State(kms): State<Arc<Kms>>, Path(app_id): Path<String>) -> Response {
    let app = match parse_app(&app_id) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    match kms.apps.state(&app.to_hex()) {
        Some(s) => Json(s).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "this app was never updated: the KMS accepts its first manifest's compose hash",
        ),
    }
}

async fn register_compose_hash(
    State(kms): State<Arc<Kms>>,
    Path(app_id): Path<String>,
    Json(req): Json<ComposeHashRegistration>,
) -> Response {
    let app = match parse_app(&app_id) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let hash = contract::app::normalize_hex(&req.compose_hash);
    match kms.apps.register(&app.to_hex(), &req, now_unix()) {
        Ok(state) => {
            eprintln!(
                "kms: app {} may now boot compose hash {} ({}-authorized, counter {})",
                state.app_id, state.compose_hash, state.model, state.counter
            );
            Json(state).into_response()
        }
        Err(e) => {
            eprintln!(
                "kms: refused compose hash {} for app {}: {e}",
                hash.chars().take(64).collect::<String>(),
                app.to_hex()
            );
            let status = match e {
                RegisterError::BadRequest(_) | RegisterError::NotGenesis => StatusCode::BAD_REQUEST,
                RegisterError::Io(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::FORBIDDEN,
            };
            error(status, e.to_string())
        }
    }
}

/// Binds the KMS socket at `path`, whose folder must exist and be closed to
/// everyone but its owner (mode 0700). A stale socket file left
/// by a killed KMS is replaced; anything else at `path` is an error
/// ([`ownership::bind_private_socket`], the rule the node's socket keeps too).
pub fn bind_socket(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    let listener = ownership::bind_private_socket(path, "the KMS socket")?;
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

/// Serves the KMS on `listener` until the process ends.
pub async fn serve(listener: tokio::net::UnixListener, kms: Arc<Kms>) -> std::io::Result<()> {
    axum::serve(listener, router(kms)).await
}

/// How `berth kms serve` runs: the process entry point [`run`].
#[derive(Debug)]
pub struct KmsServeConfig {
    /// The root key file (created, mode 0600, if missing).
    pub root_key: std::path::PathBuf,
    /// The Unix socket to listen on (its folder must be mode 0700).
    pub socket: std::path::PathBuf,
    /// The node's secret (it lets the node mint boot tickets); without it
    /// no env key is ever released.
    pub node_secret: Option<contract::SecretValue>,
    /// The upgrade registry's folder (one file per updated app).
    pub apps_dir: std::path::PathBuf,
}

/// Why the KMS process could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The root key file could not be read or created.
    #[error(transparent)]
    RootKey(#[from] crate::RootKeyError),
    /// The socket could not be bound.
    #[error("cannot listen on {}: {source}", socket.display())]
    Bind {
        /// The socket path.
        socket: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Serving stopped with an error.
    #[error("the KMS stopped: {0}")]
    Stopped(std::io::Error),
}

/// The KMS process: makes new files of this process private (umask 077),
/// loads or creates the root key, binds the socket, hands `ready` what
/// `berth up` waits for ([`contract::announce::KmsReady`], to be written on
/// standard output), and serves until the process ends.
pub async fn run(
    config: KmsServeConfig,
    ready: impl FnOnce(&contract::announce::KmsReady),
) -> Result<(), ServeError> {
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe {
        libc::umask(0o077);
    }
    let root = KmsRootKey::load_or_create(&config.root_key)?;
    let listener = bind_socket(&config.socket).map_err(|source| ServeError::Bind {
        socket: config.socket.clone(),
        source,
    })?;
    ready(&contract::announce::KmsReady {
        url: format!(
            "{}{}",
            contract::kms::KMS_SOCKET_URL_SCHEME,
            config.socket.display()
        ),
        public_key: root.public_key().to_hex(),
        attestation_public_key: attestation_public_key(&root),
    });
    let kms = Arc::new(Kms::new(root, config.node_secret).with_registry(config.apps_dir));
    serve(listener, kms).await.map_err(ServeError::Stopped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    fn kms() -> Arc<Kms> {
        Arc::new(Kms::new(
            KmsRootKey::from_bytes([7u8; 32]),
            Some("node-secret".into()),
        ))
    }

    async fn post(
        kms: &Arc<Kms>,
        path: &str,
        auth: Option<&str>,
        body: serde_json::Value,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = Request::post(path).header("content-type", "application/json");
        if let Some(a) = auth {
            req = req.header("authorization", format!("Bearer {a}"));
        }
        let resp = router(kms.clone())
            .oneshot(req.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    const HASH: &str = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
    const APP: &str = "44136fa355b3678a1146ad16f7e8649e94fb4fc2";

    fn key_req(ticket: &str, hash: &str) -> serde_json::Value {
        serde_json::json!({"app_id": APP, "compose_hash": hash, "ticket": ticket, "attestation": {"type": "simulated"}})
    }

    #[tokio::test]
    async fn the_old_trick_yields_nothing() {
        let k = kms();
        // app id + any 24 hex: the check that used to pass.
        let forged = format!("{APP}ffffffffffffffffffffffff");
        let (s, body) = post(&k, ENV_KEY_PATH, None, key_req("", &forged)).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert!(
            body["detail"].as_str().unwrap().contains("no boot ticket"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn only_the_node_mints_tickets() {
        let k = kms();
        let req = serde_json::json!({"app_id": APP, "compose_hash": HASH});
        assert_eq!(
            post(&k, TICKET_PATH, None, req.clone()).await.0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            post(&k, TICKET_PATH, Some("guess"), req.clone()).await.0,
            StatusCode::FORBIDDEN
        );
        let (s, t) = post(&k, TICKET_PATH, Some("node-secret"), req).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(t["ticket"].as_str().unwrap().len(), 64);
        // A KMS without a node secret mints nothing.
        let closed = Arc::new(Kms::new(KmsRootKey::from_bytes([7u8; 32]), None));
        let req = serde_json::json!({"app_id": APP, "compose_hash": HASH});
        assert_eq!(
            post(&closed, TICKET_PATH, Some(""), req).await.0,
            StatusCode::FORBIDDEN
        );
    }

    #[tokio::test]
    async fn a_ticket_opens_once_for_its_hash_only() {
        let k = kms();
        let mint = || async {
            let (_, t) = post(
                &k,
                TICKET_PATH,
                Some("node-secret"),
                serde_json::json!({"app_id": APP, "compose_hash": HASH}),
            )
            .await;
            t["ticket"].as_str().unwrap().to_owned()
        };
        // Wrong hash (same app id prefix): refused, and the ticket is burnt.
        let t = mint().await;
        let other = format!("{APP}ffffffffffffffffffffffff");
        let (s, body) = post(&k, ENV_KEY_PATH, None, key_req(&t, &other)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("not the one registered")
        );
        assert_eq!(
            post(&k, ENV_KEY_PATH, None, key_req(&t, HASH)).await.0,
            StatusCode::FORBIDDEN
        );
        // The right hash: the key, once.
        let t = mint().await;
        let (s, body) = post(&k, ENV_KEY_PATH, None, key_req(&t, HASH)).await;
        assert_eq!(s, StatusCode::OK);
        let want = k.root.env_key_for(&AppId::from_hex(APP).unwrap()).to_hex();
        assert_eq!(body["env_private_key"].as_str().unwrap(), want.as_str());
        let (s, body) = post(&k, ENV_KEY_PATH, None, key_req(&t, HASH)).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert!(body["detail"].as_str().unwrap().contains("already used"));
    }

    #[tokio::test]
    async fn an_agent_ticket_opens_the_app_key_once_and_nothing_else() {
        let k = kms();
        let mint = |purpose: &'static str| {
            let k = k.clone();
            async move {
                let (s, t) = post(
                    &k,
                    TICKET_PATH,
                    Some("node-secret"),
                    serde_json::json!({"app_id": APP, "compose_hash": HASH, "purpose": purpose}),
                )
                .await;
                assert_eq!(s, StatusCode::OK, "{t}");
                t["ticket"].as_str().unwrap().to_owned()
            }
        };
        // A boot's ticket gets no app key, an agent's no env key (and each is burnt).
        let boot = mint("boot").await;
        let (s, body) = post(&k, APP_KEY_PATH, None, key_req(&boot, HASH)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("issued for the boot"),
            "{body}"
        );
        let agent = mint("agent").await;
        let (s, body) = post(&k, ENV_KEY_PATH, None, key_req(&agent, HASH)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
        assert!(body.get("env_private_key").is_none());
        // The agent's own ticket: the app key, signed by the KMS, once.
        let agent = mint("agent").await;
        let (s, body) = post(&k, APP_KEY_PATH, None, key_req(&agent, HASH)).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let app = AppId::from_hex(APP).unwrap();
        let want = k.root.app_key_for(&app);
        assert_eq!(body["app_key"], hex::encode(**want.secret()));
        assert_eq!(body["kms_public_key"], k.root.public_key().to_hex());
        let sig: [u8; 65] = hex::decode(body["app_key_signature"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(
            crate::recover_app_key_signer(&app, want.public_key(), &sig),
            Some(k.root.public_key().to_compressed_bytes())
        );
        assert_eq!(
            post(&k, APP_KEY_PATH, None, key_req(&agent, HASH)).await.0,
            StatusCode::FORBIDDEN
        );
        // Without a ticket, or for a hash the app may not boot: nothing.
        assert_eq!(
            post(&k, APP_KEY_PATH, None, key_req("", HASH)).await.0,
            StatusCode::FORBIDDEN
        );
        let agent = mint("agent").await;
        let other = format!("{APP}ffffffffffffffffffffffff");
        assert_eq!(
            post(&k, APP_KEY_PATH, None, key_req(&agent, &other))
                .await
                .0,
            StatusCode::FORBIDDEN
        );
    }

    fn genesis(owner_key: Option<&str>) -> (Vec<u8>, contract::Measurement) {
        let envs = vec!["A".to_string()];
        let bytes = contract::AppComposeInput {
            name: "app",
            docker_compose_file: "services: {a: {image: x}}\n",
            allowed_envs: &envs,
            public_logs: true,
            public_sysinfo: true,
            owner: Some("aa"),
            owner_key,
        }
        .render();
        let m = contract::Measurement::of(&bytes);
        (bytes, m)
    }

    async fn ticket_for(k: &Arc<Kms>, app: &str, hash: &str) -> StatusCode {
        post(
            k,
            TICKET_PATH,
            Some("node-secret"),
            serde_json::json!({"app_id": app, "compose_hash": hash}),
        )
        .await
        .0
    }

    async fn register(
        k: &Arc<Kms>,
        app: &str,
        genesis: &[u8],
        hash: &str,
        auth: Option<contract::upgrade::OwnerAuthorization>,
    ) -> (StatusCode, serde_json::Value) {
        post(
            k,
            &contract::kms::compose_hash_path(app),
            None,
            serde_json::json!({"genesis_app_compose": hex::encode(genesis), "compose_hash": hash, "authorization": auth}),
        )
        .await
    }

    #[tokio::test]
    async fn a_cloud_authorized_update_moves_the_key_to_the_new_hash() {
        let k = kms();
        let (g, m) = genesis(None);
        let v2 = hex::encode([2u8; 32]);
        assert_eq!(
            ticket_for(&k, &m.app_id, &m.compose_hash).await,
            StatusCode::OK
        );
        assert_eq!(ticket_for(&k, &m.app_id, &v2).await, StatusCode::FORBIDDEN);
        let (s, state) = register(&k, &m.app_id, &g, &v2, None).await;
        assert_eq!(s, StatusCode::OK, "{state}");
        assert_eq!(state["model"], "cloud");
        assert_eq!(state["compose_hash"], v2.as_str());
        assert_eq!(ticket_for(&k, &m.app_id, &v2).await, StatusCode::OK);
        // The old code gets nothing any more, until it is registered again.
        assert_eq!(
            ticket_for(&k, &m.app_id, &m.compose_hash).await,
            StatusCode::FORBIDDEN
        );
        // A genesis that does not measure to the app id is refused.
        let (other, _) = genesis(Some(&crate::owner::OwnerKey::generate().public_hex()));
        let (s, body) = register(&k, &m.app_id, &other, &v2, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    }

    #[tokio::test]
    async fn an_owner_authorized_app_needs_a_fresh_owner_signature() {
        let dir = tempfile::tempdir().unwrap();
        let k = Arc::new(
            Kms::new(
                KmsRootKey::from_bytes([7u8; 32]),
                Some("node-secret".into()),
            )
            .with_registry(dir.path().join("apps")),
        );
        let owner = crate::owner::OwnerKey::generate();
        let (g, m) = genesis(Some(&owner.public_hex()));
        let (v2, v3) = (hex::encode([2u8; 32]), hex::encode([3u8; 32]));
        // Unsigned: refused, and no key for that hash.
        let (s, body) = register(&k, &m.app_id, &g, &v2, None).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("owner-authorized"),
            "{body}"
        );
        assert_eq!(ticket_for(&k, &m.app_id, &v2).await, StatusCode::FORBIDDEN);
        // Signed by someone else, or for another app: refused.
        let stranger = crate::owner::OwnerKey::generate();
        let forged = stranger.authorize(&m.app_id, &v2, 1).unwrap();
        assert_eq!(
            register(&k, &m.app_id, &g, &v2, Some(forged)).await.0,
            StatusCode::FORBIDDEN
        );
        let elsewhere = owner.authorize(&"ab".repeat(20), &v2, 1).unwrap();
        assert_eq!(
            register(&k, &m.app_id, &g, &v2, Some(elsewhere)).await.0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(ticket_for(&k, &m.app_id, &v2).await, StatusCode::FORBIDDEN);
        // The owner's: accepted.
        let first = owner.authorize(&m.app_id, &v2, 1).unwrap();
        let (s, state) = register(&k, &m.app_id, &g, &v2, Some(first.clone())).await;
        assert_eq!(s, StatusCode::OK, "{state}");
        assert_eq!(
            (state["model"].as_str(), state["counter"].as_u64()),
            (Some("owner"), Some(1))
        );
        assert_eq!(ticket_for(&k, &m.app_id, &v2).await, StatusCode::OK);
        // The same request again (a retry) changes nothing and is fine.
        assert_eq!(
            register(&k, &m.app_id, &g, &v2, Some(first.clone()))
                .await
                .0,
            StatusCode::OK
        );
        // An update to the hash already accepted changes nothing, not even
        // the counter, whatever counter it was signed with.
        let same = owner.authorize(&m.app_id, &v2, 9).unwrap();
        let (s, state) = register(&k, &m.app_id, &g, &v2, Some(same)).await;
        assert_eq!((s, state["counter"].as_u64()), (StatusCode::OK, Some(1)));
        let second = owner.authorize(&m.app_id, &v3, 2).unwrap();
        assert_eq!(
            register(&k, &m.app_id, &g, &v3, Some(second)).await.0,
            StatusCode::OK
        );
        // Replaying the first authorization (rollback by the operator): refused.
        let (s, body) = register(&k, &m.app_id, &g, &v2, Some(first)).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert!(
            body["detail"].as_str().unwrap().contains("replayed"),
            "{body}"
        );
        assert_eq!(ticket_for(&k, &m.app_id, &v2).await, StatusCode::FORBIDDEN);
        // A rollback the owner signs is an update like any other.
        let back = owner.authorize(&m.app_id, &m.compose_hash, 3).unwrap();
        assert_eq!(
            register(&k, &m.app_id, &g, &m.compose_hash, Some(back))
                .await
                .0,
            StatusCode::OK
        );
        assert_eq!(
            ticket_for(&k, &m.app_id, &m.compose_hash).await,
            StatusCode::OK
        );
        // The record survives a restart of the KMS; a damaged one accepts nothing.
        let again = Arc::new(
            Kms::new(
                KmsRootKey::from_bytes([7u8; 32]),
                Some("node-secret".into()),
            )
            .with_registry(dir.path().join("apps")),
        );
        assert_eq!(
            ticket_for(&again, &m.app_id, &v3).await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            ticket_for(&again, &m.app_id, &m.compose_hash).await,
            StatusCode::OK
        );
        std::fs::write(dir.path().join(format!("apps/{}.json", m.app_id)), b"{").unwrap();
        let damaged = Arc::new(
            Kms::new(
                KmsRootKey::from_bytes([7u8; 32]),
                Some("node-secret".into()),
            )
            .with_registry(dir.path().join("apps")),
        );
        assert_eq!(
            ticket_for(&damaged, &m.app_id, &m.compose_hash).await,
            StatusCode::FORBIDDEN
        );
    }
}
