//! The system container a CVM runs in under `--isolation container`: a
//! machine of its own, with its own Docker engine.
//!
//! Each CVM gets a **slot**, a host user `berth-cvm-NNN` with a 65,536-id
//! subuid/subgid range of its own (made once, reused). Slots are claimed
//! host-wide in `/var/lib/berth/slots/<n>` (two clouds on one host never
//! share one), recorded in the CVM folder's `slot` file, and released when
//! the CVM is deleted (a claim whose folder is gone is taken over). The node starts, in the
//! CVM's cgroup (every v1 hierarchy, or one v2 cgroup: the CVM's vCPUs,
//! memory and processes bound the whole machine), as the slot's user:
//!
//! ```text
//! setpriv --reuid=SLOT … rootlesskit --net=slirp4netns --disable-host-loopback
//!     --port-driver=builtin --pidns --ipcns --utsns --cgroupns  sh init.sh
//!   └─ init.sh (root of the CVM's user namespace): builds the CVM's root file
//!      system (the host's /usr read-only, its own /etc, /run, /tmp, /dev,
//!      /proc, /sys and cgroups; /var/lib/docker = its disk, /tapp = its
//!      shared files, /run/berth/agent = its guest-agent sockets), pivots
//!      into it, and becomes its dockerd
//! ```
//!
//! **Nothing the host uses is a path the CVM controls.** The engine's
//! socket is bound by the node in a root-owned folder (`engine/`) and handed
//! to dockerd as its standard input (socket activation, `--host fd://`), so
//! the node and the boot agent never connect to a file the CVM could have
//! replaced. rootlesskit's state and port API (`rk/`) stay outside the CVM:
//! only the node publishes ports (`rootlessctl add-ports`), each declared
//! by the compose file. The host's loopback is unreachable from inside
//! (`--disable-host-loopback`); the CVM's outbound network is slirp4netns.
//!
//! **Teardown** (stop, delete, a failed boot): every process in the CVM's
//! cgroup gets SIGKILL, and the cgroups are removed; the mounts, the
//! namespaces, slirp4netns and the published ports go with the processes.
//!
//! Written by hand around Debian's tools (rootlesskit, slirp4netns, uidmap,
//! util-linux): no crate runs a rootless system container with its own
//! engine; the probe that chose this design is `scripts/isolation-probe.sh`
//! and its numbers are in `docs/isolation.md`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The CVM's init, run inside its namespaces.
const INIT_SCRIPT: &str = include_str!("init.sh");

/// Host users of CVM slots: `berth-cvm-000`, …
const SLOT_USER_PREFIX: &str = "berth-cvm-";

/// The first subuid of slot 0; slot `n` has `SUBID_BASE + n·65536`, 65,536 ids.
const SUBID_BASE: u64 = 1_000_000_000;

/// Ids per slot (a full 16-bit range: containers inside use uids up to 65,535).
const SUBID_COUNT: u64 = 65_536;

/// The most slots a node makes.
const MAX_SLOTS: u32 = 1000;

/// How long a CVM's engine has to answer after its start.
const ENGINE_DEADLINE: Duration = Duration::from_secs(60);

/// Programs the container mode needs on the host, and their Debian package.
const TOOLS: &[(&str, &str)] = &[
    ("rootlesskit", "rootlesskit"),
    ("rootlessctl", "rootlesskit"),
    ("slirp4netns", "slirp4netns"),
    ("newuidmap", "uidmap"),
    ("newgidmap", "uidmap"),
    ("setpriv", "util-linux"),
    ("nsenter", "util-linux"),
    ("useradd", "passwd"),
    ("usermod", "passwd"),
    ("dockerd", "docker.io"),
    ("docker-proxy", "docker.io"),
];

/// Folders of a CVM in container mode (under its CVM folder).
pub(super) const DISK_DIR: &str = "disk";
const ROOT_DIR: &str = "root";
const RK_DIR: &str = "rk";
const ENGINE_DIR: &str = "engine";
const ENGINE_SOCKET: &str = "docker.sock";
const SLOT_FILE: &str = "slot";
const INIT_FILE: &str = "init.sh";

/// Whether this host can run CVMs in system containers; the sentence that
/// says what is missing and what to do otherwise. Makes `/dev/net/tun`
/// usable from user namespaces (mode 0666, Debian's default) if it is not.
pub fn check_host() -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "`--isolation container` needs root on the host (it makes a user and a cgroup per CVM): run `berth up` as root, or use `--isolation shared`"
                .into(),
        );
    }
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, _)| which(tool).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        let mut pkgs = missing.clone();
        pkgs.dedup();
        return Err(format!(
            "`--isolation container` needs programs this host lacks: install them with `apt-get install {}`",
            pkgs.join(" ")
        ));
    }
    let tun = Path::new("/dev/net/tun");
    match std::fs::metadata(tun) {
        Err(_) => {
            return Err(
                "`--isolation container` needs /dev/net/tun (the CVMs' network): load the `tun` module"
                    .into(),
            );
        }
        Ok(m) if m.permissions().mode() & 0o006 != 0o006 => {
            std::fs::set_permissions(tun, std::fs::Permissions::from_mode(0o666))
                .map_err(|e| format!("cannot make /dev/net/tun usable by CVMs (mode 0666): {e}"))?;
            notes.push(format!(
                "made /dev/net/tun mode 0666 (was {:o}, Debian's default is 0666): each CVM's network opens it from its own user namespace",
                m.permissions().mode() & 0o777
            ));
        }
        Ok(_) => {}
    }
    Ok(notes)
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// A CVM's host user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Slot {
    pub index: u32,
    pub user: String,
    pub uid: u32,
    pub gid: u32,
}

/// Serialises slot allocation within the node.
static SLOTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Where slots are claimed, for the whole host: `<here>/<n>` holds the CVM
/// folder that has slot `n`. Host users are host-wide, so two clouds (two
/// state folders) on one host must never give two CVMs the same one.
const SLOT_CLAIMS: &str = "/var/lib/berth/slots";

/// Claims slot `index` in the folder of claims `claims` for the CVM folder
/// `dir`: true when it is `dir`'s now. A claim whose folder no longer has
/// that slot (deleted without a node, or by hand) is stale and taken over.
fn claim(claims: &Path, index: u32, dir: &Path) -> std::io::Result<bool> {
    use std::io::Write;
    let path = claims.join(index.to_string());
    for _ in 0..2 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(dir.as_os_str().as_encoded_bytes())?;
                f.sync_all()?;
                return Ok(true);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = PathBuf::from(std::fs::read_to_string(&path).unwrap_or_default());
                if holder == dir {
                    return Ok(true);
                }
                if read_slot(&holder) == Some(index) {
                    return Ok(false);
                }
                let _ = std::fs::remove_file(&path);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// The slot recorded in the CVM folder `dir`.
fn read_slot(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join(SLOT_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The slot of the CVM folder `dir`: the one it has, or the lowest one no
/// CVM on this host has, claimed and recorded now. Its user and subid
/// ranges exist when this returns.
pub(super) fn slot_for(dir: &Path) -> Result<Slot, String> {
    let _guard = SLOTS.lock().unwrap();
    let claims = Path::new(SLOT_CLAIMS);
    std::fs::create_dir_all(claims)
        .and_then(|()| std::fs::set_permissions(claims, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| format!("cannot make {SLOT_CLAIMS}: {e}"))?;
    let claimed = |i: u32| claim(claims, i, dir).map_err(|e| format!("cannot claim slot {i}: {e}"));
    let index = match read_slot(dir) {
        Some(i) if claimed(i)? => i,
        Some(i) => {
            return Err(format!(
                "the CVM's slot {i} is another CVM's on this host (its folder was copied?): delete the CVM and deploy it again"
            ));
        }
        None => {
            let mut found = None;
            for i in 0..MAX_SLOTS {
                if claimed(i)? {
                    found = Some(i);
                    break;
                }
            }
            let free = found.ok_or_else(|| {
                format!("this host runs {MAX_SLOTS} CVMs in containers already: delete one first")
            })?;
            super::files::write_private(&dir.join(SLOT_FILE), free.to_string().as_bytes())
                .map_err(|e| format!("cannot record the CVM's slot: {e}"))?;
            free
        }
    };
    ensure_user(index)
}

/// Gives up the slot of the CVM folder `dir` (before the folder goes).
pub(super) fn release(dir: &Path) {
    let _guard = SLOTS.lock().unwrap();
    if let Some(i) = read_slot(dir) {
        let path = Path::new(SLOT_CLAIMS).join(i.to_string());
        if std::fs::read_to_string(&path).is_ok_and(|h| Path::new(&h) == dir) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The slot's user, group and subid ranges, made if missing.
fn ensure_user(index: u32) -> Result<Slot, String> {
    let user = format!("{SLOT_USER_PREFIX}{index:03}");
    if lookup(&user).is_none() {
        let out = std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
                "--comment",
                "Berth CVM slot",
                &user,
            ])
            .output()
            .map_err(|e| format!("cannot run useradd: {e}"))?;
        // Another node process may have made it meanwhile.
        if !out.status.success() && lookup(&user).is_none() {
            return Err(format!(
                "cannot make the CVM user {user}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    let (uid, gid) = lookup(&user).ok_or_else(|| format!("the CVM user {user} vanished"))?;
    let first = SUBID_BASE + u64::from(index) * SUBID_COUNT;
    let range = format!("{first}-{}", first + SUBID_COUNT - 1);
    let has = |file: &str| {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .any(|l| l == format!("{user}:{first}:{SUBID_COUNT}"))
    };
    let mut args: Vec<String> = Vec::new();
    if !has("/etc/subuid") {
        args.extend(["--add-subuids".into(), range.clone()]);
    }
    if !has("/etc/subgid") {
        args.extend(["--add-subgids".into(), range]);
    }
    if !args.is_empty() {
        let out = std::process::Command::new("usermod")
            .args(&args)
            .arg(&user)
            .output()
            .map_err(|e| format!("cannot run usermod: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot give the CVM user {user} its id range: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(Slot {
        index,
        user,
        uid,
        gid,
    })
}

/// The uid and gid of `user`, from the system's user database.
fn lookup(user: &str) -> Option<(u32, u32)> {
    let name = std::ffi::CString::new(user).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; it is
    // read at once, under the SLOTS lock (the node's only caller).
    unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        if pw.is_null() {
            None
        } else {
            Some(((*pw).pw_uid, (*pw).pw_gid))
        }
    }
}

/// What bounds the CVM as a whole.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bounds {
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub pids: u64,
}

/// A started CVM machine.
#[derive(Clone, Debug)]
pub(super) struct Machine {
    /// Its init's pid on the host (what `nsenter --target` takes).
    pub init_pid: i32,
    /// Its engine's socket (`unix://…`), bound by the node.
    pub docker_host: String,
}

/// The engine socket of the CVM folder `dir`.
pub(super) fn docker_host_of(dir: &Path) -> String {
    format!(
        "unix://{}",
        dir.join(ENGINE_DIR).join(ENGINE_SOCKET).display()
    )
}

/// The cgroup folders of `project`: (controller, folder) for every v1
/// hierarchy, or one `cgroup2` folder.
fn cgroups(project: &str) -> Vec<(String, PathBuf)> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![("cgroup2".into(), root.join("berth").join(project))];
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Symlinks (cpu -> cpu,cpuacct) name a hierarchy already listed;
        // `unified` is the empty v2 mount of a hybrid host.
        if name == "unified" || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        out.push((name, e.path().join("berth").join(project)));
    }
    out
}

/// Makes the CVM's cgroups with its bounds.
fn make_cgroups(project: &str, bounds: Bounds) -> std::io::Result<Vec<(String, PathBuf)>> {
    let list = cgroups(project);
    for (controller, dir) in &list {
        std::fs::create_dir_all(dir)?;
        // Readable (not writable) from inside: the CVM's engine reads its
        // cgroups, and a folder it may not even enter (the node's umask
        // makes 0700) fails every container start.
        for d in [dir.as_path(), dir.parent().expect("berth folder")] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
        }
        if controller == "cpuset" {
            // A new v1 cpuset has no CPUs and no memory nodes until told.
            let parent = dir.parent().expect("berth folder");
            let root = parent.parent().expect("hierarchy");
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let v = std::fs::read_to_string(root.join(f))?;
                let _ = std::fs::write(parent.join(f), &v);
                std::fs::write(dir.join(f), &v)?;
            }
        }
    }
    let res = super::cgroup::CvmResources {
        cpu_millis: bounds.cpu_millis,
        memory_bytes: bounds.memory_bytes,
        pids: bounds.pids,
    };
    let project = project.to_owned();
    super::cgroup::write(Path::new("/sys/fs/cgroup"), &project, res)?;
    Ok(list)
}

/// SIGKILL to every process of the CVM (found through its cgroups), until
/// none is left or 10 s have passed; then its cgroups are removed. True
/// when nothing is left.
pub(super) async fn kill(project: &str) -> bool {
    let list = cgroups(project);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = 0;
        for (_, dir) in &list {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                left += 1;
            }
        }
        if left == 0 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut clean = true;
    for (_, dir) in &list {
        if dir.exists() && std::fs::remove_dir(dir).is_err() {
            clean = false;
        }
    }
    clean
}

/// Whether a process of the CVM still runs.
pub(super) fn alive(project: &str) -> bool {
    cgroups(project).iter().any(|(_, dir)| {
        std::fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty())
    })
}

/// `chown` of `path` to the slot.
fn give(path: &Path, slot: &Slot) -> std::io::Result<()> {
    // Never through a link: the link itself, if one were ever planted.
    std::os::unix::fs::lchown(path, Some(slot.uid), Some(slot.gid))
}

/// A folder of the CVM: made if missing, owned by the slot, 0700.
fn slot_dir(path: &Path, slot: &Slot) -> std::io::Result<()> {
    std::fs::create_dir_all(path)?;
    give(path, slot)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// Gives the CVM (the slot's user) what it must reach through its folder:
/// the folder and `state/` are traversable (0711, not listable), its
/// shared files are the slot's, its compose folder readable by the slot's
/// group, and the guest agent's sockets are the slot's (their folder stays
/// the node's).
pub(super) fn hand_over(dir: &Path, compose_dir: &Path, slot: &Slot) -> std::io::Result<()> {
    for d in [dir, &dir.join("state")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711))?;
    }
    let shared = dir.join("shared");
    give(&shared, slot)?;
    for e in std::fs::read_dir(&shared)?.flatten() {
        give(&e.path(), slot)?;
    }
    // The boot agent's compose folder: the node's (the CVM must not be able
    // to plant links where the agent writes as root), readable by the
    // slot's group (the agent makes its files so, `guest::runtime`).
    std::fs::create_dir_all(compose_dir)?;
    std::os::unix::fs::chown(compose_dir, Some(0), Some(slot.gid))?;
    std::fs::set_permissions(compose_dir, std::fs::Permissions::from_mode(0o750))?;
    hand_agent_sockets(&dir.join(super::layout::AGENT_DIR), slot)
}

/// The guest agent's socket folder becomes traversable and its sockets the
/// slot's (mode 0600: the CVM, and root, may connect; nobody else).
pub(super) fn hand_agent_sockets(agent_dir: &Path, slot: &Slot) -> std::io::Result<()> {
    std::fs::set_permissions(agent_dir, std::fs::Permissions::from_mode(0o711))?;
    for name in super::layout::AGENT_SOCKETS {
        let p = agent_dir.join(name);
        if p.exists() {
            give(&p, slot)?;
            // Bound 0666 for the shared mode's 0700 folder; here the folder
            // is traversable, so the socket itself is the slot's alone.
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// Where the node shows each machine its own folder: `<here>/<cvm id>` is a
/// bind mount of the CVM's folder (in the host's mount namespace), so the
/// CVM's host user reaches its folders without passing through the state
/// folder's parents, which may be anyone's private folders (`/root`).
const MACHINES: &str = "/run/berth-machines";

/// The CVM folder `dir` bound at `MACHINES/<its name>` (made now, or kept
/// when it is bound already); that path.
fn expose(dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let machines = Path::new(MACHINES);
    std::fs::create_dir_all(machines)?;
    std::fs::set_permissions(machines, std::fs::Permissions::from_mode(0o711))?;
    let name = dir
        .file_name()
        .ok_or_else(|| std::io::Error::other("the CVM folder has no name"))?;
    let target = machines.join(name);
    std::fs::create_dir_all(&target)?;
    let (a, b) = (std::fs::metadata(dir)?, std::fs::metadata(&target)?);
    if (a.dev(), a.ino()) == (b.dev(), b.ino()) {
        return Ok(target);
    }
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| std::io::Error::other("a NUL in a path"))
    };
    let (src, dst) = (c(dir)?, c(&target)?);
    // SAFETY: both are valid NUL-terminated paths; a bind mount takes no data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(target)
}

/// Undoes [`expose`] for the CVM folder `dir` (nothing when not bound).
pub(super) fn unexpose(dir: &Path) {
    let Some(name) = dir.file_name() else {
        return;
    };
    let target = Path::new(MACHINES).join(name);
    if let Ok(dst) = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()) {
        // SAFETY: a valid NUL-terminated path; MNT_DETACH is always safe.
        unsafe { libc::umount2(dst.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = std::fs::remove_dir(&target);
}

/// Starts the CVM machine of folder `dir` (compose project `project`,
/// hostname `name`) in slot `slot`, bounded by `bounds`, and waits until
/// its engine answers. Its console (init's and dockerd's lines) goes to
/// `console`. Whatever ran of an earlier start is killed first.
pub(super) async fn start(
    dir: &Path,
    project: &str,
    name: &str,
    slot: &Slot,
    bounds: Bounds,
    compose_dir: &Path,
    console: tokio::sync::mpsc::Sender<String>,
) -> Result<Machine, String> {
    kill(project).await;
    let io = |what: &str, e: std::io::Error| format!("cannot prepare the CVM's {what}: {e}");
    for d in [DISK_DIR, ROOT_DIR] {
        slot_dir(&dir.join(d), slot).map_err(|e| io(d, e))?;
    }
    // rootlesskit's state of an earlier run (sockets, a lock) is stale.
    let rk = dir.join(RK_DIR);
    let _ = std::fs::remove_dir_all(&rk);
    slot_dir(&rk, slot).map_err(|e| io("rootlesskit folder", e))?;
    hand_over(dir, compose_dir, slot).map_err(|e| io("shared files", e))?;
    // From here on, what the slot's processes open goes through the bind.
    let shown = expose(dir).map_err(|e| io("folder (bind mount)", e))?;
    let rk = shown.join(RK_DIR);
    let init = shown.join(INIT_FILE);
    std::fs::write(&init, INIT_SCRIPT).map_err(|e| io("init", e))?;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| io("init", e))?;
    let engine_dir = dir.join(ENGINE_DIR);
    super::files::private_dir(&engine_dir).map_err(|e| io("engine folder", e))?;
    let socket = engine_dir.join(ENGINE_SOCKET);
    let _ = std::fs::remove_file(&socket);
    let listener =
        std::os::unix::net::UnixListener::bind(&socket).map_err(|e| io("engine socket", e))?;
    let cgroups = make_cgroups(project, bounds).map_err(|e| io("cgroup", e))?;
    let procs: Vec<std::ffi::CString> = cgroups
        .iter()
        .map(|(_, d)| {
            std::ffi::CString::new(d.join("cgroup.procs").as_os_str().as_encoded_bytes())
                .expect("no NUL in a cgroup path")
        })
        .collect();
    let cgroup_env = cgroups
        .iter()
        .map(|(c, d)| format!("{c}={}", d.display()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = tokio::process::Command::new("setpriv");
    cmd.arg(format!("--reuid={}", slot.uid))
        .arg(format!("--regid={}", slot.gid))
        .arg("--init-groups")
        .arg("rootlesskit")
        .arg(format!("--state-dir={}", rk.join("state").display()))
        .args([
            "--net=slirp4netns",
            "--mtu=65520",
            "--disable-host-loopback",
            "--port-driver=builtin",
            "--slirp4netns-sandbox=auto",
            "--slirp4netns-seccomp=auto",
            "--pidns",
            "--ipcns",
            "--utsns",
            "--cgroupns",
            "/bin/sh",
        ])
        .arg(&init)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", &rk)
        .env("XDG_RUNTIME_DIR", &rk)
        .env("CVM_DIR", &shown)
        .env("CVM_NAME", name)
        .env("CVM_CGROUPS", cgroup_env)
        .env("CVM_COMPOSE_DIR", compose_dir)
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            listener,
        )))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    // SAFETY: only open, write and close (async-signal-safe) on paths and
    // a buffer made before the fork: the child joins the CVM's cgroups
    // before it runs anything, so all it ever starts stays inside.
    unsafe {
        cmd.pre_exec(move || {
            let mut buf = [0u8; 16];
            let mut n = libc::getpid() as u32;
            let mut i = buf.len();
            loop {
                i -= 1;
                buf[i] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            for p in &procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let w = libc::write(fd, buf[i..].as_ptr().cast(), buf.len() - i);
                libc::close(fd);
                if w < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the CVM's container (rootlesskit): {e}"))?;
    for stream in [
        Box::new(child.stdout.take().expect("piped"))
            as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(child.stderr.take().expect("piped")),
    ] {
        let console = console.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stream).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if console.send(l).await.is_err() {
                    break;
                }
            }
        });
    }
    // The child is reaped in the background; the cgroup is what ends it.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    let docker_host = docker_host_of(dir);
    let docker = bollard::Docker::connect_with_unix(
        socket.to_str().unwrap_or_default(),
        10,
        bollard::API_DEFAULT_VERSION,
    )
    .map_err(|e| format!("cannot reach the CVM's engine: {e}"))?;
    let pid_file = rk.join("state").join("child_pid");
    let started = tokio::time::Instant::now();
    loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            && docker.ping().await.is_ok()
        {
            return Ok(Machine {
                init_pid: pid,
                docker_host,
            });
        }
        if started.elapsed() > ENGINE_DEADLINE {
            kill(project).await;
            return Err(format!(
                "the CVM's engine did not answer within {} s (its console above says why)",
                ENGINE_DEADLINE.as_secs()
            ));
        }
        if started.elapsed() > Duration::from_millis(500) && !alive(project) {
            return Err(
                "the CVM's container ended while it started (its console above says why)".into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The init pid of a running CVM machine of folder `dir`, if its engine
/// answers (after a node restart).
pub(super) async fn running(dir: &Path, project: &str) -> Option<Machine> {
    if !alive(project) {
        return None;
    }
    let pid = std::fs::read_to_string(dir.join(RK_DIR).join("state").join("child_pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let socket = dir.join(ENGINE_DIR).join(ENGINE_SOCKET);
    let docker =
        bollard::Docker::connect_with_unix(socket.to_str()?, 5, bollard::API_DEFAULT_VERSION)
            .ok()?;
    docker.ping().await.ok()?;
    Some(Machine {
        init_pid: pid,
        docker_host: docker_host_of(dir),
    })
}

/// Publishes the CVM's declared ports on the host (rootlesskit's port
/// driver, asked by the node: the CVM cannot publish by itself). Each
/// host port goes to the same port of the CVM, where its engine publishes
/// the container's. An error names the port and why.
pub(super) async fn publish(
    dir: &Path,
    ports: &[contract::policy::PublishedPort],
) -> Result<Vec<String>, String> {
    let api = dir.join(RK_DIR).join("state").join("api.sock");
    let mut done = Vec::new();
    for p in ports {
        let ip = p.host_ip.as_deref().unwrap_or("0.0.0.0");
        for port in p.first..=p.last {
            for proto in ["tcp"] {
                let spec = if ip.contains(':') {
                    format!("[{ip}]:{port}:{port}/{proto}")
                } else {
                    format!("{ip}:{port}:{port}/{proto}")
                };
                let out = tokio::process::Command::new("rootlessctl")
                    .arg("--socket")
                    .arg(&api)
                    .args(["add-ports", &spec])
                    .output()
                    .await
                    .map_err(|e| format!("cannot run rootlessctl: {e}"))?;
                if !out.status.success() {
                    let why = String::from_utf8_lossy(&out.stderr);
                    let why = if why.contains("address already in use") {
                        "the port is in use on the host (by another CVM or program)".to_owned()
                    } else {
                        why.trim().chars().take(200).collect()
                    };
                    return Err(format!(
                        "service `{}` publishes {ip}:{port}, which cannot be published: {why}; choose another host port",
                        p.service
                    ));
                }
                done.push(format!("{ip}:{port}/{proto}"));
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_one_cvm_folders_on_the_host_until_that_folder_is_gone() {
        let root = std::env::temp_dir().join(format!("berth-slots-{}", std::process::id()));
        let (claims, a, b) = (root.join("claims"), root.join("a"), root.join("b"));
        for d in [&claims, &a, &b] {
            std::fs::create_dir_all(d).unwrap();
        }
        assert!(claim(&claims, 0, &a).unwrap());
        std::fs::write(a.join(SLOT_FILE), "0").unwrap();
        // Another cloud's CVM folder does not get it, A gets it again.
        assert!(!claim(&claims, 0, &b).unwrap());
        assert!(claim(&claims, 0, &a).unwrap());
        assert!(claim(&claims, 1, &b).unwrap());
        // A's folder gone (deleted without a node): its claim is stale.
        std::fs::remove_dir_all(&a).unwrap();
        let c = root.join("c");
        std::fs::create_dir_all(&c).unwrap();
        assert!(claim(&claims, 0, &c).unwrap());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
