//! `make bench` (pre-launch): in testkit's dstack guest emulation, Berth's
//! pre-launch script (`berth prelaunch-script`, the agent pulling) against
//! the documented default flow (`docker login` + `docker compose pull`,
//! then the runner's `up`), on the same image and registry, through one
//! throttling proxy: cold boot (a new CVM: empty engine, empty persistent
//! disk), reboot (engine and persistent disk kept, containers stopped),
//! and the registry requests one reboot sends. Each flow has its own
//! engine (both projects are named `dstack`, as in a CVM).
//!
//! Usage: bench_prelaunch BERTH_BINARY [RUNS] [LAYER_MB] [LINK]
//! (`LINK` = `MBPS/RTT_MS` per connection, or `none` for loopback).

use std::time::Duration;
use testkit::bench::median;
use testkit::dstack_guest::{DstackGuest, GuestApp, Shell};
use testkit::images::{ImageSpec, PushTarget, push_image};
use testkit::{Dockerd, FaultProxy, Registry, RequestKind};

const USER: &str = "alice";
const PASSWORD: &str = "bench-password";

/// The documented default flow, as a pre-launch script: log in, pull with
/// compose (fail-soft), then the runner's `up` starts the app.
const DEFAULT_FLOW: &str = r#"export DOCKER_CONFIG="$BERTH_GUEST_ROOT/root/.docker"
[ -f docker-compose.yaml ] || jq -r '.docker_compose_file' app-compose.json > docker-compose.yaml
printf '%s\n' "$DSTACK_DOCKER_PASSWORD" | docker login -u "$DSTACK_DOCKER_USERNAME" --password-stdin "$DSTACK_DOCKER_REGISTRY"
if docker compose version >/dev/null 2>&1; then
  docker compose -f docker-compose.yaml pull || echo "WARNING: docker compose pull failed"
else
  docker-compose -f docker-compose.yaml pull || echo "WARNING: docker compose pull failed"
fi
"#;

struct Flow {
    name: &'static str,
    engine: Dockerd,
    guest: DstackGuest,
}

impl Flow {
    fn new(name: &'static str, app: impl Fn(&DstackGuest) -> GuestApp) -> Flow {
        let engine = Dockerd::start();
        let mut guest = DstackGuest::new(&format!("bench-prelaunch-{name}"), &engine);
        guest.set_quiet(true);
        guest.install(&app(&guest));
        Flow {
            name,
            engine,
            guest,
        }
    }

    /// A new CVM: nothing in the engine, nothing on the persistent disk.
    fn forget(&self) {
        let ids = self.engine.docker_out(&["ps", "-aq"]);
        if !ids.trim().is_empty() {
            let _ = self
                .engine
                .docker()
                .args(["rm", "-f"])
                .args(ids.split_whitespace())
                .output();
        }
        let _ = self
            .engine
            .docker()
            .args(["image", "prune", "-af"])
            .output();
        let p = self.guest.persistent();
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        let _ = std::fs::remove_dir_all(self.guest.root().join("root/.docker"));
    }

    /// The app's containers stop, as at a CVM's shutdown.
    fn stop(&self) {
        let ids = self.engine.docker_out(&["ps", "-q"]);
        if !ids.trim().is_empty() {
            let _ = self
                .engine
                .docker()
                .args(["stop", "-t", "1"])
                .args(ids.split_whitespace())
                .output();
        }
    }

    fn boot(&self) -> f64 {
        self.guest.reboot();
        let run = self.guest.boot(Shell::Strict, Duration::from_secs(1800));
        assert!(
            run.ok,
            "{} boot failed:\n{}\n{}",
            self.name, run.stdout, run.stderr
        );
        run.elapsed.as_secs_f64()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let berth = args
        .get(1)
        .expect("usage: bench_prelaunch BERTH_BINARY [RUNS] [LAYER_MB] [LINK]")
        .clone();
    let runs: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(3);
    let layer_mb: u64 = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(100);
    let link = args.get(4).filter(|l| *l != "none").map(|l| {
        let (mbps, rtt) = l.split_once('/').expect("LINK is MBPS/RTT_MS");
        (
            mbps.parse::<u64>().unwrap() * 1_000_000,
            Duration::from_millis(rtt.parse().unwrap()),
        )
    });
    let registry = Registry::with_htpasswd(&[(USER, PASSWORD)]);
    eprintln!("pushing the image…");
    push_image(
        &PushTarget::new(&registry.host_port()).with_creds(USER, PASSWORD),
        "bench/app",
        "1",
        &ImageSpec::new()
            .busybox()
            .layer(layer_mb * 1_000_000)
            .layer(layer_mb * 1_000_000),
    );
    let proxy = FaultProxy::start(&registry);
    if let Some((bps, rtt)) = link {
        proxy.set_link(bps, rtt);
    }
    let host = proxy.host_port();
    let image = format!("{host}/bench/app:1");
    let compose = format!(
        "services:\n  app:\n    image: {image}\n    network_mode: none\n    command: [\"sh\", \"-c\", \"echo up; sleep 600\"]\n"
    );
    let env = vec![
        ("DSTACK_DOCKER_USERNAME".to_owned(), USER.to_owned()),
        ("DSTACK_DOCKER_PASSWORD".to_owned(), PASSWORD.to_owned()),
        ("DSTACK_DOCKER_REGISTRY".to_owned(), host.clone()),
    ];

    let berth_flow = Flow::new("berth", |guest| {
        let dir = guest.outside();
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("berth");
        std::fs::copy(&berth, &bin).unwrap();
        let sha = testkit::sha256_hex(&std::fs::read(&bin).unwrap());
        let out = std::process::Command::new(&berth)
            .args(["prelaunch-script", "--url"])
            .arg(format!("file://{}", bin.display()))
            .args(["--sha256", &sha])
            .output()
            .unwrap();
        assert!(out.status.success());
        GuestApp {
            compose: compose.clone(),
            pre_launch_script: Some(String::from_utf8(out.stdout).unwrap()),
            env: env.clone(),
            // The CVM reaches the loopback registry only where it is mapped.
            sys_config: Some(
                serde_json::json!({"registry_endpoints": {host.clone(): proxy.base_url()}}),
            ),
            ..Default::default()
        }
    });
    let default_flow = Flow::new("default", |_| GuestApp {
        compose: compose.clone(),
        pre_launch_script: Some(DEFAULT_FLOW.to_owned()),
        env: env.clone(),
        ..Default::default()
    });

    let mut cold = [vec![], vec![]];
    let mut warm = [vec![], vec![]];
    let mut requests = [(0, 0, 0), (0, 0, 0)];
    println!(
        "run  flow     cold_s  reboot_s  reboot requests (manifest GET / manifest HEAD / blob GET)"
    );
    for i in 0..runs {
        for (k, flow) in [&berth_flow, &default_flow].into_iter().enumerate() {
            flow.forget();
            let c = flow.boot();
            flow.stop();
            proxy.clear_requests();
            let w = flow.boot();
            let r = (
                proxy.manifest_gets(),
                proxy.manifest_heads(),
                proxy.count(RequestKind::Blob, "GET"),
            );
            flow.stop();
            println!(
                "{i:>3}  {:<7}  {c:>6.2}  {w:>8.2}  {} / {} / {}",
                flow.name, r.0, r.1, r.2
            );
            cold[k].push(c);
            warm[k].push(w);
            requests[k] = r;
        }
    }
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
        "image: {image} (busybox + 2 x {layer_mb} MB), {link_text}; runner: as app-compose.sh (compose up --build, then prune)"
    );
    for (k, name) in ["berth pre-launch", "default flow"].iter().enumerate() {
        println!(
            "{name}: cold boot median {:.2} s, reboot median {:.2} s, one reboot's requests: {} manifest GET, {} manifest HEAD, {} blob GET",
            median(&mut cold[k]),
            median(&mut warm[k]),
            requests[k].0,
            requests[k].1,
            requests[k].2
        );
    }
}
