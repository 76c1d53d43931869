//! `make bench` (pull): `berth pull` against `skopeo copy docker://… oci:…`
//! on the same image in the same local registry, alternately, N runs each.
//! Prints each run, the medians, their ratio, peak RSS (GNU time's %M), and
//! a floor (parallel curl GETs into /dev/null: no hashing, no disk).
//!
//! Three scenarios, each in the same run for both tools:
//! 1. loopback, 4 layers of LAYER_MB (the benchmark recorded since issue 3);
//! 2. loopback, one layer of BIG_MB;
//! 3. one layer of BIG_MB through testkit's throttling proxy
//!    (`FaultProxy::throttled`): LINK_MBPS per connection and RTT_MS of
//!    round trip, as a registry behind a CDN looks from a CVM. Berth and
//!    skopeo both go through the same proxy.
//!
//! Scenario 1 runs RUNS times per tool, 2 and 3 BIG_RUNS times; BIG_MB 0
//! skips them.
//!
//! Usage: bench_pull BERTH_BINARY [RUNS] [LAYER_MB] [BIG_MB] [LINK_MBPS] [RTT_MS] [BIG_RUNS]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::bench::median;
use testkit::images::{ImageSpec, PushTarget, PushedImage, push_image};
use testkit::{FaultProxy, Registry, workdir};

/// Ranged parts Berth uses by default (`registry::RangedOptions`), for the
/// floor's curl GETs.
const CONNECTIONS: u64 = 8;

struct Sample {
    secs: f64,
    rss_kib: u64,
}

fn timed(cmd: &mut Command) -> Sample {
    let rss_file = tempfile_path();
    let start = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss_file)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .output()
        .expect("run /usr/bin/time");
    let secs = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    let rss_kib = std::fs::read_to_string(&rss_file)
        .unwrap()
        .trim()
        .lines()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    let _ = std::fs::remove_file(rss_file);
    Sample { secs, rss_kib }
}

fn tempfile_path() -> PathBuf {
    std::env::temp_dir().join(format!(
        "berth-bench-rss-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ))
}

const USER: &str = "bench";
const PASSWORD: &str = "bench-password";

/// One scenario: `image` (as `host/repo:tag`) pulled `runs` times by each
/// tool, alternately, from `host` (the registry or a proxy in front of it).
struct Scenario<'a> {
    name: &'a str,
    /// For file names.
    tag: &'a str,
    berth: &'a str,
    work: &'a Path,
    host: String,
    repo: &'a str,
    pushed: &'a PushedImage,
    runs: usize,
    /// Parallel connections of the floor's curl GETs, each a `Range` of
    /// every layer (1: one plain GET per layer).
    floor_connections: u64,
}

impl Scenario<'_> {
    fn run(&self) {
        let host = &self.host;
        let image = format!("{host}/{}:1", self.repo);
        let tag = self.tag;
        let creds = self.work.join(format!("creds-{tag}.env"));
        std::fs::write(
            &creds,
            format!("DSTACK_DOCKER_USERNAME={USER}\nDSTACK_DOCKER_PASSWORD={PASSWORD}\nDSTACK_DOCKER_REGISTRY={host}\n"),
        )
        .unwrap();
        // skopeo reads the password from an auth file, not its command line.
        let authfile = testkit::images::auth_file(
            self.work,
            &PushTarget::new(host).with_creds(USER, PASSWORD),
        )
        .expect("credentials given");
        let (mut berth_secs, mut skopeo_secs) = (Vec::new(), Vec::new());
        let (mut berth_rss, mut skopeo_rss) = (0u64, 0u64);
        println!("-- {}", self.name);
        println!("run  tool    seconds  peak_rss_MiB");
        for i in 0..self.runs {
            let store = self.work.join(format!("berth-{tag}-{i}"));
            let s = timed(
                Command::new(self.berth)
                    .args(["pull", "--json", "--store"])
                    .arg(&store)
                    .arg("-e")
                    .arg(&creds)
                    .arg(&image),
            );
            println!(
                "{i:>3}  berth   {:>7.2}  {:>12.1}",
                s.secs,
                s.rss_kib as f64 / 1024.0
            );
            berth_secs.push(s.secs);
            berth_rss = berth_rss.max(s.rss_kib);
            std::fs::remove_dir_all(&store).unwrap();

            let dest = self.work.join(format!("skopeo-{tag}-{i}"));
            let s = timed(
                Command::new("skopeo")
                    .args([
                        "copy",
                        "--quiet",
                        "--src-tls-verify=false",
                        "--src-authfile",
                    ])
                    .arg(&authfile)
                    .arg(format!("docker://{image}"))
                    .arg(format!("oci:{}:bench", dest.display())),
            );
            println!(
                "{i:>3}  skopeo  {:>7.2}  {:>12.1}",
                s.secs,
                s.rss_kib as f64 / 1024.0
            );
            skopeo_secs.push(s.secs);
            skopeo_rss = skopeo_rss.max(s.rss_kib);
            std::fs::remove_dir_all(&dest).unwrap();
        }
        let mut floor: Vec<f64> = (0..self.runs).map(|_| self.floor_once()).collect();
        let f = median(&mut floor);
        let (b, s) = (median(&mut berth_secs), median(&mut skopeo_secs));
        let layers = &self.pushed.image.layers;
        println!(
            "floor ({} parallel curl GETs{} of the {} layer(s) into /dev/null): median {f:.2} s",
            self.floor_connections as usize * layers.len(),
            if self.floor_connections > 1 {
                " of Range parts"
            } else {
                ""
            },
            layers.len()
        );
        println!(
            "image: {image} ({} layer(s), {} MB, digest {})",
            layers.len(),
            layers.iter().map(|l| l.size).sum::<u64>() / 1_000_000,
            self.pushed.digest
        );
        println!(
            "median wall time: berth {b:.2} s, skopeo {s:.2} s, ratio berth/skopeo {:.2}",
            b / s
        );
        println!(
            "peak RSS: berth {:.1} MiB, skopeo {:.1} MiB",
            berth_rss as f64 / 1024.0,
            skopeo_rss as f64 / 1024.0
        );
        println!();
    }

    /// Every layer fetched by curl, in `floor_connections` ranged GETs each
    /// (all at once), into /dev/null.
    fn floor_once(&self) -> f64 {
        let start = Instant::now();
        let mut children = Vec::new();
        for layer in &self.pushed.image.layers {
            let n = self.floor_connections.max(1);
            let part = layer.size.div_ceil(n);
            for i in 0..n {
                let mut cmd = Command::new("curl");
                cmd.args([
                    "-sf",
                    "-o",
                    "/dev/null",
                    "-u",
                    &format!("{USER}:{PASSWORD}"),
                ]);
                if n > 1 {
                    let first = i * part;
                    let last = ((i + 1) * part).min(layer.size) - 1;
                    cmd.arg("-r").arg(format!("{first}-{last}"));
                }
                cmd.arg(format!(
                    "http://{}/v2/{}/blobs/{}",
                    self.host, self.repo, layer.digest
                ));
                children.push(cmd.spawn().unwrap());
            }
        }
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
        start.elapsed().as_secs_f64()
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> T
where
    T::Err: std::fmt::Debug,
{
    args.get(i).map(|s| s.parse().unwrap()).unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let berth = args
        .get(1)
        .expect(
            "usage: bench_pull BERTH_BINARY [RUNS] [LAYER_MB] [BIG_MB] [LINK_MBPS] [RTT_MS] [BIG_RUNS]",
        )
        .clone();
    let runs: usize = arg(&args, 2, 5);
    let layer_mb: u64 = arg(&args, 3, 100);
    let big_mb: u64 = arg(&args, 4, 1000);
    let link_mbps: u64 = arg(&args, 5, 50);
    let rtt_ms: u64 = arg(&args, 6, 20);
    let big_runs: usize = arg(&args, 7, 3);
    let reg = Registry::with_htpasswd(&[(USER, PASSWORD)]);
    let host = reg.host_port();
    let target = PushTarget::new(&host).with_creds(USER, PASSWORD);
    let work = workdir("bench-pull");

    eprintln!(
        "building and pushing a 4-layer image of {} MB of random data…",
        4 * layer_mb
    );
    let four = push_image(
        &target,
        "bench/big",
        "1",
        &ImageSpec::with_layers(&[layer_mb * 1_000_000; 4]),
    );
    Scenario {
        name: &format!("loopback, 4 x {layer_mb} MB"),
        tag: "loopback-4",
        berth: &berth,
        work: work.path(),
        host: host.clone(),
        repo: "bench/big",
        pushed: &four,
        runs,
        floor_connections: 1,
    }
    .run();
    if big_mb == 0 {
        return;
    }

    eprintln!("building and pushing a 1-layer image of {big_mb} MB of random data…");
    let one = push_image(
        &target,
        "bench/one",
        "1",
        &ImageSpec::with_layers(&[big_mb * 1_000_000]),
    );
    Scenario {
        name: &format!("loopback, 1 x {big_mb} MB"),
        tag: "loopback-1",
        berth: &berth,
        work: work.path(),
        host: host.clone(),
        repo: "bench/one",
        pushed: &one,
        runs: big_runs,
        floor_connections: CONNECTIONS,
    }
    .run();

    let proxy = FaultProxy::throttled(
        reg.addr(),
        link_mbps * 1_000_000,
        Duration::from_millis(rtt_ms),
    );
    Scenario {
        name: &format!(
            "through the throttling proxy ({link_mbps} MB/s per connection, {rtt_ms} ms round trip), 1 x {big_mb} MB"
        ),
        tag: "link-1",
        berth: &berth,
        work: work.path(),
        host: proxy.host_port(),
        repo: "bench/one",
        pushed: &one,
        runs: big_runs,
        floor_connections: CONNECTIONS,
    }
    .run();
}
