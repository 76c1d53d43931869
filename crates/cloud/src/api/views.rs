//! Every answer of the API as a type: the JSON field names the official
//! clients read are written here once, and pinned by the snapshot test
//! (`tests/api_shapes.rs`, files in `tests/snapshots/`).
//!
//! `X-Phala-Version` selects between the two shapes of a CVM the `phala`
//! CLI 1.1.x expects ([`PhalaVersion`]): `2025-10-28` ([`CvmLegacy`]: the
//! numeric `id`, `teepod`, flat resources; deploy and log helpers, and the
//! answers of commit, start, stop, restart and list) and `2026-01-21`
//! ([`CvmCurrent`]: `id` is the UUID, nested `resource`, `kms_info`, `os`;
//! the rest).

use crate::db::pages::CvmSummary;
use crate::db::{App, Cvm, User};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use contract::CvmStatus;
use serde::Serialize;

/// The answer shape a client asked for with `X-Phala-Version`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhalaVersion {
    /// `2025-10-28` (any version before 2026).
    Legacy,
    /// `2026-01-21`, and the default without the header.
    Current,
}

impl PhalaVersion {
    /// The header's value, as sent by a client.
    pub fn parse(header: Option<&str>) -> Self {
        match header {
            Some(v) if v < "2026-01-01" => PhalaVersion::Legacy,
            _ => PhalaVersion::Current,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PhalaVersion {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::parse(
            parts
                .headers
                .get("x-phala-version")
                .and_then(|v| v.to_str().ok()),
        ))
    }
}

/// The fields of a stored `app-compose.json` the API reads back (missing
/// ones, or a manifest that is not JSON, read as `null`).
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct Manifest {
    /// The compose YAML.
    #[serde(default)]
    pub docker_compose_file: Option<String>,
    /// Whether the app's logs are public.
    #[serde(default)]
    pub public_logs: Option<bool>,
    /// Whether the app's system info is public.
    #[serde(default)]
    pub public_sysinfo: Option<bool>,
    /// Env keys that survive decryption.
    #[serde(default)]
    pub allowed_envs: Vec<String>,
    /// The app's name.
    #[serde(default)]
    pub name: Option<String>,
    /// The owner's per-user salt.
    #[serde(default)]
    pub berth_owner: Option<String>,
    /// The owner's upgrade key, for an owner-authorized app.
    #[serde(default)]
    pub berth_owner_key: Option<String>,
    /// The app's image policy, as measured.
    #[serde(default)]
    pub berth_image_policy: Option<serde_json::Value>,
}

impl Manifest {
    /// The manifest of `app`.
    pub fn of(app: &App) -> Self {
        serde_json::from_slice(&app.app_compose).unwrap_or_default()
    }

    /// `owner` when only the owner's key may authorize new code, else
    /// `cloud` ([`contract::upgrade::UpgradeAuthority`]).
    pub fn upgrade_authority(&self) -> &'static str {
        contract::upgrade::UpgradeAuthority::of_owner_key(self.berth_owner_key.as_deref()).model()
    }
}

fn compact(id: &str) -> String {
    id.replace('-', "")
}

/// The CVM's status message as a boot's failure: its last boot's final
/// line, once the boot has ended.
pub fn boot_error(cvm: &Cvm) -> Option<String> {
    cvm.boot_message
        .clone()
        .filter(|_| !cvm.status.in_progress())
}

/// The CVM's status message as what its boot waits for (the node's boot
/// queue: "waiting for a boot slot (N ahead)"), while it is in progress.
pub fn boot_progress(cvm: &Cvm) -> Option<String> {
    cvm.boot_message
        .clone()
        .filter(|_| cvm.status.in_progress())
}

// ------------------------------------------------------------------ CVMs

/// The node a CVM runs on, in the `2025-10-28` shape.
#[derive(Clone, Debug, Serialize)]
pub struct Teepod {
    /// Always 1: one local node.
    pub id: i64,
    /// `berth-local-node`.
    pub name: &'static str,
}

/// A CVM in the `2025-10-28` shape.
#[derive(Clone, Debug, Serialize)]
pub struct CvmLegacy {
    /// The numeric id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Status.
    pub status: CvmStatus,
    /// Whether a boot is pending or under way.
    pub in_progress: bool,
    /// Always 1.
    pub teepod_id: i64,
    /// The node.
    pub teepod: Teepod,
    /// Owner.
    pub user_id: i64,
    /// App id (hex, no `app_` prefix).
    pub app_id: String,
    /// The UUID.
    pub vm_uuid: String,
    /// The UUID without dashes.
    pub instance_id: String,
    /// `berth-simulated-tee`.
    pub base_image: &'static str,
    /// vCPUs.
    pub vcpu: i64,
    /// Memory, MB.
    pub memory: i64,
    /// Disk, GB.
    pub disk_size: i64,
    /// The compose YAML.
    pub docker_compose_file: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// The app's env public key, hex.
    pub encrypted_env_pubkey: String,
    /// The serial log URL, with its token.
    pub syslog_endpoint: String,
    /// From the manifest.
    pub public_logs: Option<bool>,
    /// From the manifest.
    pub public_sysinfo: Option<bool>,
    /// sha256 of `app-compose.json`, hex.
    pub compose_hash: String,
    /// Berth: who may authorize a new compose hash (`cloud` or `owner`).
    pub upgrade_authority: &'static str,
    /// Berth: the failure category of the last boot.
    pub boot_category: Option<String>,
    /// Berth: the last boot's final line, when it failed.
    pub boot_error: Option<String>,
    /// Berth: what a boot in progress waits for, e.g. "waiting for a boot
    /// slot (3 ahead)" (left out when it waits for nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_progress: Option<String>,
    /// Berth: what isolates the CVM (`container`: a machine of its own;
    /// `shared`: the fast mode, one engine for all CVMs).
    pub isolation: contract::Isolation,
}

impl CvmLegacy {
    /// The view of `cvm` of `app`, with its log URL.
    pub fn of(cvm: &Cvm, app: &App, syslog_endpoint: String) -> Self {
        let m = Manifest::of(app);
        Self {
            id: cvm.instance_id,
            name: cvm.name.clone(),
            status: cvm.status,
            in_progress: cvm.status.in_progress(),
            teepod_id: 1,
            teepod: Teepod {
                id: 1,
                name: "berth-local-node",
            },
            user_id: cvm.user_id,
            app_id: cvm.app_id.clone(),
            vm_uuid: cvm.id.clone(),
            instance_id: compact(&cvm.id),
            base_image: "berth-simulated-tee",
            vcpu: cvm.vcpu,
            memory: cvm.memory,
            disk_size: cvm.disk_size,
            docker_compose_file: m.docker_compose_file.clone(),
            created_at: cvm.created_at.clone(),
            encrypted_env_pubkey: app.env_pubkey.clone(),
            syslog_endpoint,
            public_logs: m.public_logs,
            public_sysinfo: m.public_sysinfo,
            compose_hash: app.compose_hash.clone(),
            upgrade_authority: m.upgrade_authority(),
            boot_category: cvm.boot_category.clone(),
            boot_error: boot_error(cvm),
            boot_progress: boot_progress(cvm),
            isolation: contract::Isolation::Shared,
        }
    }
}

/// `resource` of a [`CvmCurrent`].
#[derive(Clone, Debug, Serialize)]
pub struct Resource {
    /// `tdx.small`.
    pub instance_type: &'static str,
    /// vCPUs.
    pub vcpu: i64,
    /// Memory, GB.
    pub memory_in_gb: f64,
    /// Disk, GB.
    pub disk_in_gb: i64,
}

impl Resource {
    /// The size of `cvm`.
    pub fn of(cvm: &Cvm) -> Self {
        Self {
            instance_type: "tdx.small",
            vcpu: cvm.vcpu,
            memory_in_gb: cvm.memory as f64 / 1024.0,
            disk_in_gb: cvm.disk_size,
        }
    }
}

/// `kms_info` of a [`CvmCurrent`].
#[derive(Clone, Debug, Serialize)]
pub struct KmsInfo {
    /// Always `null`: no chain.
    pub chain_id: Option<u64>,
    /// The app's env public key, hex.
    pub encrypted_env_pubkey: String,
}

/// `gateway` of a [`CvmCurrent`]: none in local mode.
#[derive(Clone, Debug, Serialize)]
pub struct Gateway {
    /// `null`.
    pub base_domain: Option<String>,
    /// `null`.
    pub cname: Option<String>,
}

/// `node_info` of a [`CvmCurrent`].
#[derive(Clone, Debug, Serialize)]
pub struct NodeInfo {
    /// `node`.
    pub object_type: &'static str,
    /// Always 1.
    pub id: i64,
    /// `berth-local-node`.
    pub name: &'static str,
}

impl NodeInfo {
    /// The one local node.
    pub const LOCAL: Self = Self {
        object_type: "node",
        id: 1,
        name: "berth-local-node",
    };
}

/// `os` of a [`CvmCurrent`].
#[derive(Clone, Debug, Serialize)]
pub struct Os {
    /// `berth (simulated TEE)`.
    pub name: &'static str,
    /// Berth's version.
    pub version: &'static str,
    /// `false`.
    pub is_dev: bool,
    /// `null`.
    pub os_image_hash: Option<String>,
}

/// A CVM in the `2026-01-21` shape.
#[derive(Clone, Debug, Serialize)]
pub struct CvmCurrent {
    /// Berth: what isolates the CVM.
    pub isolation: contract::Isolation,
    /// The UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Status.
    pub status: CvmStatus,
    /// Whether a boot is pending or under way.
    pub in_progress: bool,
    /// App id.
    pub app_id: String,
    /// The UUID.
    pub vm_uuid: String,
    /// The UUID without dashes.
    pub instance_id: String,
    /// Size.
    pub resource: Resource,
    /// The env key.
    pub kms_info: KmsInfo,
    /// `phala`.
    pub kms_type: &'static str,
    /// No gateway.
    pub gateway: Gateway,
    /// The node.
    pub node_info: NodeInfo,
    /// The (simulated) OS.
    pub os: Os,
    /// sha256 of `app-compose.json`, hex.
    pub compose_hash: String,
    /// From the manifest.
    pub public_logs: Option<bool>,
    /// From the manifest.
    pub public_sysinfo: Option<bool>,
    /// RFC 3339.
    pub created_at: String,
    /// The serial log URL, with its token.
    pub syslog_endpoint: String,
    /// Berth: who may authorize a new compose hash (`cloud` or `owner`).
    pub upgrade_authority: &'static str,
    /// Berth: the failure category of the last boot.
    pub boot_category: Option<String>,
    /// Berth: the last boot's final line, when it failed.
    pub boot_error: Option<String>,
    /// Berth: what a boot in progress waits for, e.g. "waiting for a boot
    /// slot (3 ahead)" (left out when it waits for nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_progress: Option<String>,
}

impl CvmCurrent {
    /// The view of `cvm` of `app`, with its log URL.
    pub fn of(cvm: &Cvm, app: &App, syslog_endpoint: String) -> Self {
        let m = Manifest::of(app);
        Self {
            isolation: contract::Isolation::Shared,
            id: cvm.id.clone(),
            name: cvm.name.clone(),
            status: cvm.status,
            in_progress: cvm.status.in_progress(),
            app_id: cvm.app_id.clone(),
            vm_uuid: cvm.id.clone(),
            instance_id: compact(&cvm.id),
            resource: Resource::of(cvm),
            kms_info: KmsInfo {
                chain_id: None,
                encrypted_env_pubkey: app.env_pubkey.clone(),
            },
            kms_type: "phala",
            gateway: Gateway {
                base_domain: None,
                cname: None,
            },
            node_info: NodeInfo::LOCAL,
            os: Os {
                name: "berth (simulated TEE)",
                version: env!("CARGO_PKG_VERSION"),
                is_dev: false,
                os_image_hash: None,
            },
            compose_hash: app.compose_hash.clone(),
            public_logs: m.public_logs,
            public_sysinfo: m.public_sysinfo,
            created_at: cvm.created_at.clone(),
            syslog_endpoint,
            upgrade_authority: m.upgrade_authority(),
            boot_category: cvm.boot_category.clone(),
            boot_error: boot_error(cvm),
            boot_progress: boot_progress(cvm),
        }
    }
}

/// A CVM in the shape the client asked for.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum CvmView {
    /// `2025-10-28`.
    Legacy(CvmLegacy),
    /// `2026-01-21`.
    Current(CvmCurrent),
}

/// One entry of `GET /apps`.
#[derive(Clone, Debug, Serialize)]
pub struct AppItem {
    /// The CVM's UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// App id.
    pub app_id: String,
    /// RFC 3339.
    pub created_at: String,
    /// `phala`.
    pub kms_type: &'static str,
    /// Always 1.
    pub cvm_count: u32,
    /// The CVM, slim.
    pub current_cvm: CvmSlim,
}

impl AppItem {
    /// The entry of the CVM `row`.
    pub fn of(row: &CvmSummary) -> Self {
        let cvm = &row.cvm;
        Self {
            id: cvm.id.clone(),
            name: cvm.name.clone(),
            app_id: cvm.app_id.clone(),
            created_at: cvm.created_at.clone(),
            kms_type: "phala",
            cvm_count: 1,
            current_cvm: CvmSlim::of(row),
        }
    }
}

/// A CVM in a row of `GET /apps`: the `2026-01-21` shape without what only
/// the app's manifest or a log token can tell (`public_logs`,
/// `public_sysinfo`, `upgrade_authority`, `syslog_endpoint`, `os`), so a
/// page of apps reads no manifest. What the official CLI's `cvms list`
/// reads (`vm_uuid`, `name`, `status`) and its schema requires (`id`,
/// `name`, `resource`, `status`, `gateway`) is here; `GET /cvms/{id}` has
/// the rest.
#[derive(Clone, Debug, Serialize)]
pub struct CvmSlim {
    /// Berth: what isolates the CVM.
    pub isolation: contract::Isolation,
    /// The UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Status.
    pub status: CvmStatus,
    /// Whether a boot is pending or under way.
    pub in_progress: bool,
    /// App id.
    pub app_id: String,
    /// The UUID.
    pub vm_uuid: String,
    /// The UUID without dashes.
    pub instance_id: String,
    /// Size.
    pub resource: Resource,
    /// The env key.
    pub kms_info: KmsInfo,
    /// `phala`.
    pub kms_type: &'static str,
    /// No gateway.
    pub gateway: Gateway,
    /// The node.
    pub node_info: NodeInfo,
    /// sha256 of `app-compose.json`, hex.
    pub compose_hash: String,
    /// RFC 3339.
    pub created_at: String,
    /// Berth: the failure category of the last boot.
    pub boot_category: Option<String>,
    /// Berth: the last boot's final line, when it failed.
    pub boot_error: Option<String>,
    /// Berth: what a boot in progress waits for, when it waits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_progress: Option<String>,
}

impl CvmSlim {
    /// The slim view of `row` (isolation `shared` until the caller sets it).
    pub fn of(row: &CvmSummary) -> Self {
        let cvm = &row.cvm;
        Self {
            isolation: contract::Isolation::Shared,
            id: cvm.id.clone(),
            name: cvm.name.clone(),
            status: cvm.status,
            in_progress: cvm.status.in_progress(),
            app_id: cvm.app_id.clone(),
            vm_uuid: cvm.id.clone(),
            instance_id: compact(&cvm.id),
            resource: Resource::of(cvm),
            kms_info: KmsInfo {
                chain_id: None,
                encrypted_env_pubkey: row.env_pubkey.clone(),
            },
            kms_type: "phala",
            gateway: Gateway {
                base_domain: None,
                cname: None,
            },
            node_info: NodeInfo::LOCAL,
            compose_hash: row.compose_hash.clone(),
            created_at: cvm.created_at.clone(),
            boot_category: cvm.boot_category.clone(),
            boot_error: boot_error(cvm),
            boot_progress: boot_progress(cvm),
        }
    }
}

/// `GET /cvms/paginated`: one page of the user's CVMs, as Phala's API
/// answers it (`items`, `total`, `page`, `page_size`, `pages`).
#[derive(Clone, Debug, Serialize)]
pub struct CvmsPage<T> {
    /// This page's CVMs, in the asked shape.
    pub items: Vec<T>,
    /// CVMs in all (with the filters).
    pub total: usize,
    /// Page number, from 1.
    pub page: usize,
    /// CVMs per page.
    pub page_size: usize,
    /// Pages in all (at least 1).
    pub pages: usize,
}

/// A CVM of `GET /cvms/paginated` in the `2025-10-28` shape: the row of
/// `GET /cvms` ([`CvmLegacy`]) plus the keys the official SDK's list schema
/// (`CvmInfoV20251028`) requires, so both parse it.
#[derive(Clone, Debug, Serialize)]
pub struct CvmListedLegacy {
    /// The row of `GET /cvms`.
    #[serde(flatten)]
    pub cvm: CvmLegacy,
    /// The VM as the node hosts it.
    pub hosted: Hosted,
    /// The owner.
    pub managed_user: ManagedUser,
    /// The node.
    pub node: Teepod,
    /// `false`: nothing is listed publicly.
    pub listed: bool,
    /// `null`.
    pub dapp_dashboard_url: Option<String>,
    /// `true`: updates in place are possible (an owner-authorized app's
    /// need its owner's signature).
    pub allow_upgrade: bool,
    /// `null`.
    pub project_id: Option<String>,
    /// `null`.
    pub project_type: Option<String>,
    /// `null`: no billing.
    pub billing_period: Option<String>,
    /// `null`: the plain KMS.
    pub kms_info: Option<KmsInfo>,
    /// `null`: no gateway.
    pub gateway_domain: Option<String>,
    /// None.
    pub public_urls: Vec<String>,
}

/// `hosted` of a [`CvmListedLegacy`].
#[derive(Clone, Debug, Serialize)]
pub struct Hosted {
    /// The UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Status.
    pub status: CvmStatus,
    /// Empty: not tracked.
    pub uptime: &'static str,
    /// `null`: no gateway.
    pub app_url: Option<String>,
    /// App id.
    pub app_id: String,
    /// The UUID without dashes.
    pub instance_id: String,
    /// `null`.
    pub exited_at: Option<String>,
    /// What a boot in progress waits for.
    pub boot_progress: Option<String>,
    /// The last boot's final line, when it failed.
    pub boot_error: Option<String>,
    /// `null`.
    pub shutdown_progress: Option<String>,
    /// `null`.
    pub image_version: Option<String>,
}

/// `managed_user` of a [`CvmListedLegacy`].
#[derive(Clone, Debug, Serialize)]
pub struct ManagedUser {
    /// The user's row id.
    pub id: i64,
    /// Login name.
    pub username: String,
}

impl CvmListedLegacy {
    /// `cvm` (the row of `GET /cvms`) of `user`, with the SDK's keys.
    pub fn of(cvm: CvmLegacy, user: &User) -> Self {
        let hosted = Hosted {
            id: cvm.vm_uuid.clone(),
            name: cvm.name.clone(),
            status: cvm.status,
            uptime: "",
            app_url: None,
            app_id: cvm.app_id.clone(),
            instance_id: cvm.instance_id.clone(),
            exited_at: None,
            boot_progress: cvm.boot_progress.clone(),
            boot_error: cvm.boot_error.clone(),
            shutdown_progress: None,
            image_version: None,
        };
        Self {
            node: cvm.teepod.clone(),
            cvm,
            hosted,
            managed_user: ManagedUser {
                id: user.id,
                username: user.username.clone(),
            },
            listed: false,
            dapp_dashboard_url: None,
            allow_upgrade: true,
            project_id: None,
            project_type: None,
            billing_period: None,
            kms_info: None,
            gateway_domain: None,
            public_urls: Vec::new(),
        }
    }
}

/// `GET /apps`.
#[derive(Clone, Debug, Serialize)]
pub struct AppsPage {
    /// This page.
    pub dstack_apps: Vec<AppItem>,
    /// Page number, from 1.
    pub page: usize,
    /// Entries per page.
    pub page_size: usize,
    /// Entries in all.
    pub total: usize,
    /// Pages in all (at least 1).
    pub total_pages: usize,
}

/// One entry of `POST /status/batch`.
#[derive(Clone, Debug, Serialize)]
pub struct BatchStatus {
    /// The UUID.
    pub vm_uuid: String,
    /// Status.
    pub status: CvmStatus,
    /// Whether a boot is pending or under way.
    pub in_progress: bool,
    /// The last boot's final line, when it failed.
    pub boot_error: Option<String>,
    /// What a boot in progress waits for ("waiting for a boot slot (N
    /// ahead)"), when it waits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_progress: Option<String>,
}

/// `PATCH /cvms/{id}/envs`.
#[derive(Clone, Debug, Serialize)]
pub struct EnvsUpdated {
    /// `in_progress`: the CVM restarts.
    pub status: &'static str,
    /// What happened.
    pub message: &'static str,
    /// A fresh UUID.
    pub correlation_id: String,
    /// Whether the new names were added to the app's `allowed_envs` (a new
    /// manifest and compose hash).
    pub allowed_envs_changed: bool,
}

impl EnvsUpdated {
    /// The answer; `allowed_envs_changed` when the new names were added to
    /// the app's `allowed_envs` (a new manifest).
    pub fn new(allowed_envs_changed: bool, correlation_id: String) -> Self {
        Self {
            status: "in_progress",
            message: if allowed_envs_changed {
                "env updated; allowed_envs changed (a new compose hash); the CVM is restarting"
            } else {
                "env updated; the CVM is restarting"
            },
            correlation_id,
            allowed_envs_changed,
        }
    }
}

/// One container of `GET /cvms/{id}/composition`.
#[derive(Clone, Debug, Serialize)]
pub struct ContainerItem {
    /// The engine's container id.
    pub id: String,
    /// `/<service>`.
    pub names: Vec<String>,
    /// The engine's state: `running`, `exited`, `created`, …
    pub state: String,
    /// The engine's status text (`Up 3 minutes`).
    pub status: String,
    /// Its log URL, with the CVM's token.
    pub log_endpoint: String,
}

/// `GET /cvms/{id}/composition`.
#[derive(Clone, Debug, Serialize)]
pub struct Composition {
    /// The CVM's containers.
    pub containers: Vec<ContainerItem>,
}

// ---------------------------------------------------------------- deploy

/// `POST /cvms/provision`.
#[derive(Clone, Debug, Serialize)]
pub struct ProvisionAnswer {
    /// App id, hex.
    pub app_id: String,
    /// The env public key to seal to, hex.
    pub app_env_encrypt_pubkey: String,
    /// sha256 of `app-compose.json`, hex.
    pub compose_hash: String,
    /// As asked, or `tdx.small`.
    pub instance_type: String,
    /// vCPUs.
    pub vcpu: i64,
    /// Memory, MB.
    pub memory: i64,
    /// Disk, GB.
    pub disk_size: i64,
    /// Berth: the KMS's legacy signature over the key, so clients can check
    /// the key came from the KMS they trust (the `berth` CLI does).
    pub app_env_encrypt_pubkey_signature: String,
    /// Berth: the KMS's timestamped signature.
    pub app_env_encrypt_pubkey_signature_v1: String,
    /// Berth: its Unix time.
    pub app_env_encrypt_pubkey_timestamp: u64,
    /// Berth: the KMS's public key.
    pub kms_public_key: String,
}

/// `GET /kms/{kms}/pubkey/{app_id}`: exactly the two keys the official
/// schema allows.
#[derive(Clone, Debug, Serialize)]
pub struct KmsPubkey {
    /// The env public key, hex.
    pub public_key: String,
    /// The KMS's legacy signature over it, hex.
    pub signature: String,
}

/// `GET /berth/attestation-key`: the key that checks this cloud's
/// simulated quotes, and what it is.
#[derive(Clone, Debug, Serialize)]
pub struct AttestationKeyView {
    /// P-256 public key, raw `x ‖ y`, hex.
    pub attestation_public_key: String,
    /// The KMS's public key, for the GetKey signature chains.
    pub kms_public_key: String,
    /// Always `true`: there is no TEE hardware behind these quotes.
    pub simulated: bool,
    /// One sentence on what the key proves.
    pub note: &'static str,
}

// ----------------------------------------------------------------- users

/// `GET /auth/me` in the `2025-10-28` shape.
#[derive(Clone, Debug, Serialize)]
pub struct MeLegacy {
    /// Login name.
    pub username: String,
    /// `<username>@berth.local`.
    pub email: String,
    /// 0.
    pub credits: u32,
    /// 0.
    pub granted_credits: u32,
    /// Empty.
    pub avatar: &'static str,
    /// The username.
    pub team_name: String,
    /// `free`.
    pub team_tier: &'static str,
}

/// `user` of [`MeCurrent`].
#[derive(Clone, Debug, Serialize)]
pub struct MeUser {
    /// Login name.
    pub username: String,
    /// `<username>@berth.local`.
    pub email: String,
    /// `admin` or `user`.
    pub role: &'static str,
    /// Empty.
    pub avatar: &'static str,
    /// `true`.
    pub email_verified: bool,
    /// `false`.
    pub totp_enabled: bool,
    /// `false`.
    pub has_backup_codes: bool,
    /// `false`.
    pub flag_has_password: bool,
}

/// `workspace` of [`MeCurrent`]: one per user.
#[derive(Clone, Debug, Serialize)]
pub struct Workspace {
    /// The user's row id, as a string.
    pub id: String,
    /// The username.
    pub name: String,
    /// The username.
    pub slug: String,
    /// `free`.
    pub tier: &'static str,
    /// `owner`.
    pub role: &'static str,
}

/// `credits` of [`MeCurrent`]: none.
#[derive(Clone, Debug, Serialize)]
pub struct Credits {
    /// 0.
    pub balance: u32,
    /// 0.
    pub granted_balance: u32,
    /// `false`.
    pub is_post_paid: bool,
    /// `null`.
    pub outstanding_amount: Option<u32>,
}

/// `GET /auth/me` in the `2026-01-21` shape.
#[derive(Clone, Debug, Serialize)]
pub struct MeCurrent {
    /// The user.
    pub user: MeUser,
    /// Their workspace.
    pub workspace: Workspace,
    /// Their credits.
    pub credits: Credits,
}

/// `GET /auth/me` in the shape the client asked for.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Me {
    /// `2025-10-28`.
    Legacy(MeLegacy),
    /// `2026-01-21`.
    Current(MeCurrent),
}

impl Me {
    /// `user`, in `version`'s shape.
    pub fn of(user: &User, version: PhalaVersion) -> Self {
        let email = format!("{}@berth.local", user.username);
        match version {
            PhalaVersion::Legacy => Me::Legacy(MeLegacy {
                username: user.username.clone(),
                email,
                credits: 0,
                granted_credits: 0,
                avatar: "",
                team_name: user.username.clone(),
                team_tier: "free",
            }),
            PhalaVersion::Current => Me::Current(MeCurrent {
                user: MeUser {
                    username: user.username.clone(),
                    email,
                    role: if user.is_admin { "admin" } else { "user" },
                    avatar: "",
                    email_verified: true,
                    totp_enabled: false,
                    has_backup_codes: false,
                    flag_has_password: false,
                },
                workspace: Workspace {
                    id: user.id.to_string(),
                    name: user.username.clone(),
                    slug: user.username.clone(),
                    tier: "free",
                    role: "owner",
                },
                credits: Credits {
                    balance: 0,
                    granted_balance: 0,
                    is_post_paid: false,
                    outstanding_amount: None,
                },
            }),
        }
    }
}

/// A user's new key (`POST /users`, `rotate-key`), shown once.
#[derive(Clone, Debug, Serialize)]
pub struct NewKey {
    /// Login name.
    pub username: String,
    /// The key.
    pub api_key: String,
}

/// `POST /users/{name}/revoke`.
#[derive(Clone, Debug, Serialize)]
pub struct Revoked {
    /// Login name.
    pub username: String,
    /// `true`.
    pub revoked: bool,
}

// --------------------------------------------------------------- updates

/// `PATCH /cvms/{id}`: the update was accepted and the CVM restarts on it.
#[derive(Clone, Debug, Serialize)]
pub struct Updated {
    /// A fresh UUID (the official CLI requires one).
    pub correlation_id: String,
    /// `in_progress` (the CVM restarts), or `prepared` with `X-Prepare-Only`.
    pub status: &'static str,
    /// The app id (unchanged by an update).
    pub app_id: String,
    /// The compose hash the CVM boots from now on.
    pub compose_hash: String,
    /// `cloud` or `owner`.
    pub upgrade_authority: String,
    /// The counter the KMS holds for the app (an owner signs the next one).
    pub counter: u64,
    /// The new `app-compose.json`, exactly as measured (what an owner
    /// checks and signs); only with `X-Prepare-Only`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_compose: Option<String>,
    /// The app's env public key and the KMS's signatures over it, to seal a
    /// new env to; only with `X-Prepare-Only`.
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    pub env_key: Option<SignedEnvKey>,
}

/// An env public key with the KMS's signatures, in provisioning's names.
#[derive(Clone, Debug, Serialize)]
pub struct SignedEnvKey {
    /// X25519 public key, hex.
    pub app_env_encrypt_pubkey: String,
    /// Legacy signature.
    pub app_env_encrypt_pubkey_signature: String,
    /// Timestamped signature.
    pub app_env_encrypt_pubkey_signature_v1: String,
    /// Its timestamp.
    pub app_env_encrypt_pubkey_timestamp: u64,
}

/// One version of an app in [`History`].
#[derive(Clone, Debug, Serialize)]
pub struct HistoryEntry {
    /// sha256 of the manifest.
    pub compose_hash: String,
    /// `provisioned`, `cloud` or `owner key …`.
    pub authorized_by: String,
    /// The owner's counter (0 for the first manifest).
    pub counter: u64,
    /// RFC 3339.
    pub created_at: String,
    /// Whether the CVM runs this version now.
    pub current: bool,
}

/// `GET /cvms/{id}/history` (Berth): the app's accepted versions.
#[derive(Clone, Debug, Serialize)]
pub struct History {
    /// The app id.
    pub app_id: String,
    /// `cloud` or `owner`.
    pub upgrade_authority: String,
    /// The owner's public key, for an owner-authorized app.
    pub owner_key: Option<String>,
    /// The compose hash the app boots now.
    pub compose_hash: String,
    /// The counter the KMS holds for the app.
    pub counter: u64,
    /// Oldest first.
    pub versions: Vec<HistoryEntry>,
}
