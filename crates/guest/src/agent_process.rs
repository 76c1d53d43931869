//! The guest agent process of a CVM (`berth guest agent`): redeem the
//! node's one-time ticket at the KMS for the app key, build the agent's
//! identity, and serve dstack's guest-agent API until told to stop.
//!
//! The steps, each a function: `read_identity_inputs` (the host-shared
//! folder, measured as the boot agent measures it), `fetch_app_key` (the
//! ticket redeemed for the app key, [`contract::kms::APP_KEY_PATH`]),
//! `identity` (the `agent::AgentIdentity`), then [`run`] serves.
//!
//! **Why the node binds the sockets.** The containers bind-mount the
//! socket *file*, i.e. its inode. An agent that bound its own socket would
//! leave every container holding a dead inode once it is killed and
//! restarted. So the node binds `dstack.sock` and `tappd.sock` once per
//! start of the CVM and hands the listening descriptors to every agent it
//! starts ([`inherited_listener`]); connections made while the agent is
//! down wait in the backlog. The agent serves on those listeners directly
//! (`agent::serve_listeners`).

use crate::error::BootError;
use crate::keys::Kms;
use crate::serial::SerialLog;
use crate::shared::HostShared;
use contract::Measurement;
use contract::kms::{APP_KEY_PATH, AppKeyAnswer};
use registry::Category;
use std::future::Future;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::PathBuf;
use zeroize::Zeroizing;

/// The file names of the sockets a CVM's containers mount (each serves
/// every route).
pub const AGENT_SOCKET_NAMES: &[&str] = &["dstack.sock", "tappd.sock"];

/// How one guest agent process runs.
pub struct AgentProcessOptions {
    /// The host-shared folder (`app-compose.json`, `sys-config.json`).
    pub shared: PathBuf,
    /// The one-time ticket (from the node, on standard input).
    pub kms_ticket: Option<Zeroizing<String>>,
    /// Listening sockets the node bound (what the containers mount).
    /// Empty: the agent binds [`AGENT_SOCKET_NAMES`] in `sockets_dir`.
    pub listeners: Vec<StdUnixListener>,
    /// A folder only this CVM's agent uses (0700): the agent's own socket
    /// lives there, or, without inherited listeners, the public ones.
    pub sockets_dir: PathBuf,
}

impl std::fmt::Debug for AgentProcessOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentProcessOptions")
            .field("shared", &self.shared)
            .field(
                "kms_ticket",
                &self.kms_ticket.as_ref().map(|_| "[redacted]"),
            )
            .field("listeners", &self.listeners.len())
            .field("sockets_dir", &self.sockets_dir)
            .finish()
    }
}

/// A listening Unix socket inherited as descriptor `fd`: checked to be a
/// socket that listens, and set non-blocking.
///
/// # Safety
///
/// `fd` must be open and owned by nobody else in this process (the
/// returned listener closes it).
pub unsafe fn inherited_listener(fd: i32) -> std::io::Result<StdUnixListener> {
    use std::os::fd::FromRawFd;
    let mut accepting: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `accepting`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut accepting as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 || accepting == 0 {
        return Err(std::io::Error::other(format!(
            "descriptor {fd} is not a listening socket"
        )));
    }
    // SAFETY: the caller hands over `fd`.
    let listener = unsafe { StdUnixListener::from_raw_fd(fd) };
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// What the shared folder says about this CVM.
struct Inputs {
    measurement: Measurement,
    app_compose: String,
    kms_url: Option<String>,
    instance_id: String,
}

/// Reads the host-shared folder and measures the app, as the boot agent
/// does (the platform's app id for an updated app).
fn read_identity_inputs(opts: &AgentProcessOptions) -> Result<Inputs, BootError> {
    let shared = HostShared::read(&opts.shared)?;
    let measurement = Measurement::of_app(
        &shared.app_compose_bytes,
        shared.sys_config.app_id.as_deref(),
    );
    let app_compose = String::from_utf8(shared.app_compose_bytes)
        .map_err(|_| BootError::new(Category::Config, "app-compose.json is not UTF-8 text"))?;
    let instance_id = shared
        .sys_config
        .instance_id
        .as_deref()
        .unwrap_or_default()
        .replace('-', "");
    Ok(Inputs {
        measurement,
        app_compose,
        kms_url: shared.sys_config.kms_url,
        instance_id,
    })
}

/// Redeems the ticket at the KMS for the app key.
async fn fetch_app_key(
    opts: &mut AgentProcessOptions,
    inputs: &Inputs,
) -> Result<AppKeyAnswer, BootError> {
    let url = inputs.kms_url.clone().ok_or_else(|| {
        BootError::new(
            Category::Config,
            "sys-config.json names no KMS: the guest agent gets the app key from the KMS",
        )
    })?;
    let kms = Kms {
        url,
        ticket: opts.kms_ticket.take(),
    };
    let bytes = kms
        .redeem(APP_KEY_PATH, &inputs.measurement, "app key")
        .await?;
    serde_json::from_slice(&bytes).map_err(|_| {
        BootError::new(
            Category::RegistryError,
            "the KMS answered without an app key",
        )
    })
}

fn hex_array<const N: usize>(text: &str, what: &str) -> Result<Zeroizing<[u8; N]>, BootError> {
    let bytes = Zeroizing::new(hex::decode(text.trim_start_matches("0x")).unwrap_or_default());
    let mut out = Zeroizing::new([0u8; N]);
    if bytes.len() != N {
        return Err(BootError::new(
            Category::Integrity,
            format!("the KMS sent a malformed {what}"),
        ));
    }
    out.copy_from_slice(&bytes);
    Ok(out)
}

/// The agent's identity and attestation key from the KMS's answer.
fn identity(
    inputs: Inputs,
    answer: &AppKeyAnswer,
) -> Result<(agent::AgentIdentity, agent::AttestationKey), BootError> {
    let app_key = hex_array::<32>(&answer.app_key, "app key")?;
    let signature = hex_array::<65>(&answer.app_key_signature, "app key signature")?;
    let kms_key = hex_array::<33>(&answer.kms_public_key, "KMS public key")?;
    let seed = hex_array::<32>(&answer.attestation_seed, "attestation seed")?;
    let identity = agent::AgentIdentity {
        app_id: inputs.measurement.app_id,
        instance_id: inputs.instance_id,
        compose_hash: inputs.measurement.compose_hash,
        app_compose: inputs.app_compose,
        app_key,
        app_key_kms_signature: *signature,
        kms_root_public_key: *kms_key,
        os_image_hash: String::new(),
    };
    Ok((identity, agent::AttestationKey::from_seed(&seed)))
}

/// The whole `berth guest agent` process: the identity from the KMS, then
/// the API served until `shutdown`. Lines go to `serial` (no key, no
/// ticket).
pub async fn run(
    mut opts: AgentProcessOptions,
    serial: &SerialLog,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BootError> {
    let inputs = read_identity_inputs(&opts)?;
    let app_id = inputs.measurement.app_id.clone();
    let answer = fetch_app_key(&mut opts, &inputs).await?;
    let (identity, attestation_key) = identity(inputs, &answer)?;
    drop(answer);
    let runtime = |what: &str, e: std::io::Error| {
        BootError::new(Category::Runtime, format!("the guest agent {what}: {e}"))
    };
    std::env::set_current_dir(&opts.sockets_dir)
        .map_err(|e| runtime("cannot enter its sockets folder", e))?;
    let listeners = std::mem::take(&mut opts.listeners)
        .into_iter()
        .map(|l| {
            tokio::net::UnixListener::from_std(l)
                .map_err(|e| runtime("cannot use a socket the node handed over", e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    serial.line(&format!(
        "berth guest agent {} serving app {app_id} ({})",
        env!("CARGO_PKG_VERSION"),
        agent::SIMULATED_NOTICE
    ));
    let served = if listeners.is_empty() {
        // No node handed sockets over: bind them here (relative to the
        // sockets folder, so no path nears `sun_path`'s 108 bytes).
        let config = agent::AgentConfig {
            identity,
            sockets: AGENT_SOCKET_NAMES.iter().map(PathBuf::from).collect(),
            attestation_key,
        };
        agent::serve(config, shutdown).await
    } else {
        agent::serve_listeners(identity, attestation_key, listeners, shutdown).await
    };
    served.map_err(|e| runtime("stopped", e))
}
