//! The app manifest (`app-compose.json`), its [`Measurement`], the
//! platform's [`SysConfig`], and the names of the files in a CVM's
//! host-shared folder.

pub use crate::hex_text::normalize_hex;
pub use crate::isolation::Isolation;
use sha2::Digest as _;
use std::collections::BTreeMap;

/// `app-compose.json`: the app's manifest, measured byte-exact.
pub const APP_COMPOSE_FILE: &str = "app-compose.json";
/// The sealed env, raw bytes.
pub const ENCRYPTED_ENV_FILE: &str = "encrypted-env";
/// The platform's settings ([`SysConfig`]).
pub const SYS_CONFIG_FILE: &str = "sys-config.json";

/// The app's identity as measured from the exact bytes of its manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Measurement {
    /// sha256 of the exact `app-compose.json` bytes, 64 lowercase hex.
    pub compose_hash: String,
    /// The app id: the first 20 bytes of the compose hash, 40 lowercase hex.
    pub app_id: String,
}

impl Measurement {
    /// Measures the exact bytes of `app-compose.json`.
    pub fn of(app_compose_bytes: &[u8]) -> Self {
        let hash = hex::encode(sha2::Sha256::digest(app_compose_bytes));
        Self {
            app_id: hash[..40].to_owned(),
            compose_hash: hash,
        }
    }

    /// Measures the bytes of an app's *current* manifest, whose app id was
    /// fixed by its first manifest (an update keeps the app id, and with it
    /// the env key; the KMS knows which compose hash the app runs now).
    /// `app_id: None` is a first manifest: the app id is measured from it.
    pub fn of_app(app_compose_bytes: &[u8], app_id: Option<&str>) -> Self {
        let mut m = Self::of(app_compose_bytes);
        if let Some(id) = app_id
            .map(normalize_hex)
            .filter(|a| a.len() == 40 && a.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            m.app_id = id;
        }
        m
    }

    /// Whether `compose_hash` (64 hex) measures to `app_id` (40 hex): the
    /// app id is the hash's first 20 bytes, true of an app's first manifest
    /// (its genesis). Case-insensitive, `0x` allowed.
    pub fn hash_belongs_to(compose_hash: &str, app_id: &str) -> bool {
        let h = normalize_hex(compose_hash);
        let a = normalize_hex(app_id);
        h.len() == 64
            && a.len() == 40
            && h.bytes().all(|b| b.is_ascii_hexdigit())
            && a.bytes().all(|b| b.is_ascii_hexdigit())
            && h[..40] == a
    }
}

/// `app-compose.json` as read by the boot agent. Unknown fields are kept in
/// the measured bytes and ignored here.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct AppCompose {
    /// Manifest version.
    #[serde(default)]
    pub manifest_version: Option<serde_json::Value>,
    /// The app's name.
    pub name: String,
    /// `docker-compose` (the only runner Berth supports).
    pub runner: String,
    /// The compose YAML, as a string.
    #[serde(default)]
    pub docker_compose_file: Option<String>,
    /// Env keys that survive decryption.
    #[serde(default)]
    pub allowed_envs: Vec<String>,
    /// Whether the env key comes from the KMS.
    #[serde(default)]
    pub kms_enabled: bool,
    /// Whether the app's logs are public.
    #[serde(default)]
    pub public_logs: bool,
    /// The owner's public key (compressed secp256k1, hex) when only the
    /// owner may authorize a new compose hash for this app
    /// ([`crate::upgrade::UpgradeAuthority`]).
    #[serde(default)]
    pub berth_owner_key: Option<String>,
    /// The app's image policy ([`crate::image_policy`]), as written; read
    /// and checked by [`AppCompose::image_policy`].
    #[serde(default)]
    pub berth_image_policy: Option<serde_json::Value>,
}

impl AppCompose {
    /// Who may authorize a new compose hash for this app. Decided by the
    /// app's first manifest (which the app id measures), so a control plane
    /// cannot change it later.
    pub fn upgrade_authority(&self) -> crate::upgrade::UpgradeAuthority {
        crate::upgrade::UpgradeAuthority::of_owner_key(self.berth_owner_key.as_deref())
    }

    /// The app's image policy, checked; `None` when the manifest has none
    /// (or an empty one).
    pub fn image_policy(
        &self,
    ) -> Result<Option<crate::image_policy::ImagePolicy>, crate::image_policy::ImagePolicyError>
    {
        match &self.berth_image_policy {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => {
                let p = crate::image_policy::ImagePolicy::from_value(v)?;
                Ok((!p.is_empty()).then_some(p))
            }
        }
    }
}

/// What provisioning puts into a new manifest.
#[derive(Clone, Debug)]
pub struct AppComposeInput<'a> {
    /// The app's name.
    pub name: &'a str,
    /// The compose YAML.
    pub docker_compose_file: &'a str,
    /// Env keys allowed into the CVM (duplicates are dropped, order kept).
    pub allowed_envs: &'a [String],
    /// Whether the app's logs are public.
    pub public_logs: bool,
    /// Whether the app's system info is public.
    pub public_sysinfo: bool,
    /// The owner's random per-user salt (hex), rendered as `berth_owner`:
    /// the same compose file from two users measures to two app ids (and
    /// two env keys), from one user always to the same. `None` renders no
    /// such field.
    pub owner: Option<&'a str>,
    /// The owner's upgrade key (compressed secp256k1 public key, hex),
    /// rendered as `berth_owner_key`: only compose hashes that key signs are
    /// ever given the app's env key. `None`: cloud-authorized upgrades.
    pub owner_key: Option<&'a str>,
}

impl AppComposeInput<'_> {
    /// The manifest bytes, keys in a fixed (sorted) order so they are stable
    /// and documented. Validation is the caller's ([`crate::policy`],
    /// [`crate::env_rules`]).
    pub fn render(&self) -> Vec<u8> {
        self.render_with_policy(None)
    }

    /// The manifest bytes with the app's image policy (rendered as
    /// `berth_image_policy`, so the compose hash measures it; an empty
    /// policy renders no field).
    pub fn render_with_policy(
        &self,
        image_policy: Option<&crate::image_policy::ImagePolicy>,
    ) -> Vec<u8> {
        let mut allowed: Vec<&String> = Vec::new();
        for k in self.allowed_envs {
            if !allowed.contains(&k) {
                allowed.push(k);
            }
        }
        // serde_json's `preserve_order` is off: a `json!` object is a
        // BTreeMap, so the keys come out sorted.
        let mut value = serde_json::json!({
            "allowed_envs": allowed,
            "docker_compose_file": self.docker_compose_file,
            "features": ["kms"],
            "gateway_enabled": false,
            "kms_enabled": true,
            "local_key_provider_enabled": false,
            "manifest_version": 2,
            "name": self.name,
            "no_instance_id": false,
            "public_logs": self.public_logs,
            "public_sysinfo": self.public_sysinfo,
            "public_tcbinfo": false,
            "runner": "docker-compose",
            "secure_time": false,
        });
        if let Some(owner) = self.owner {
            value["berth_owner"] = serde_json::Value::from(owner);
        }
        if let Some(key) = self.owner_key {
            value["berth_owner_key"] = serde_json::Value::from(normalize_hex(key));
        }
        if let Some(policy) = image_policy.filter(|p| !p.is_empty()) {
            value[crate::image_policy::IMAGE_POLICY_FIELD] =
                serde_json::to_value(policy).expect("json");
        }
        serde_json::to_vec(&value).expect("json")
    }
}

/// `sys-config.json`: what the platform (not the app) tells the boot agent.
/// Written by the node, read by the boot agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SysConfig {
    /// The KMS to ask for the env key: `unix:/path/to/kms.sock` (local
    /// mode) or an `http(s)://` URL.
    pub kms_url: Option<String>,
    /// Registry name to endpoint URL (mirrors, caches, test registries).
    /// These are also the only registries a CVM may reach on loopback or
    /// private addresses.
    pub registry_endpoints: BTreeMap<String, String>,
    /// Extra trusted CA certificates, PEM text.
    pub ca_certs: Vec<String>,
    /// ECR API endpoint override.
    pub aws_endpoint_url_ecr: Option<String>,
    /// The compose project name (the node sets one unique per CVM).
    pub project_name: Option<String>,
    /// The CVM's instance id.
    pub instance_id: Option<String>,
    /// App id pinned by the platform instead of the measured one.
    pub app_id: Option<String>,
    /// The CVM's vCPUs in thousandths (1000 = one CPU): the CPU limit of
    /// each of its containers. `None`: no limit.
    pub cpu_millis: Option<u64>,
    /// The CVM's memory in MiB: the memory limit of each of its
    /// containers. `None`: no limit.
    pub memory_mb: Option<u64>,
    /// The most processes the CVM may run. `None`:
    /// [`DEFAULT_CVM_PIDS`].
    pub pids_max: Option<u64>,
    /// The cgroup the node made to hold the CVM as a whole (its vCPUs,
    /// memory and processes); `None`: each container gets a share.
    pub cgroup_parent: Option<String>,
    /// Host ports the CVM may not publish, besides those of the mapped
    /// registries (the API's, say).
    pub reserved_ports: Vec<crate::policy::ReservedPort>,
    /// The host folder of this CVM's guest agent sockets (`dstack.sock`,
    /// `tappd.sock`), which the node binds and serves: a service that
    /// mounts the agent socket gets these. `None`: no guest agent.
    pub agent_socket_dir: Option<String>,
    /// The CVM's isolation boundary, which decides the compose rules the
    /// boot agent applies ([`crate::policy::ComposeFile::parse_for`]).
    /// Absent in older files: [`Isolation::Shared`].
    pub isolation: Isolation,
}

/// The processes a CVM may run when the platform does not say.
pub const DEFAULT_CVM_PIDS: u64 = 4096;

/// Each container's log is rotated at this size…
pub const CONTAINER_LOG_MAX_BYTES: u64 = 10 << 20;

/// …and this many files are kept.
pub const CONTAINER_LOG_MAX_FILES: u64 = 3;

impl SysConfig {
    /// The limits every service of the CVM runs with.
    pub fn limits(&self) -> crate::policy::ServiceLimits {
        crate::policy::ServiceLimits {
            cpu_millis: self.cpu_millis.filter(|c| *c > 0),
            memory_bytes: self
                .memory_mb
                .filter(|m| *m > 0)
                .map(|m| m.saturating_mul(1 << 20)),
            pids: Some(self.pids_max.filter(|p| *p > 0).unwrap_or(DEFAULT_CVM_PIDS)),
            cgroup_parent: self.cgroup_parent.clone(),
            log_max_bytes: Some(CONTAINER_LOG_MAX_BYTES),
            log_max_files: Some(CONTAINER_LOG_MAX_FILES),
            agent_socket_dir: self.agent_socket_dir.clone(),
        }
    }

    /// Every host port the CVM may not publish: [`SysConfig::reserved_ports`]
    /// and the mapped registries' (see
    /// [`crate::policy::registry_reserved_ports`]).
    pub fn all_reserved_ports(&self) -> Vec<crate::policy::ReservedPort> {
        let mut all = self.reserved_ports.clone();
        all.extend(crate::policy::registry_reserved_ports(
            &self.registry_endpoints,
        ));
        all
    }
}

impl SysConfig {
    /// The JSON text written to the shared folder.
    pub fn render(&self) -> String {
        serde_json::to_string_pretty(self).expect("json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measurement_is_sha256_of_exact_bytes() {
        let m = Measurement::of(b"{}");
        assert_eq!(
            m.compose_hash,
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(m.app_id, "44136fa355b3678a1146ad16f7e8649e94fb4fc2");
        assert_ne!(Measurement::of(b"{} ").compose_hash, m.compose_hash);
        assert!(Measurement::hash_belongs_to(&m.compose_hash, &m.app_id));
        assert!(!Measurement::hash_belongs_to(&m.app_id, &m.app_id));
    }

    #[test]
    fn owner_salt_changes_the_app_id() {
        let envs = vec!["A".to_string()];
        let input = |owner| AppComposeInput {
            name: "my-app",
            docker_compose_file: "services: {}\n",
            allowed_envs: &envs,
            public_logs: true,
            public_sysinfo: true,
            owner,
            owner_key: None,
        };
        let none = input(None).render();
        assert!(!String::from_utf8_lossy(&none).contains("berth_owner"));
        let a = Measurement::of(&input(Some("aa11")).render());
        let b = Measurement::of(&input(Some("bb22")).render());
        assert_ne!(a.app_id, b.app_id);
        assert_eq!(a, Measurement::of(&input(Some("aa11")).render()));
        let v: serde_json::Value = serde_json::from_slice(&input(Some("aa11")).render()).unwrap();
        assert_eq!(v["berth_owner"], "aa11");
        // Keys stay sorted: the field lands between allowed_envs and docker_compose_file.
        let text = String::from_utf8(input(Some("aa11")).render()).unwrap();
        assert!(text.find("\"allowed_envs\"") < text.find("\"berth_owner\""));
        assert!(text.find("\"berth_owner\"") < text.find("\"docker_compose_file\""));
    }

    #[test]
    fn sys_config_round_trips() {
        let mut c = SysConfig {
            kms_url: Some("unix:/x/kms.sock".into()),
            ..Default::default()
        };
        c.registry_endpoints
            .insert("ghcr.io".into(), "http://127.0.0.1:5000".into());
        let back: SysConfig = serde_json::from_str(&c.render()).unwrap();
        assert_eq!(back, c);
        c.isolation = Isolation::Container;
        assert!(c.render().contains("\"isolation\": \"container\""));
        let back: SysConfig = serde_json::from_str(&c.render()).unwrap();
        assert_eq!(back.isolation, Isolation::Container);
    }

    #[test]
    fn sys_config_without_isolation_is_shared() {
        let old: SysConfig = serde_json::from_str(r#"{"kms_url":"unix:/k.sock"}"#).unwrap();
        assert_eq!(old.isolation, Isolation::Shared);
        assert_eq!(Isolation::default(), Isolation::Shared);
        assert_eq!(Isolation::Container.to_string(), "container");
        assert_eq!(Isolation::Shared.to_string(), "shared");
        let bad = serde_json::from_str::<SysConfig>(r#"{"isolation":"vm"}"#);
        assert!(bad.is_err());
    }
}
