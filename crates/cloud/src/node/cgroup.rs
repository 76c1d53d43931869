//! The CVM's cgroup: one cgroup per CVM that holds its vCPUs, memory and
//! processes as a whole, with every container of the CVM placed under it
//! (`cgroup_parent` in the rendered compose file).
//!
//! Per-container limits alone do not bound a CVM: `scale: 12` is twelve
//! full-size containers. A VM has one budget; this is its equivalent on a
//! shared engine. Made only where the node can: an engine on this host
//! with the `cgroupfs` driver, and a writable cgroup file system (v1 or
//! v2). Elsewhere the boot agent gives each container an equal share of
//! the CVM instead (`contract::policy::ServiceLimits::cgroup_parent`), and
//! the serial log says so.
//!
//! Written by hand: the few files of the cgroup interface are simpler than
//! a crate, and no crate on crates.io covers both versions without pulling
//! in systemd bindings.

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// The folder under which Berth's CVM cgroups live.
const BERTH: &str = "berth";

/// What bounds a CVM.
#[derive(Clone, Copy, Debug)]
pub(super) struct CvmResources {
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub pids: u64,
}

/// The engine's `cgroup_parent` for `project` (`/berth/<project>`).
fn parent_of(project: &str) -> String {
    format!("/{BERTH}/{project}")
}

/// Makes (or updates) the cgroup of the CVM whose compose project is
/// `project`; its `cgroup_parent`, or why there is none.
pub(super) async fn prepare(
    docker: &bollard::Docker,
    docker_host: &str,
    project: &str,
    res: CvmResources,
) -> Result<String, String> {
    if !docker_host.starts_with("unix://") {
        return Err("the engine is not on this host".into());
    }
    let info = docker
        .info()
        .await
        .map_err(|e| format!("the engine did not say its cgroup driver ({e})"))?;
    let driver = info
        .cgroup_driver
        .map(|d| d.to_string())
        .unwrap_or_default();
    if driver != "cgroupfs" {
        return Err(format!(
            "the engine's cgroup driver is `{driver}`, not `cgroupfs`"
        ));
    }
    let owned = project.to_owned();
    tokio::task::spawn_blocking(move || write(Path::new(ROOT), &owned, res))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot write the cgroup: {e}"))?;
    Ok(parent_of(project))
}

pub(super) fn write(root: &Path, project: &str, res: CvmResources) -> std::io::Result<()> {
    if root.join("cgroup.controllers").exists() {
        write_v2(root, project, res)
    } else {
        write_v1(root, project, res)
    }
}

fn write_v2(root: &Path, project: &str, res: CvmResources) -> std::io::Result<()> {
    let berth = root.join(BERTH);
    std::fs::create_dir_all(&berth)?;
    // The controllers must be enabled on every level above the CVM's.
    for dir in [root, berth.as_path()] {
        let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+memory +pids +cpu");
    }
    let dir = berth.join(project);
    std::fs::create_dir_all(&dir)?;
    if let Some(m) = res.memory_bytes {
        std::fs::write(dir.join("memory.max"), m.to_string())?;
        let _ = std::fs::write(dir.join("memory.swap.max"), "0");
    }
    std::fs::write(dir.join("pids.max"), res.pids.to_string())?;
    if let Some(c) = res.cpu_millis {
        std::fs::write(dir.join("cpu.max"), format!("{} 100000", c * 100))?;
    }
    Ok(())
}

fn write_v1(root: &Path, project: &str, res: CvmResources) -> std::io::Result<()> {
    let dir = |controller: &str| -> std::io::Result<PathBuf> {
        let d = root.join(controller).join(BERTH).join(project);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    };
    if let Some(m) = res.memory_bytes {
        let d = dir("memory")?;
        std::fs::write(d.join("memory.limit_in_bytes"), m.to_string())?;
        // Memory plus swap no more than memory (where swap is accounted).
        let _ = std::fs::write(d.join("memory.memsw.limit_in_bytes"), m.to_string());
    }
    std::fs::write(dir("pids")?.join("pids.max"), res.pids.to_string())?;
    if let Some(c) = res.cpu_millis {
        let d = dir("cpu")?;
        std::fs::write(d.join("cpu.cfs_period_us"), "100000")?;
        std::fs::write(d.join("cpu.cfs_quota_us"), (c * 100).to_string())?;
    }
    Ok(())
}

/// Removes the CVM's cgroup (after its containers are gone); what cannot
/// be removed stays, empty.
pub(super) fn remove(project: &str) {
    let root = Path::new(ROOT);
    let _ = std::fs::remove_dir(root.join(BERTH).join(project));
    for controller in ["memory", "pids", "cpu"] {
        let _ = std::fs::remove_dir(root.join(controller).join(BERTH).join(project));
    }
}

/// Removes every CVM cgroup that holds no process and is older than ten
/// minutes: those of CVMs deleted while no node ran, or whose state went
/// away. A cgroup with a process in
/// it cannot be removed (the kernel refuses), so a running CVM's, of this
/// node or another, stays; an empty one of a stopped CVM is made again at
/// its next boot.
pub(super) fn remove_unused() {
    let root = Path::new(ROOT);
    for parent in [
        root.join(BERTH),
        root.join("memory").join(BERTH),
        root.join("pids").join(BERTH),
        root.join("cpu").join(BERTH),
    ] {
        for entry in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            // One made in the last minutes may be a boot's (of another
            // node) whose containers are not in it yet.
            let recent = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age < std::time::Duration::from_secs(600));
            if entry.file_type().is_ok_and(|t| t.is_dir()) && !recent {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_files() {
        let res = CvmResources {
            cpu_millis: Some(1500),
            memory_bytes: Some(512 << 20),
            pids: 300,
        };
        let base = std::env::temp_dir().join(format!("berth-cgroup-test-{}", std::process::id()));
        let (v1, v2) = (base.join("v1"), base.join("v2"));
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::create_dir_all(&v2).unwrap();
        write(&v1, "berth-abc", res).unwrap();
        let read = |p: &str| std::fs::read_to_string(v1.join(p)).unwrap();
        assert_eq!(
            read("memory/berth/berth-abc/memory.limit_in_bytes"),
            (512u64 << 20).to_string()
        );
        assert_eq!(read("pids/berth/berth-abc/pids.max"), "300");
        assert_eq!(read("cpu/berth/berth-abc/cpu.cfs_quota_us"), "150000");
        std::fs::write(v2.join("cgroup.controllers"), "cpu memory pids").unwrap();
        write(&v2, "berth-abc", res).unwrap();
        let read = |p: &str| std::fs::read_to_string(v2.join(p)).unwrap();
        assert_eq!(read("berth/berth-abc/pids.max"), "300");
        assert_eq!(read("berth/berth-abc/cpu.max"), "150000 100000");
        std::fs::remove_dir_all(&base).unwrap();
        assert_eq!(parent_of("berth-abc"), "/berth/berth-abc");
    }
}
