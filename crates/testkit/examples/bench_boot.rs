//! `make bench` (boot): `berth guest boot` against the shell flow it replaces
//! (`docker login` + `docker-compose pull` + `docker-compose up -d`), on the
//! same image, registry and engine; cold (nothing cached) and warm (a restart:
//! images and Berth's state kept), alternating, N runs each.
//!
//! Both flows reach the registry through one testkit proxy, under the same
//! name: on loopback speed, or (`LINK` = `MBPS/RTT_MS`) through a link that
//! caps every connection at `MBPS` MB/s and adds `RTT_MS` of round trip,
//! as a CDN-served registry does.
//!
//! Usage:
//!   bench_boot BERTH_BINARY [RUNS] [LAYER_MB] [LINK]
//!   bench_boot BERTH_BINARY rss GB     (one cold boot of busybox + GB × 1 GB:
//!                                        the boot agent's peak RSS)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testkit::bench::median;
use testkit::images::{ImageSpec, PushTarget, push_image};
use testkit::{Dockerd, FaultProxy, Registry, workdir};

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

/// Runs `cmd` to its end, sampling its peak RSS (`VmHWM`, the process
/// alone: not the compose tool it starts) every 10 ms. Returns its stdout
/// and the peak in bytes.
fn run_sampling_rss(cmd: &mut Command) -> (String, u64) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let status_file = PathBuf::from(format!("/proc/{}/status", child.id()));
    let reader = {
        let mut out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut out, &mut s).unwrap();
            s
        })
    };
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        if let Ok(status) = std::fs::read_to_string(&status_file)
            && let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak = peak.max(kb * 1024);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = reader.join().unwrap();
    assert!(child.wait().unwrap().success(), "{out}");
    (out, peak)
}

/// The duration a step line of the serial log reports (`[5/7] pull images:
/// done in 1234 ms`), in seconds.
fn step_secs(log: &str, step: &str) -> f64 {
    log.lines()
        .find_map(|l| {
            let rest = l.split_once(&format!("] [{step}] "))?.1;
            let ms = rest.split_once(": done in ")?.1.strip_suffix(" ms")?;
            ms.parse::<f64>().ok()
        })
        .map_or(f64::NAN, |ms| ms / 1000.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let berth = args
        .get(1)
        .expect("usage: bench_boot BERTH_BINARY [RUNS] [LAYER_MB] [LINK] | BERTH_BINARY rss GB")
        .clone();
    if args.get(2).map(String::as_str) == Some("rss") {
        let gb: u64 = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(4);
        return rss(&berth, gb);
    }
    let runs: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(5);
    let layer_mb: u64 = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(50);
    let link = args.get(4).filter(|l| *l != "none").map(|l| {
        let (mbps, rtt) = l.split_once('/').expect("LINK is MBPS/RTT_MS");
        (
            mbps.parse::<u64>().unwrap() * 1_000_000,
            Duration::from_millis(rtt.parse().unwrap()),
        )
    });
    let bench = Bench::new(
        &berth,
        &ImageSpec::new()
            .busybox()
            .layer(layer_mb * 1_000_000)
            .layer(layer_mb * 1_000_000),
        link,
    );
    let link_text = match link {
        Some((bps, rtt)) => format!(
            "through a link of {} MB/s per connection and {} ms round trip",
            bps / 1_000_000,
            rtt.as_millis()
        ),
        None => "on loopback (no link limits)".to_owned(),
    };

    let (mut bc, mut sc, mut bw, mut sw) = (vec![], vec![], vec![], vec![]);
    let (mut pull, mut tail, mut up) = (vec![], vec![], vec![]);
    println!("run  kind  berth_s  shell_s   (berth: pull, hand-off after the pull, up)");
    for i in 0..runs {
        // Cold: no image in the engine, no Berth state.
        bench.forget_images();
        let _ = std::fs::remove_dir_all(&bench.state);
        let (b, log) = bench.berth_boot();
        let steps = [
            step_secs(&log, "5/7"),
            step_secs(&log, "6/7"),
            step_secs(&log, "7/7"),
        ];
        bench.down("berthbench");
        bench.forget_images();
        let s = bench.shell_boot();
        bench.down("shellbench");
        println!(
            "{i:>3}  cold  {b:>7.2}  {s:>7.2}   ({:.2}, {:.2}, {:.2})",
            steps[0], steps[1], steps[2]
        );
        if std::env::var_os("BENCH_SHOW_LOG").is_some() {
            eprintln!("berth's serial log of the cold boot:\n{log}");
        }
        bc.push(b);
        sc.push(s);
        pull.push(steps[0]);
        tail.push(steps[1]);
        up.push(steps[2]);
        // Warm: a restart, as after a CVM reboot: the app's containers
        // exist but are stopped, the images are in the engine, Berth's
        // state folder is kept. Both flows get the same starting point.
        bench.berth_boot();
        bench.stop("berthbench");
        let (b, log) = bench.berth_boot();
        if std::env::var_os("BENCH_SHOW_LOG").is_some() {
            eprintln!("berth's serial log of the warm boot:\n{log}");
        }
        bench.down("berthbench");
        bench.shell_boot();
        bench.stop("shellbench");
        let s = bench.shell_boot();
        bench.down("shellbench");
        println!("{i:>3}  warm  {b:>7.2}  {s:>7.2}");
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
        "image: {} (busybox + 2 x {layer_mb} MB), {link_text}; engine: Debian dockerd, compose: docker-compose v1",
        bench.image
    );
    println!(
        "cold boot median: berth {bc:.2} s, shell flow {sc:.2} s, ratio berth/shell {:.2}",
        bc / sc
    );
    println!(
        "  berth's cold boot, medians: pull (the hand-off runs alongside) {:.2} s, hand-off after the pull {:.2} s, compose up {:.2} s",
        median(&mut pull),
        median(&mut tail),
        median(&mut up)
    );
    println!(
        "warm restart median: berth {bw:.2} s, shell flow {sw:.2} s, shell/berth speed-up {:.1}x",
        sw / bw
    );
}

/// One cold boot of busybox + `gb` × 1 GB: the boot agent's peak RSS.
fn rss(berth: &str, gb: u64) {
    eprintln!("pushing busybox + {gb} x 1 GB of random data…");
    let mut spec = ImageSpec::new().busybox();
    for _ in 0..gb {
        spec = spec.layer(1_000_000_000);
    }
    let bench = Bench::new(berth, &spec, None);
    let t = Instant::now();
    let (log, peak) = run_sampling_rss(&mut bench.berth_command());
    let secs = t.elapsed().as_secs_f64();
    // GNU time's figure for comparison: it counts the compose tool too,
    // which runs as the agent's child.
    bench.down("berthbench");
    bench.forget_images();
    let _ = std::fs::remove_dir_all(&bench.state);
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("%M")
        .arg(berth)
        .args(bench.berth_args());
    timed.env("DOCKER_HOST", bench.engine.host());
    let out = timed.stdin(Stdio::null()).output().expect("GNU time");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let gnu_kb: u64 = stderr
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    bench.down("berthbench");
    println!(
        "cold boot of {} (busybox + {gb} x 1 GB) on loopback: {secs:.1} s; boot agent peak RSS (VmHWM, sampled) {:.1} MiB; GNU time %M (agent and its compose tool) {:.1} MiB",
        bench.image,
        peak as f64 / (1 << 20) as f64,
        gnu_kb as f64 / 1024.0
    );
    println!(
        "  pull {:.2} s, hand-off after the pull {:.2} s, compose up {:.2} s",
        step_secs(&log, "5/7"),
        step_secs(&log, "6/7"),
        step_secs(&log, "7/7")
    );
}

/// The engine, the registry behind its proxy, and both flows' inputs.
struct Bench {
    berth: String,
    engine: Dockerd,
    _registry: Registry,
    _proxy: FaultProxy,
    _work: tempfile::TempDir,
    image: String,
    host: String,
    shared: PathBuf,
    key: PathBuf,
    state: PathBuf,
    shell_dir: PathBuf,
    docker_config: PathBuf,
}

const USER: &str = "alice";
const PASSWORD: &str = "bench-password";

impl Bench {
    fn new(berth: &str, spec: &ImageSpec, link: Option<(u64, Duration)>) -> Bench {
        let engine = Dockerd::start();
        let registry = Registry::with_htpasswd(&[(USER, PASSWORD)]);
        eprintln!("pushing the image…");
        push_image(
            &PushTarget::new(&registry.host_port()).with_creds(USER, PASSWORD),
            "bench/app",
            "1",
            spec,
        );
        // Both flows know the registry by the proxy's address.
        let proxy = FaultProxy::start(&registry);
        if let Some((bps, rtt)) = link {
            proxy.set_link(bps, rtt);
        }
        let host = proxy.host_port();
        let image = format!("{host}/bench/app:1");
        let work = workdir("bench-boot");
        let w = work.path().to_path_buf();
        let yaml = format!(
            "services:\n  app:\n    image: {image}\n    network_mode: none\n    environment:\n      - GREETING=${{GREETING}}\n    command: [\"sh\", \"-c\", \"echo $$GREETING; sleep 600\"]\n"
        );
        // Berth's inputs: the host-shared folder with a sealed env.
        let shared = w.join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        let key = w.join("app.key");
        let out = Command::new(berth)
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
        let sys = serde_json::json!({"registry_endpoints": {host.clone(): proxy.base_url()}});
        std::fs::write(shared.join("sys-config.json"), sys.to_string()).unwrap();
        let envfile = w.join("secrets.env");
        std::fs::write(
            &envfile,
            format!("GREETING=hi\nDSTACK_DOCKER_USERNAME={USER}\nDSTACK_DOCKER_PASSWORD={PASSWORD}\nDSTACK_DOCKER_REGISTRY={host}\n"),
        )
        .unwrap();
        let sealed = Command::new(berth)
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
        Bench {
            berth: berth.to_owned(),
            engine,
            _registry: registry,
            _proxy: proxy,
            image,
            host,
            state: w.join("state"),
            shared,
            key,
            shell_dir,
            docker_config,
            _work: work,
        }
    }

    fn compose(&self, dir: &Path, project: &str, args: &[&str]) -> Command {
        let mut c = Command::new("docker-compose");
        c.current_dir(dir)
            .env("DOCKER_HOST", self.engine.host())
            .env("DOCKER_CONFIG", &self.docker_config)
            .env("GREETING", "hi")
            .args(["--project-name", project, "--file", "docker-compose.yml"])
            .args(args);
        c
    }

    fn berth_args(&self) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec!["guest".into(), "boot".into(), "--shared".into()];
        a.push(self.shared.clone().into());
        a.push("--state".into());
        a.push(self.state.clone().into());
        a.push("--env-key-file".into());
        a.push(self.key.clone().into());
        a.extend(["--project".into(), "berthbench".into()]);
        a
    }

    fn berth_command(&self) -> Command {
        let mut c = Command::new(&self.berth);
        c.args(self.berth_args())
            .env("DOCKER_HOST", self.engine.host());
        c
    }

    /// A boot: its wall time and serial log.
    fn berth_boot(&self) -> (f64, String) {
        let t = Instant::now();
        let log = run(&mut self.berth_command());
        (t.elapsed().as_secs_f64(), log)
    }

    fn shell_boot(&self) -> f64 {
        let t = Instant::now();
        let mut login = Command::new("docker");
        login
            .env("DOCKER_HOST", self.engine.host())
            .env("DOCKER_CONFIG", &self.docker_config)
            .args(["login", "--username", USER, "--password-stdin", &self.host])
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        let mut child = login.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(PASSWORD.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
        let t1 = Instant::now();
        run(&mut self.compose(&self.shell_dir, "shellbench", &["pull"]));
        let t2 = Instant::now();
        run(&mut self.compose(&self.shell_dir, "shellbench", &["up", "-d"]));
        if std::env::var_os("BENCH_SHOW_LOG").is_some() {
            eprintln!(
                "shell: login {:.2} s, pull {:.2} s, up {:.2} s",
                (t1 - t).as_secs_f64(),
                (t2 - t1).as_secs_f64(),
                t2.elapsed().as_secs_f64()
            );
        }
        t.elapsed().as_secs_f64()
    }

    fn project_dir(&self, project: &str) -> PathBuf {
        if project == "berthbench" {
            self.state.join("compose")
        } else {
            self.shell_dir.clone()
        }
    }

    fn down(&self, project: &str) {
        run(&mut self.compose(
            &self.project_dir(project),
            project,
            &["down", "--timeout", "0"],
        ));
    }

    fn stop(&self, project: &str) {
        run(&mut self.compose(
            &self.project_dir(project),
            project,
            &["stop", "--timeout", "0"],
        ));
    }

    fn forget_images(&self) {
        let ids = self.engine.docker_out(&["images", "-aq"]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = self.engine.docker().args(["rmi", "-f"]).args(&ids).output();
        }
    }
}
