//! `make bench` (pull): `berth pull` against `skopeo copy docker://… oci:…`
//! on the same image in the same local registry, alternately, N runs each.
//! Prints each run, the medians, their ratio, and peak RSS (GNU time's %M).
//!
//! Usage: bench_pull BERTH_BINARY [RUNS] [LAYER_MB]

use std::process::Command;
use std::time::Instant;
use testkit::bench::median;
use testkit::images::{ImageSpec, PushTarget, push_image};
use testkit::{Registry, workdir};

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

fn tempfile_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "berth-bench-rss-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let berth = args
        .get(1)
        .expect("usage: bench_pull BERTH_BINARY [RUNS] [LAYER_MB]")
        .clone();
    let runs: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(5);
    let layer_mb: u64 = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(100);
    let (user, pw) = ("bench", "bench-password");
    let reg = Registry::with_htpasswd(&[(user, pw)]);
    let host = reg.host_port();
    eprintln!(
        "building and pushing a 4-layer image of {} MB of random data…",
        4 * layer_mb
    );
    let spec = ImageSpec::with_layers(&[layer_mb * 1_000_000; 4]);
    let pushed = push_image(
        &PushTarget::new(&host).with_creds(user, pw),
        "bench/big",
        "1",
        &spec,
    );
    let image = format!("{host}/bench/big:1");
    let work = workdir("bench-pull");
    let creds = work.path().join("creds.env");
    std::fs::write(
        &creds,
        format!("DSTACK_DOCKER_USERNAME={user}\nDSTACK_DOCKER_PASSWORD={pw}\nDSTACK_DOCKER_REGISTRY={host}\n"),
    )
    .unwrap();

    // skopeo reads the password from an auth file, not its command line.
    let authfile =
        testkit::images::auth_file(work.path(), &PushTarget::new(&host).with_creds(user, pw))
            .expect("credentials given");
    let (mut berth_secs, mut skopeo_secs) = (Vec::new(), Vec::new());
    let (mut berth_rss, mut skopeo_rss) = (0u64, 0u64);
    println!("run  tool    seconds  peak_rss_MiB");
    for i in 0..runs {
        let store = work.path().join(format!("berth-{i}"));
        let s = timed(
            Command::new(&berth)
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

        let dest = work.path().join(format!("skopeo-{i}"));
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
    // The floor: the same blobs fetched in parallel by curl into /dev/null
    // (no hashing, no disk), to show how much of the time is the registry's.
    let mut floor = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let children: Vec<_> = pushed
            .image
            .layers
            .iter()
            .map(|l| {
                Command::new("curl")
                    .args(["-sf", "-o", "/dev/null", "-u", &format!("{user}:{pw}")])
                    .arg(format!("http://{host}/v2/bench/big/blobs/{}", l.digest))
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
        floor.push(start.elapsed().as_secs_f64());
    }
    let f = median(&mut floor);
    let (b, s) = (median(&mut berth_secs), median(&mut skopeo_secs));
    println!("floor (4 parallel curl GETs of the layers into /dev/null): median {f:.2} s");
    println!();
    println!(
        "image: {image} ({} layers of {layer_mb} MB, digest {})",
        4, pushed.digest
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
}
