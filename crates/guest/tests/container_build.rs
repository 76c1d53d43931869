//! The container isolation mode builds inside the CVM (issue 17, item 2):
//! a compose file shaped like dstack's examples, with only `build:` and an
//! inline Dockerfile `FROM` a private base image. The boot agent pulls the
//! base images (one named by tag, one pinned by digest) from a real
//! password registry with the CVM's credentials, hands them to the engine
//! under the names the Dockerfiles use, writes the Dockerfiles next to the
//! compose file and runs `compose up --build` against a private engine
//! (testkit's `dockerd`; without `BERTH_CVM_ENTER_PID`, the tool runs
//! directly). The engine itself has no credentials for the registry: the
//! build can only find its bases where the boot agent put them.

use envseal::{Env, EnvPrivateKey, EnvVar, Origin};
use guest::{BootOptions, KeyFile, SerialLog};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::images::{ImageSpec, PushTarget, push_image};
use testkit::{Dockerd, Registry};

const PASSWORD: &str = "canary-build-pw-5d1c02";
const GREETING: &str = "hello-from-the-sealed-env-77";

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

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn logs_of(engine: &Dockerd, project: &str, service: &str, wanted: &str) -> String {
    let filter = |k: &str, v: &str| format!("label=com.docker.compose.{k}={v}");
    let id = engine.docker_out(&[
        "ps",
        "-aq",
        "--filter",
        &filter("project", project),
        "--filter",
        &filter("service", service),
    ]);
    let id = id
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("no container for {service}"))
        .to_owned();
    let mut text = String::new();
    for _ in 0..100 {
        let out = engine.docker().args(["logs", &id]).output().unwrap();
        text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if text.contains(wanted) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    text
}

#[test]
fn an_inline_dockerfile_builds_from_private_base_images_pulled_with_the_cvms_credentials() {
    let engine = Dockerd::start();
    // SAFETY: set before any other thread of this test binary runs (its
    // only test; the runtime is started below).
    unsafe {
        std::env::set_var("DOCKER_HOST", engine.host());
        std::env::remove_var(guest::runtime::ENTER_PID_VAR);
    }
    let reg = Registry::with_htpasswd(&[("alice", PASSWORD)]);
    let host = reg.host_port();
    let target = PushTarget::new(&host).with_creds("alice", PASSWORD);
    push_image(&target, "base/bb", "1", &ImageSpec::new().busybox());
    let pinned = push_image(
        &target,
        "base/pinned",
        "1",
        &ImageSpec::new().busybox().layer(512),
    );

    let compose = format!(
        r#"services:
  app:
    image: local/app:built
    build:
      context: .
      network: none
      dockerfile_inline: |
        FROM {host}/base/bb:1 AS base
        RUN echo built-in-the-cvm > /built
        FROM base
        RUN echo "greeting=${{GREETING:?the env has it}}" > /greeting
        RUN cat > /note <<'TXT'
        from-a-heredoc
        FROM not-an-instruction
        TXT
        CMD ["sh", "-c", "cat /built /greeting /note; echo shell=$$0; sleep 600"]
    network_mode: none
  pinned:
    build:
      network: none
      dockerfile_inline: |
        FROM {host}/base/pinned@{digest}
        RUN echo pinned-base-built > /built
        CMD ["sh", "-c", "cat /built; sleep 600"]
    network_mode: none
"#,
        digest = pinned.digest
    );

    let dir = testkit::tempdir("container-build");
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let allowed = [
        "GREETING",
        "DSTACK_DOCKER_USERNAME",
        "DSTACK_DOCKER_PASSWORD",
        "DSTACK_DOCKER_REGISTRY",
    ];
    let app = serde_json::json!({
        "manifest_version": 2,
        "name": "Inline Build",
        "runner": "docker-compose",
        "docker_compose_file": compose,
        "allowed_envs": allowed,
        "kms_enabled": true,
    });
    std::fs::write(shared.join("app-compose.json"), app.to_string()).unwrap();
    let sys = serde_json::json!({
        "registry_endpoints": { &host: reg.base_url() },
        "isolation": "container",
        "project_name": "inlinebuild",
    });
    std::fs::write(shared.join("sys-config.json"), sys.to_string()).unwrap();
    let key = EnvPrivateKey::generate();
    let key_file = dir.join("env.key");
    std::fs::write(&key_file, key.to_hex().as_str()).unwrap();
    let env = Env::from_vars(
        [
            ("GREETING", GREETING),
            ("DSTACK_DOCKER_USERNAME", "alice"),
            ("DSTACK_DOCKER_PASSWORD", PASSWORD),
            ("DSTACK_DOCKER_REGISTRY", host.as_str()),
        ]
        .iter()
        .map(|(k, v)| EnvVar::new(*k, *v, Origin::Argument))
        .collect(),
    )
    .unwrap();
    let sealed = key.public_key().seal(&env);
    std::fs::write(shared.join("encrypted-env"), sealed.as_bytes()).unwrap();

    let captured = Captured::default();
    let serial = SerialLog::new(Box::new(captured.clone()));
    let state = dir.join("state");
    let opts = || BootOptions {
        shared: shared.clone(),
        state: state.clone(),
        key_provider: Some(Box::new(KeyFile(key_file.clone()))),
        project: None,
        retry_budget: Duration::from_secs(10),
        kms_ticket: None,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let result = rt.block_on(guest::boot_within(
        opts(),
        Duration::from_secs(300),
        &serial,
    ));
    let log = captured.text();
    if let Err(e) = &result {
        panic!(
            "boot failed: {e:?}\nserial:\n{log}\nengine:\n{}",
            engine.log_contents()
        );
    }
    assert!(log.contains("isolation: container"), "{log}");
    assert!(
        log.contains("service app: built in the CVM as ")
            && log.contains(&format!("{host}/base/bb:1")),
        "{log}"
    );
    assert!(log.contains("wrote build/app/Dockerfile"), "{log}");
    assert!(log.contains("wrote build/pinned/Dockerfile"), "{log}");

    // Both built and running, from the bases the boot agent pulled.
    let app = logs_of(&engine, "inlinebuild", "app", "shell=");
    assert!(app.contains("built-in-the-cvm"), "app logs: {app}\n{log}");
    // `${GREETING}` interpolated from the sealed env, `$$0` a `$0`.
    assert!(
        app.contains(&format!("greeting={GREETING}")) && app.contains("shell=sh"),
        "app logs: {app}"
    );
    // A heredoc, which the engine's classic builder has not: its text
    // was copied in as a file.
    assert!(
        app.contains("from-a-heredoc\nFROM not-an-instruction"),
        "app logs: {app}"
    );
    let pinned_logs = logs_of(&engine, "inlinebuild", "pinned", "pinned-base-built");
    assert!(
        pinned_logs.contains("pinned-base-built"),
        "pinned logs: {pinned_logs}\n{log}"
    );
    engine.docker_out(&["image", "inspect", "local/app:built"]);

    // The Dockerfiles (which may hold env values) are gone once built.
    let compose_dir = state.join("compose");
    assert!(!compose_dir.join("build/app/Dockerfile").exists());
    assert!(!compose_dir.join("build/pinned/Dockerfile").exists());
    assert!(!compose_dir.join(".berth-heredoc/app-1").exists());
    // The rendered file holds no inline Dockerfile and no per-container
    // limits.
    let rendered = std::fs::read_to_string(compose_dir.join("docker-compose.yml")).unwrap();
    assert!(!rendered.contains("dockerfile_inline"), "{rendered}");
    assert!(!rendered.contains("cgroup_parent") && !rendered.contains("mem_limit"));

    // The password is nowhere on disk but in the sealed env.
    for f in walk(&dir) {
        if f.ends_with("encrypted-env") || f == key_file {
            continue;
        }
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(PASSWORD),
            "the password is in {}",
            f.display()
        );
    }
    assert!(!log.contains(PASSWORD) && !log.contains(GREETING));

    // A restart builds again (from the engine's cache) and runs the same.
    let again = Captured::default();
    let serial = SerialLog::new(Box::new(again.clone()));
    let result = rt.block_on(guest::boot_within(
        opts(),
        Duration::from_secs(300),
        &serial,
    ));
    let log = again.text();
    assert!(result.is_ok(), "restart failed: {result:?}\n{log}");
    assert!(log.contains("(manifest in store, HEAD only)"), "{log}");
    assert!(!compose_dir.join("build/app/Dockerfile").exists());
    let app = logs_of(&engine, "inlinebuild", "app", "shell=");
    assert!(app.contains(&format!("greeting={GREETING}")), "{app}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(walk(&p)),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
    out
}
