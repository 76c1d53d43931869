//! The second audit's network findings, reproduced against a real `berth
//! up` with its own private `dockerd` (Berth's flags), real htpasswd
//! registries and two tenants, `alice` and `mallory`, in network
//! namespaces this test makes (so the engine's bridges and firewall rules
//! never touch the machine's, and forwarding can be on, as on the audit's
//! host):
//!
//! - finding 1: the operator maps a registry on a private address of
//!   another host (`10.77.0.5`, a second namespace behind a veth pair);
//!   mallory's compose file that gives her network that address as its
//!   gateway, or publishes on it, or fixes a container address, is refused,
//!   and alice's boots keep reaching the real registry;
//! - finding 3: CVMs do not reach each other's containers, nor the host's
//!   loopback services, though the host forwards (within a CVM they do);
//! - finding 2: with a mapped loopback registry down, a CVM that publishes
//!   its port (on loopback or on every address) fails its boot saying why,
//!   and nothing listens there; the API's port likewise;
//! - finding 6: a YAML alias bomb is refused without the API growing.
//!
//! Needs root (network namespaces, a private engine): run `make test` as
//! root; without it these tests fail saying so.

mod common;
use common::*;
use serde_json::{Value, json};
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use testkit::Registry;
use testkit::images::{ImageSpec, PushTarget, push_image};

const ADMIN_KEY: &str = "berth_test_admin_key_isolation_01";
const ALICE_PW: &str = "alice-registry-canary-Qx72m";
const MALLORY_PW: &str = "mallory-pw-5b1c";

/// The registry host's address on the link between the two namespaces.
const REGISTRY_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 5);

fn sh(script: &str) {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Moves the calling thread (and so every process it starts from now on)
/// into a new network namespace with loopback up and forwarding on.
fn enter_new_netns() {
    // SAFETY: unshare affects only the calling thread's namespaces.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET) failed ({}): these tests need root (run make test as root)",
        std::io::Error::last_os_error()
    );
    sh("ip link set lo up");
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("turn on forwarding");
}

/// The calling thread's network namespace.
fn this_netns() -> File {
    File::open("/proc/thread-self/ns/net").unwrap()
}

fn enter(ns: &File) {
    // SAFETY: setns on a namespace file we hold open; the calling thread only.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// A process that keeps a namespace alive and names it for `ip … netns PID`.
struct Holder(Child);

impl Holder {
    fn start() -> Holder {
        Holder(
            Command::new("sleep")
                .arg("3600")
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `berth up` with its own private engine (no `DOCKER_HOST`, no system
/// socket), in the calling thread's namespace.
fn up_private(state: &Path, args: &[&str]) -> Cloud {
    assert!(
        !Path::new("/var/run/docker.sock").exists(),
        "a system Docker engine answers at /var/run/docker.sock: this test checks Berth's own engine, stop the system one"
    );
    Cloud::start(state, "", Some(ADMIN_KEY), args)
}

impl Cloud {
    fn as_user(&self, key: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let (code, text) = self.request(key, None, method, path, body);
        assert!(!text.contains(ALICE_PW), "alice's password in an answer");
        (code, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn new_user(&self, name: &str) -> String {
        let (code, v) = self.as_user(
            ADMIN_KEY,
            "POST",
            "/users",
            Some(&json!({"username": name})),
        );
        assert_eq!(code, 200, "{v}");
        v["api_key"].as_str().unwrap().to_owned()
    }

    /// `berth deploy` as `key`, with the registry credentials sealed on
    /// this side; waits for the boot. (exit code, stdout + stderr)
    fn deploy_sealed(
        &self,
        dir: &Path,
        key: &str,
        name: &str,
        compose: &str,
        env: &str,
    ) -> (i32, String) {
        let compose_path = dir.join(format!("{name}.yml"));
        let env_path = dir.join(format!("{name}.env"));
        std::fs::write(&compose_path, compose).unwrap();
        std::fs::write(&env_path, env).unwrap();
        let out = run(
            Command::new(env!("CARGO_BIN_EXE_berth"))
                .args(["deploy", "-n", name, "--no-check", "--wait", "-c"])
                .arg(&compose_path)
                .arg("-e")
                .arg(&env_path)
                .args(["--kms-pubkey", &self.kms_pubkey])
                .env("BERTH_API_URL", &self.api)
                .env("BERTH_API_KEY", key)
                .env("BERTH_OWNER_KEY", dir.join(format!("{name}.owner-key")))
                .env("DOCKER_CONFIG", dir.join("no-docker-config")),
            b"",
        );
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(
            !text.contains(ALICE_PW),
            "alice's password in berth deploy's output"
        );
        (out.code, text)
    }

    fn provision(&self, key: &str, name: &str, compose: &str) -> (u16, Value) {
        self.as_user(
            key,
            "POST",
            "/cvms/provision",
            Some(&json!({"name": name, "compose_file": {"docker_compose_file": compose, "allowed_envs": []}})),
        )
    }

    fn settled_as(&self, key: &str, name: &str) -> Value {
        self.settled(key, name, ALICE_PW)
    }

    /// The private engine's socket (`STATE/run/docker.sock`).
    fn engine(&self, state: &Path) -> String {
        let sock = state.join("run/docker.sock");
        assert!(sock.exists(), "no engine socket at {}", sock.display());
        format!("unix://{}", sock.display())
    }
}

/// `docker ARGS` on the engine at `host`: (success, stdout + stderr).
fn docker(host: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("docker")
        .env("DOCKER_HOST", host)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The container of `service` in the CVM `id`'s project.
fn container(host: &str, id: &str, service: &str) -> String {
    let project = format!(
        "berth-{}",
        id.replace('-', "").chars().take(12).collect::<String>()
    );
    let (ok, out) = docker(
        host,
        &[
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ],
    );
    assert!(ok, "{out}");
    let c = out.lines().next().unwrap_or_default().trim().to_owned();
    assert!(!c.is_empty(), "no running container {service} in {project}");
    c
}

/// The address of `container` and its network's gateway.
fn addresses(host: &str, container: &str) -> (String, String) {
    let (ok, out) = docker(
        host,
        &[
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{.Gateway}}{{end}}",
            container,
        ],
    );
    assert!(ok, "{out}");
    let mut f = out.split_whitespace();
    (f.next().unwrap().to_owned(), f.next().unwrap().to_owned())
}

/// Whether `from` gets an HTTP answer from `ip:port` (3 s to connect).
fn reaches(host: &str, from: &str, ip: &str, port: u16) -> bool {
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 {ip} {port}");
    let (_, out) = docker(host, &["exec", from, "sh", "-c", &script]);
    out.contains("HTTP/1.")
}

/// An app of two services: `web` answers HTTP on 8080, `client` waits.
fn two_services(image: &str, extra: &str) -> String {
    format!(
        "services:\n  web:\n    image: {image}\n    command: [\"busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/\"]\n{extra}  client:\n    image: {image}\n    command: [\"sleep\", \"600\"]\n"
    )
}

fn creds(user: &str, pw: &str, registry: &str) -> String {
    format!(
        "DSTACK_DOCKER_USERNAME={user}\nDSTACK_DOCKER_PASSWORD={pw}\nDSTACK_DOCKER_REGISTRY={registry}\n"
    )
}

#[test]
fn a_tenant_cannot_take_a_registrys_address_nor_reach_another_cvm() {
    let root = this_netns();
    // The registry host: its own namespace, 10.77.0.5 on a veth link.
    enter_new_netns();
    let registry_ns = this_netns();
    let holder = Holder::start();
    // The Berth host: another namespace, 10.77.0.1 on the other end.
    enter_new_netns();
    sh(&format!(
        "ip link add berth-a type veth peer name berth-b netns {} && ip addr add 10.77.0.1/24 dev berth-a && ip link set berth-a up",
        holder.pid()
    ));
    sh(&format!(
        "nsenter --net=/proc/{}/ns/net sh -c 'ip addr add {REGISTRY_IP}/24 dev berth-b && ip link set berth-b up'",
        holder.pid()
    ));
    let berth_ns = this_netns();

    // The operator's registry, on the registry host.
    enter(&registry_ns);
    let registry = Registry::builder()
        .htpasswd(&[("alice", ALICE_PW), ("mallory", MALLORY_PW)])
        .listen_ip(REGISTRY_IP)
        .start();
    let host = registry.host_port();
    push_image(
        &PushTarget::new(&host).with_creds("alice", ALICE_PW),
        "acme/app",
        "1",
        &ImageSpec::new().busybox(),
    );
    enter(&berth_ns);

    let dir = tempdir("isolation-topology");
    let state = dir.join("state");
    let mapped = format!("--registry-endpoint={host}=http://{host}");
    let cloud = up_private(&state, &[&mapped]);
    let alice = cloud.new_user("alice");
    let mallory = cloud.new_user("mallory");
    let image = format!("{host}/acme/app:1");

    let (code, out) = cloud.deploy_sealed(
        &dir,
        &alice,
        "alice-app",
        &two_services(&image, ""),
        &creds("alice", ALICE_PW, &host),
    );
    assert_eq!(code, 0, "{out}");
    let manifest_gets = || {
        registry
            .log_contents()
            .lines()
            .filter(|l| {
                l.contains("msg=\"authorized request\"")
                    && l.contains("remoteaddr=\"10.77.0.1:")
                    && l.contains("uri=/v2/acme/app/manifests/1")
            })
            .count()
    };
    let seen = manifest_gets();
    assert!(
        seen > 0,
        "the registry saw none of alice's pulls:\n{}",
        registry.log_contents()
    );

    // Finding 1: the audit's file, and each of its parts on its own.
    let hijack = format!(
        "services:\n  fake:\n    image: {image}\n    ports: [\"{REGISTRY_IP}:{port}:5000\"]\n    networks: {{grab: {{ipv4_address: 10.77.0.9}}}}\nnetworks:\n  grab: {{ipam: {{config: [{{subnet: 10.77.0.0/24, gateway: {REGISTRY_IP}}}]}}}}\n",
        port = registry.addr().port()
    );
    for (name, compose, says) in [
        ("grab-all", hijack.clone(), "ipam.config"),
        (
            "grab-gateway",
            format!(
                "services:\n  fake:\n    image: {image}\n    networks: [grab]\nnetworks:\n  grab:\n    ipam:\n      config:\n        - subnet: 10.77.0.0/24\n          gateway: {REGISTRY_IP}\n"
            ),
            "ipam.config",
        ),
        (
            "grab-port",
            format!(
                "services:\n  fake:\n    image: {image}\n    ports: [\"{REGISTRY_IP}:{}:5000\"]\n",
                registry.addr().port()
            ),
            "host address",
        ),
        (
            "grab-address",
            format!(
                "services:\n  fake:\n    image: {image}\n    networks: {{grab: {{ipv4_address: {REGISTRY_IP}}}}}\nnetworks:\n  grab:\n"
            ),
            "ipv4_address",
        ),
    ] {
        let (code, v) = cloud.provision(&mallory, name, &compose);
        assert_eq!(code, 422, "{name} was accepted: {v}");
        assert!(v.to_string().contains(says), "{name}: {v}");
    }

    // Mallory's own app, as allowed.
    let (code, out) = cloud.deploy_sealed(
        &dir,
        &mallory,
        "mallory-app",
        &two_services(&image, ""),
        &creds("mallory", MALLORY_PW, &host),
    );
    assert_eq!(code, 0, "{out}");
    let a = cloud.settled_as(&alice, "alice-app");
    let m = cloud.settled_as(&mallory, "mallory-app");
    assert_eq!(a["status"], "running", "{a}");
    assert_eq!(m["status"], "running", "{m}");

    // Finding 3: each CVM's network comes from Berth's range; containers
    // reach their own CVM's, not the other's, either way, nor the host's
    // loopback services (the API listens on 127.0.0.1).
    let engine = cloud.engine(&state);
    let (a_id, m_id) = (
        a["vm_uuid"].as_str().unwrap().to_owned(),
        m["vm_uuid"].as_str().unwrap().to_owned(),
    );
    let (a_web, a_gw) = addresses(&engine, &container(&engine, &a_id, "web"));
    let (m_web, _) = addresses(&engine, &container(&engine, &m_id, "web"));
    assert!(
        a_web.starts_with("10.24") && m_web.starts_with("10.24"),
        "{a_web} {m_web}"
    );
    let a_client = container(&engine, &a_id, "client");
    let m_client = container(&engine, &m_id, "client");
    assert!(
        reaches(&engine, &a_client, &a_web, 8080),
        "alice's client does not reach alice's own web service: the check itself is broken"
    );
    assert!(
        !reaches(&engine, &m_client, &a_web, 8080),
        "mallory's container reached alice's web service at {a_web}:8080"
    );
    assert!(
        !reaches(&engine, &a_client, &m_web, 8080),
        "alice's container reached mallory's web service at {m_web}:8080"
    );
    assert!(
        !reaches(&engine, &m_client, &a_gw, cloud.port()),
        "mallory's container reached the API (a loopback service of the host) at {a_gw}"
    );
    assert!(
        !reaches(&engine, &m_client, "127.0.0.1", cloud.port()),
        "mallory's container reached the host's loopback"
    );

    // Alice's next boot still goes to the operator's registry.
    let (code, v) = cloud.as_user(&alice, "POST", "/cvms/alice-app/restart", None);
    assert!(code == 200 || code == 202, "{v}");
    let a = cloud.settled_as(&alice, "alice-app");
    assert_eq!(a["status"], "running", "{a}");
    assert!(
        manifest_gets() > seen,
        "alice's restart did not reach the registry"
    );
    let _ = cloud.stop();
    drop(registry);
    drop(holder);
    enter(&root);
}

#[test]
fn a_published_port_never_takes_a_mapped_registrys_or_the_apis() {
    let root = this_netns();
    enter_new_netns();
    let mut registry = Registry::with_htpasswd(&[("alice", ALICE_PW), ("mallory", MALLORY_PW)]);
    let host = registry.host_port();
    let port = registry.addr().port();
    push_image(
        &PushTarget::new(&host).with_creds("alice", ALICE_PW),
        "acme/app",
        "1",
        &ImageSpec::new().busybox(),
    );
    let dir = tempdir("isolation-ports");
    let state = dir.join("state");
    let mapped = format!("--registry-endpoint={host}={}", registry.base_url());
    let cloud = up_private(&state, &[&mapped]);
    let alice = cloud.new_user("alice");
    let mallory = cloud.new_user("mallory");
    let image = format!("{host}/acme/app:1");
    let (code, out) = cloud.deploy_sealed(
        &dir,
        &alice,
        "alice-app",
        &two_services(&image, ""),
        &creds("alice", ALICE_PW, &host),
    );
    assert_eq!(code, 0, "{out}");

    // Finding 6: an alias bomb is refused, and the API does not grow.
    let keys: String = (0..4000).map(|i| format!("  k{i}: v\n")).collect();
    let services: String = (0..1500)
        .map(|i| format!("  s{i}:\n    image: {image}\n    labels: *big\n"))
        .collect();
    let bomb = format!("x-big: &big\n{keys}services:\n{services}");
    let body = dir.join("bomb.json");
    std::fs::write(
        &body,
        json!({"name": "bomb-app", "compose_file": {"docker_compose_file": bomb, "allowed_envs": []}})
            .to_string(),
    )
    .unwrap();
    let (code, text) = curl(
        &[
            "-X",
            "POST",
            "-H",
            &format!("X-API-Key: {mallory}"),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("@{}", body.display()),
        ],
        &format!("{}/cvms/provision", cloud.api),
    );
    assert_eq!(code, 422, "{text}");
    assert!(text.contains("YAML nodes"), "{text}");
    let rss_kb = std::fs::read_to_string(format!("/proc/{}/status", cloud.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap();
    assert!(rss_kb < 300 * 1024, "the API peaked at {rss_kb} KiB");

    // Finding 2: the registry is down; a CVM publishing its port, on
    // loopback or on every address, fails its boot and listens nowhere.
    registry.stop();
    for (name, ports, what) in [
        (
            "squat-loopback",
            format!("\"127.0.0.1:{port}:8080\""),
            "registry",
        ),
        ("squat-all", format!("\"{port}:8080\""), "registry"),
        ("squat-api", format!("\"{}:8080\"", cloud.port()), "API"),
    ] {
        let (code, out) = cloud.deploy_sealed(
            &dir,
            &mallory,
            name,
            &two_services(&image, &format!("    ports: [{ports}]\n")),
            &creds("mallory", MALLORY_PW, &host),
        );
        assert_ne!(code, 0, "{name} booted: {out}");
        let v = cloud.settled_as(&mallory, name);
        assert_eq!(v["status"], "boot_failed", "{name}: {v}");
        let serial = cloud.serial_log(&mallory, name, ALICE_PW);
        assert!(
            serial.contains("in `ports`, which this cloud keeps for") && serial.contains(what),
            "{name}: {serial}"
        );
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "something listens on the stopped registry's port"
    );
    // Alice's restart finds the registry down, and says so.
    let (code, v) = cloud.as_user(&alice, "POST", "/cvms/alice-app/restart", None);
    assert!(code == 200 || code == 202, "{v}");
    let a = cloud.settled_as(&alice, "alice-app");
    // A restart with every image in the store needs the registry only for
    // a HEAD; either way alice's password went nowhere but the registry.
    assert!(
        a["status"] == "running" || a["status"] == "boot_failed",
        "{a}"
    );
    let _ = cloud.stop();
    enter(&root);
}
