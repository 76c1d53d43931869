//! The Docker engine the node uses: the configured one, else the system's
//! socket, else a private `dockerd` under the state folder.

use super::UpError;
use super::children::set_parent_death_signal;
use super::state::fresh_private_tmp_dir;
use crate::node::private_dir;
use contract::app::{CONTAINER_LOG_MAX_BYTES, CONTAINER_LOG_MAX_FILES};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

/// The system engine's socket.
const SYSTEM_SOCKET: &str = "/var/run/docker.sock";

/// The engine's address (`unix://…`), and the private `dockerd` when this
/// call started one (it dies with this process).
pub(crate) async fn docker_host(
    configured: Option<&str>,
    state: &Path,
    registry_endpoints: &BTreeMap<String, String>,
) -> Result<(String, Option<tokio::process::Child>), UpError> {
    if let Some(h) = configured.filter(|h| !h.is_empty()) {
        return Ok((h.to_owned(), None));
    }
    let system = format!("unix://{SYSTEM_SOCKET}");
    if Path::new(SYSTEM_SOCKET).exists() && ping(&system).await {
        return Ok((system, None));
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("dockerd").is_file()))
        .unwrap_or(false);
    if !on_path {
        return Err(UpError::NoDockerEngine);
    }
    // The engine's socket and exec-root live in the private state folder;
    // when that path is too long for a Unix socket (108 bytes), in a fresh
    // folder with a random name that this call creates itself (never one
    // that already exists, which another user could have made first).
    let mut run = state.join("run");
    if run.join("docker.sock").as_os_str().len() > 100 {
        run =
            fresh_private_tmp_dir().map_err(UpError::io("cannot create the dockerd run folder"))?;
    }
    private_dir(&run).map_err(UpError::io("cannot create the dockerd run folder"))?;
    check_pool(registry_endpoints)?;
    let data = state.join("docker");
    std::fs::create_dir_all(&data).map_err(UpError::io("cannot create the dockerd data folder"))?;
    let host = format!("unix://{}", run.join("docker.sock").display());
    let log_path = state.join("dockerd.log");
    let log = std::fs::File::create(&log_path).map_err(UpError::io("dockerd log"))?;
    let mut dockerd = tokio::process::Command::new("dockerd");
    // The engine has no business with the database (its URL may hold a
    // password).
    dockerd.env_remove("BERTH_DATABASE_URL");
    set_parent_death_signal(dockerd.as_std_mut());
    let child = dockerd
        .arg("--host")
        .arg(&host)
        .arg("--data-root")
        .arg(&data)
        .arg("--exec-root")
        .arg(run.join("exec"))
        .arg("--pidfile")
        .arg(run.join("docker.pid"))
        // The engine's own firewall rules isolate the CVMs' networks from
        // each other (with `--iptables=false` a host that forwards lets one
        // CVM's container reach another's), its address pool is Berth's
        // own range, and every container's log is rotated.
        .args([
            "--iptables=true",
            "--ip6tables=false",
            "--bridge=none",
            "--log-level=warn",
        ])
        .arg(format!(
            "--default-address-pool=base={CVM_ADDRESS_POOL},size=24"
        ))
        .arg(format!("--log-opt=max-size={CONTAINER_LOG_MAX_BYTES}"))
        .arg(format!("--log-opt=max-file={CONTAINER_LOG_MAX_FILES}"))
        .stdout(log.try_clone().map_err(UpError::io("dockerd log"))?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(UpError::io("cannot start dockerd"))?;
    for _ in 0..600 {
        if ping(&host).await {
            return Ok((host, Some(child)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(UpError::DockerdSilent { log: log_path })
}

/// The range the private engine takes every CVM network's subnet from (a
/// /24 each): Berth's own, so a CVM never gets a subnet of the file's
/// choosing, and the engine's default pools stay for the host.
pub const CVM_ADDRESS_POOL: &str = "10.240.0.0/12";

/// Refuses to start when a mapped registry's address lies in
/// [`CVM_ADDRESS_POOL`]: a CVM network would be given that address, and a
/// boot's pull would reach the CVM instead of the registry.
fn check_pool(registry_endpoints: &BTreeMap<String, String>) -> Result<(), UpError> {
    let (base, bits) = CVM_ADDRESS_POOL.split_once('/').expect("a CIDR");
    let base = u32::from(base.parse::<Ipv4Addr>().expect("an IPv4 address"));
    let mask = u32::MAX << (32 - bits.parse::<u32>().expect("a prefix length"));
    for (name, url) in registry_endpoints {
        let host = url
            .split_once("://")
            .map_or(url.as_str(), |(_, r)| r)
            .split(['/', ':'])
            .next()
            .unwrap_or_default();
        if let Ok(ip) = host.parse::<Ipv4Addr>()
            && u32::from(ip) & mask == base & mask
        {
            return Err(UpError::RegistryInCvmPool {
                registry: name.clone(),
                address: ip.to_string(),
                pool: CVM_ADDRESS_POOL,
            });
        }
    }
    Ok(())
}

/// Whether the engine at `host` answers `/_ping` within 2 s.
async fn ping(host: &str) -> bool {
    let Ok(docker) = bollard::Docker::connect_with_host(host) else {
        return false;
    };
    let docker = docker.with_timeout(Duration::from_secs(2));
    matches!(
        tokio::time::timeout(Duration::from_secs(2), docker.ping()).await,
        Ok(Ok(_))
    )
}
