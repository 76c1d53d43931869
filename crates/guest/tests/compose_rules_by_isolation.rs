//! The boot agent applies the compose rules of the CVM's isolation
//! (`sys-config.json` `isolation`), whatever the control plane checked: a
//! `build:` is refused on the shared engine, and in the container mode a
//! build context outside the app's folder is refused. Both fail at step 4,
//! before any registry or engine is reached.

use guest::{BootOptions, SerialLog};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// Boots `compose` with `sys` as sys-config.json; the error and the log.
fn boot(name: &str, compose: &str, sys: serde_json::Value) -> (guest::BootError, String) {
    let dir = testkit::tempdir(name);
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let app = serde_json::json!({
        "manifest_version": 2,
        "name": name,
        "runner": "docker-compose",
        "docker_compose_file": compose,
    });
    std::fs::write(shared.join("app-compose.json"), app.to_string()).unwrap();
    std::fs::write(shared.join("sys-config.json"), sys.to_string()).unwrap();
    let captured = Captured::default();
    let serial = SerialLog::new(Box::new(captured.clone()));
    let opts = BootOptions {
        shared,
        state: dir.join("state"),
        key_provider: None,
        project: None,
        retry_budget: Duration::from_secs(5),
        kms_ticket: None,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let result = rt.block_on(guest::boot_within(opts, Duration::from_secs(60), &serial));
    let log = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    match result {
        Ok(_) => panic!("booted:\n{log}"),
        Err(e) => (e, log),
    }
}

const INLINE_BUILD: &str = "services:\n  app:\n    build:\n      context: .\n      dockerfile_inline: |\n        FROM alpine:3\n        RUN echo hi\n";

#[test]
fn a_build_is_refused_on_the_shared_engine() {
    // No `isolation` in sys-config.json: an older node, the shared mode.
    let (e, log) = boot("shared-build", INLINE_BUILD, serde_json::json!({}));
    assert!(e.message.contains("only `build:`"), "{}", e.message);
    assert!(log.contains("isolation: shared"), "{log}");
    assert!(log.contains("[4/7] read the compose file: failed"), "{log}");
    let (e, _) = boot(
        "shared-build-2",
        INLINE_BUILD,
        serde_json::json!({"isolation": "shared"}),
    );
    assert!(e.message.contains("only `build:`"), "{}", e.message);
}

#[test]
fn a_build_context_outside_the_apps_folder_is_refused_in_the_container_mode() {
    let compose = "services:\n  app:\n    build: ../../shared\n";
    let (e, log) = boot(
        "container-outside",
        compose,
        serde_json::json!({"isolation": "container"}),
    );
    assert!(
        e.message.contains("outside the app's folder"),
        "{}",
        e.message
    );
    assert!(log.contains("isolation: container"), "{log}");
}
