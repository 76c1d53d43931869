//! A boot ends by its deadline (issue 23, finding 4): a registry that
//! trickles a layer, one byte at a time, never goes silent long enough to
//! be cut and never runs the retry budget out; before the deadline, such a
//! boot held its node's boot slot for as long as the registry liked.
//!
//! The whole boot agent runs (`guest::boot_within`): a host-shared folder
//! naming an image on testkit's `HostileRegistry`, mapped by the operator
//! in the sys-config, no env. The Docker engine is never reached: this
//! test's `DOCKER_HOST` names a socket that does not exist (the hand-off
//! fails on its own; the pull goes on until the deadline).

use guest::{BootOptions, SerialLog};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::hostile::manifest;
use testkit::{BlobAnswer, HostileRegistry};

/// The serial log, kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_registry_that_trickles_a_layer_holds_a_boot_no_longer_than_its_deadline() {
    // SAFETY: set before any thread of this test binary reads the
    // environment (its only test, and no runtime is running yet).
    unsafe { std::env::set_var("DOCKER_HOST", "unix:///nonexistent/berth-test/docker.sock") };
    let reg = HostileRegistry::start();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = reg.put_blob(config.to_vec(), BlobAnswer::Whole);
    let layer = vec![7u8; 100_000];
    let layer_digest = reg.put_blob(layer, BlobAnswer::Trickle(Duration::from_millis(20)));
    reg.set_manifest(manifest(
        (&config_digest, config.len() as u64),
        &[(layer_digest.clone(), 100_000)],
    ));

    let dir = testkit::tempdir("boot-deadline");
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let host = reg.host_port();
    let compose = format!("services:\n  app:\n    image: {host}/lib/app:1\n");
    let app = serde_json::json!({
        "manifest_version": 2,
        "name": "trickle",
        "runner": "docker-compose",
        "docker_compose_file": compose,
    });
    std::fs::write(shared.join("app-compose.json"), app.to_string()).unwrap();
    let sys = serde_json::json!({ "registry_endpoints": { &host: format!("http://{host}") } });
    std::fs::write(shared.join("sys-config.json"), sys.to_string()).unwrap();

    let captured = Captured::default();
    let serial = SerialLog::new(Box::new(captured.clone()));
    let opts = BootOptions {
        shared,
        state: dir.join("state"),
        key_provider: None,
        project: None,
        retry_budget: Duration::from_secs(10),
        kms_ticket: None,
    };
    let deadline = Duration::from_secs(3);
    let started = Instant::now();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let result = rt
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(60),
                guest::boot_within(opts, deadline, &serial),
            )
            .await
        })
        .expect("the boot ended by its deadline");
    let elapsed = started.elapsed();
    let lines = guest::final_lines(&result, elapsed, &|h| h.to_string());
    let last = lines.last().unwrap();
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        last.starts_with(
            "BOOT FAILED: unreachable: the images did not arrive within the boot's deadline of 3s"
        ),
        "{last}\n{log}"
    );
    assert!(log.contains("[5/7] pull images: failed after"), "{log}");
    assert!(
        elapsed < deadline + Duration::from_secs(12),
        "ended after {elapsed:?}"
    );
    let gets = reg
        .blob_requests()
        .iter()
        .filter(|r| r.digest == layer_digest)
        .count();
    eprintln!("{last} (after {elapsed:?}, {gets} requests for the layer)");
}
