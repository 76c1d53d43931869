//! `make bench` (image policy): what verifying cosign signatures costs a
//! cold boot. The same 4-image app (busybox + a layer of `LAYER_MB` each,
//! from Debian's registry behind the testkit proxy) is booted cold by
//! `berth guest boot` without an image policy and with one that requires
//! every image pinned and signed (signatures made in cosign's format by
//! `testkit::cosign`), alternating, `RUNS` runs each; on loopback, or
//! through a link (`LINK` = `MBPS/RTT_MS`: every connection capped at
//! `MBPS` MB/s, `RTT_MS` added per round trip).
//!
//! Usage: bench_verify BERTH_BINARY [RUNS] [LAYER_MB] [LINK]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testkit::bench::median;
use testkit::cosign::{CosignKey, Signature, payload, push_signatures};
use testkit::images::{ImageSpec, PushTarget, push_image};
use testkit::{Dockerd, FaultProxy, Registry, workdir};

const IMAGES: usize = 4;

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

/// `[N/7] <step>: done in X ms` of the serial log, in seconds.
fn step_secs(log: &str, step: &str) -> f64 {
    log.lines()
        .find_map(|l| {
            let rest = l.split_once(&format!("] [{step}] "))?.1;
            let ms = rest.split_once(": done in ")?.1.strip_suffix(" ms")?;
            ms.parse::<f64>().ok()
        })
        .map_or(f64::NAN, |ms| ms / 1000.0)
}

struct App {
    shared: PathBuf,
    state: PathBuf,
    key: PathBuf,
    project: &'static str,
}

fn app(
    berth: &str,
    dir: &Path,
    project: &'static str,
    yaml: &str,
    sys: &serde_json::Value,
    policy: Option<&serde_json::Value>,
) -> App {
    let shared = dir.join(project).join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let key = dir.join(project).join("app.key");
    run(Command::new(berth).args(["keygen", "--out"]).arg(&key));
    let mut manifest = serde_json::json!({"manifest_version": 2, "name": project, "runner": "docker-compose",
        "docker_compose_file": yaml, "allowed_envs": [], "kms_enabled": true});
    if let Some(p) = policy {
        manifest["berth_image_policy"] = p.clone();
    }
    std::fs::write(shared.join("app-compose.json"), manifest.to_string()).unwrap();
    std::fs::write(shared.join("sys-config.json"), sys.to_string()).unwrap();
    App {
        state: dir.join(project).join("state"),
        shared,
        key,
        project,
    }
}

/// A cold boot: no state (the caller removed the engine's images).
fn boot(berth: &str, engine: &Dockerd, app: &App) -> (f64, String) {
    let _ = std::fs::remove_dir_all(&app.state);
    restart(berth, engine, app)
}

/// A restart: the state and the engine's images kept (every manifest in
/// the store: HEAD-free pinned pulls; with the policy, the signatures are
/// fetched and verified again).
fn restart(berth: &str, engine: &Dockerd, app: &App) -> (f64, String) {
    let t = Instant::now();
    let log = run(Command::new(berth)
        .args(["guest", "boot", "--shared"])
        .arg(&app.shared)
        .arg("--state")
        .arg(&app.state)
        .arg("--env-key-file")
        .arg(&app.key)
        .args(["--project", app.project])
        .env("DOCKER_HOST", engine.host()));
    (t.elapsed().as_secs_f64(), log)
}

/// Removes every container and image: the next boot is cold.
fn forget(engine: &Dockerd) {
    let ids = engine.docker_out(&["ps", "-aq"]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let _ = engine.docker().args(["rm", "-f"]).args(&ids).output();
    }
    let ids = engine.docker_out(&["images", "-aq"]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let _ = engine.docker().args(["rmi", "-f"]).args(&ids).output();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let berth = args
        .get(1)
        .expect("usage: bench_verify BERTH_BINARY [RUNS] [LAYER_MB] [LINK]")
        .clone();
    let runs: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(5);
    let layer_mb: u64 = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(20);
    let link = args.get(4).filter(|l| *l != "none").map(|l| {
        let (mbps, rtt) = l.split_once('/').expect("LINK is MBPS/RTT_MS");
        (
            mbps.parse::<u64>().unwrap() * 1_000_000,
            Duration::from_millis(rtt.parse().unwrap()),
        )
    });

    let engine = Dockerd::start();
    let registry = Registry::start();
    let key = CosignKey::from_seed("bench-verify");
    eprintln!("pushing and signing {IMAGES} images…");
    let proxy = FaultProxy::start(&registry);
    let host = proxy.host_port();
    let mut services = String::from("services:\n");
    for i in 0..IMAGES {
        let repo = format!("bench/app{i}");
        let pushed = push_image(
            &PushTarget::new(&registry.host_port()),
            &repo,
            "1",
            &ImageSpec::new()
                .busybox()
                .seeded_layer(layer_mb * 1_000_000, 100 + i as u64),
        );
        push_signatures(
            &registry,
            &repo,
            &pushed.digest,
            &[Signature::by(
                &key,
                payload(&format!("{host}/{repo}"), &pushed.digest),
            )],
        );
        services.push_str(&format!(
            "  app{i}:\n    image: {host}/{repo}:1@{}\n    network_mode: none\n    command: [\"sleep\", \"600\"]\n",
            pushed.digest
        ));
    }
    if let Some((bps, rtt)) = link {
        proxy.set_link(bps, rtt);
    }
    let work = workdir("bench-verify");
    let sys = serde_json::json!({"registry_endpoints": {host.clone(): proxy.base_url()}});
    let policy = serde_json::json!({
        "require_digests": true,
        "signatures": [{"scope": format!("{host}/bench"), "keys": [key.public_pem()]}],
    });
    let plain = app(&berth, work.path(), "verifyoff", &services, &sys, None);
    let signed = app(
        &berth,
        work.path(),
        "verifyon",
        &services,
        &sys,
        Some(&policy),
    );

    let (mut off, mut on, mut off_pull, mut on_pull) = (vec![], vec![], vec![], vec![]);
    let (mut off_warm, mut on_warm) = (vec![], vec![]);
    println!(
        "run  no_policy_s  signed_s   (pull step: no policy, signed)   restart: no_policy_s  signed_s"
    );
    for i in 0..runs {
        forget(&engine);
        let (a, log_a) = boot(&berth, &engine, &plain);
        let (wa, _) = restart(&berth, &engine, &plain);
        forget(&engine);
        let (b, log_b) = boot(&berth, &engine, &signed);
        let (wb, _) = restart(&berth, &engine, &signed);
        assert!(
            log_b.matches("cosign signature of").count() == IMAGES,
            "the signed boot did not verify {IMAGES} signatures:\n{log_b}"
        );
        let (pa, pb) = (step_secs(&log_a, "5/7"), step_secs(&log_b, "5/7"));
        println!(
            "{i:>3}  {a:>11.2}  {b:>8.2}   ({pa:.3}, {pb:.3})            {wa:>11.3}  {wb:>8.3}"
        );
        off_warm.push(wa);
        on_warm.push(wb);
        if std::env::var_os("BENCH_SHOW_LOG").is_some() {
            eprintln!("the signed boot's serial log:\n{log_b}");
        }
        off.push(a);
        on.push(b);
        off_pull.push(pa);
        on_pull.push(pb);
    }
    forget(&engine);
    let (off, on) = (median(&mut off), median(&mut on));
    let link_text = match link {
        Some((bps, rtt)) => format!(
            "through a link of {} MB/s per connection and {} ms round trip",
            bps / 1_000_000,
            rtt.as_millis()
        ),
        None => "on loopback (no link limits)".to_owned(),
    };
    println!();
    println!(
        "app: {IMAGES} images (busybox + {layer_mb} MB each), cold boots (no image in the engine, no state), {link_text}"
    );
    println!(
        "cold boot median: no policy {off:.2} s, signatures verified {on:.2} s, ratio {:.3} ({:+.1}% , {:+.0} ms)",
        on / off,
        (on / off - 1.0) * 100.0,
        (on - off) * 1000.0
    );
    println!(
        "  pull step median: no policy {:.3} s, signatures verified {:.3} s",
        median(&mut off_pull),
        median(&mut on_pull)
    );
    let (wa, wb) = (median(&mut off_warm), median(&mut on_warm));
    println!(
        "restart median (images kept; the signatures fetched and verified again): no policy {wa:.3} s, signatures verified {wb:.3} s ({:+.0} ms)",
        (wb - wa) * 1000.0
    );
}
