//! `make bench` (boot): `berth guest boot` against the shell flow it replaces
//! (`docker login` + `docker-compose pull` + `docker-compose up -d`), on the
//! same image, registry and engine; cold (nothing cached) and warm (a restart:
//! images and Berth's state kept), alternating, N runs each.
//!
//! Usage: bench_boot BERTH_BINARY [RUNS] [LAYER_MB]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;
use testkit::bench::median;
use testkit::images::{ImageSpec, PushTarget, push_image};
use testkit::{Dockerd, Registry, workdir};

fn run(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let berth = args
        .get(1)
        .expect("usage: bench_boot BERTH_BINARY [RUNS] [LAYER_MB]")
        .clone();
    let runs: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(5);
    let layer_mb: u64 = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(50);
    let engine = Dockerd::start();
    let (user, pw) = ("alice", "bench-password");
    let reg = Registry::with_htpasswd(&[(user, pw)]);
    let host = reg.host_port();
    let image = format!("{host}/bench/app:1");
    eprintln!("pushing a busybox image with 2 x {layer_mb} MB of random data…");
    push_image(
        &PushTarget::new(&host).with_creds(user, pw),
        "bench/app",
        "1",
        &ImageSpec::new()
            .busybox()
            .layer(layer_mb * 1_000_000)
            .layer(layer_mb * 1_000_000),
    );
    let work = workdir("bench-boot");
    let w = work.path();
    let yaml = format!(
        "services:\n  app:\n    image: {image}\n    network_mode: none\n    environment:\n      - GREETING=${{GREETING}}\n    command: [\"sh\", \"-c\", \"echo $$GREETING; sleep 600\"]\n"
    );
    // Berth's inputs: the host-shared folder with a sealed env.
    let shared = w.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let key = w.join("app.key");
    let out = Command::new(&berth)
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    let pubkey = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let allowed = [
        "GREETING",
        "DSTACK_DOCKER_USERNAME",
        "DSTACK_DOCKER_PASSWORD",
        "DSTACK_DOCKER_REGISTRY",
    ];
    let app = serde_json::json!({"manifest_version": 2, "name": "bench", "runner": "docker-compose",
        "docker_compose_file": yaml, "allowed_envs": allowed, "kms_enabled": true});
    std::fs::write(shared.join("app-compose.json"), app.to_string()).unwrap();
    // The registry listens on loopback: a CVM reaches it only when the
    // operator maps it, as the node does with `--registry-endpoint`.
    let sys = serde_json::json!({"registry_endpoints": {host.clone(): reg.base_url()}});
    std::fs::write(shared.join("sys-config.json"), sys.to_string()).unwrap();
    let envfile = w.join("secrets.env");
    std::fs::write(
        &envfile,
        format!("GREETING=hi\nDSTACK_DOCKER_USERNAME={user}\nDSTACK_DOCKER_PASSWORD={pw}\nDSTACK_DOCKER_REGISTRY={host}\n"),
    )
    .unwrap();
    let sealed = Command::new(&berth)
        .args(["seal", "--pubkey", &pubkey, "-e"])
        .arg(&envfile)
        .output()
        .unwrap();
    std::fs::write(shared.join("encrypted-env"), sealed.stdout).unwrap();
    // The shell flow's inputs: the compose file and a Docker client config.
    let shell_dir = w.join("shell");
    std::fs::create_dir_all(&shell_dir).unwrap();
    std::fs::write(shell_dir.join("docker-compose.yml"), &yaml).unwrap();
    let docker_config = w.join("docker-config");
    std::fs::create_dir_all(&docker_config).unwrap();

    let state = w.join("state");
    let compose = |dir: &Path, project: &str, args: &[&str]| {
        let mut c = Command::new("docker-compose");
        c.current_dir(dir)
            .env("DOCKER_HOST", engine.host())
            .env("DOCKER_CONFIG", &docker_config)
            .env("GREETING", "hi")
            .args(["--project-name", project, "--file", "docker-compose.yml"])
            .args(args);
        c
    };
    let last_log = std::cell::RefCell::new(String::new());
    let berth_boot = || {
        let t = Instant::now();
        *last_log.borrow_mut() = run(Command::new(&berth)
            .args(["guest", "boot", "--shared"])
            .arg(&shared)
            .arg("--state")
            .arg(&state)
            .arg("--env-key-file")
            .arg(&key)
            .args(["--project", "berthbench"])
            .env("DOCKER_HOST", engine.host()));
        t.elapsed().as_secs_f64()
    };
    let shell_boot = || {
        let t = Instant::now();
        let mut login = Command::new("docker");
        login
            .env("DOCKER_HOST", engine.host())
            .env("DOCKER_CONFIG", &docker_config)
            .args(["login", "--username", user, "--password-stdin", &host])
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        let mut child = login.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(pw.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
        let t1 = Instant::now();
        run(&mut compose(&shell_dir, "shellbench", &["pull"]));
        let t2 = Instant::now();
        run(&mut compose(&shell_dir, "shellbench", &["up", "-d"]));
        if std::env::var_os("BENCH_SHOW_LOG").is_some() {
            eprintln!(
                "shell: login {:.2} s, pull {:.2} s, up {:.2} s",
                (t1 - t).as_secs_f64(),
                (t2 - t1).as_secs_f64(),
                t2.elapsed().as_secs_f64()
            );
        }
        t.elapsed().as_secs_f64()
    };
    let down = |project: &str| {
        let dir = if project == "berthbench" {
            state.join("compose")
        } else {
            shell_dir.clone()
        };
        run(&mut compose(&dir, project, &["down", "--timeout", "0"]));
    };
    let stop = |project: &str| {
        let dir = if project == "berthbench" {
            state.join("compose")
        } else {
            shell_dir.clone()
        };
        run(&mut compose(&dir, project, &["stop", "--timeout", "0"]));
    };
    let forget_images = || {
        let ids = engine.docker_out(&["images", "-q"]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = engine.docker().args(["rmi", "-f"]).args(&ids).output();
        }
    };

    let (mut bc, mut sc, mut bw, mut sw) = (vec![], vec![], vec![], vec![]);
    println!("run  kind  berth_s  shell_s");
    for i in 0..runs {
        // Cold: no image in the engine, no Berth state.
        forget_images();
        let _ = std::fs::remove_dir_all(&state);
        let b = berth_boot();
        down("berthbench");
        forget_images();
        let s = shell_boot();
        down("shellbench");
        println!("{i:>3}  cold  {b:>7.2}  {s:>7.2}");
        bc.push(b);
        sc.push(s);
        // Warm: a restart, as after a CVM reboot: the app's containers
        // exist but are stopped, the images are in the engine, Berth's
        // state folder is kept. Both flows get the same starting point.
        berth_boot();
        stop("berthbench");
        let b = berth_boot();
        down("berthbench");
        shell_boot();
        stop("shellbench");
        let s = shell_boot();
        down("shellbench");
        println!("{i:>3}  warm  {b:>7.2}  {s:>7.2}");
        if std::env::var_os("BENCH_SHOW_LOG").is_some() {
            eprintln!(
                "berth's serial log of the warm boot:\n{}",
                last_log.borrow()
            );
        }
        bw.push(b);
        sw.push(s);
    }
    let (bc, sc, bw, sw) = (
        median(&mut bc),
        median(&mut sc),
        median(&mut bw),
        median(&mut sw),
    );
    println!();
    println!(
        "image: {image} (busybox + 2 x {layer_mb} MB), engine: Debian dockerd, compose: docker-compose v1"
    );
    println!(
        "cold boot median: berth {bc:.2} s, shell flow {sc:.2} s, ratio berth/shell {:.2}",
        bc / sc
    );
    println!(
        "warm restart median: berth {bw:.2} s, shell flow {sw:.2} s, shell/berth speed-up {:.1}x",
        sw / bw
    );
}
