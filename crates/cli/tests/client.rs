//! The client side as a new user meets it: `berth deploy` (its pre-flight
//! runs in process: credentials piped with `-e -` reach it, and no secret is
//! copied onto another process's command line), the trusted KMS key from
//! `BERTH_KMS_PUBKEY` (what `make demo` suggests), and `berth cvms list|get`
//! readable by a person and by a script. Against a real `berth up` on a
//! private Docker engine and a real registry with a password.

mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use testkit::Dockerd;

const PASSWORD: &str = "canary-client-pw-8c41d2a7";
const ADMIN_KEY: &str = "berth_client_test_admin_key_0123";

/// `berth up` with the test's admin key. The KMS key it printed is the one
/// it wrote to STATE/kms-public-key, which a user exports.
fn up(state: &Path, docker_host: &str, args: &[&str]) -> Cloud {
    let cloud = Cloud::start(state, docker_host, Some(ADMIN_KEY), args);
    let written = std::fs::read_to_string(state.join("kms-public-key"))
        .expect("berth up writes STATE/kms-public-key");
    assert_eq!(written.trim(), cloud.kms_pubkey);
    cloud
}

/// `berth ARGS` as a user with the suggested exports: API URL, API key and
/// the pinned KMS key in the environment, and an empty data folder (so the
/// key can only come from `BERTH_KMS_PUBKEY`).
fn user_cmd(cloud: &Cloud, home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(args)
        .env("BERTH_API_URL", &cloud.api)
        .env("BERTH_API_KEY", ADMIN_KEY)
        .env("BERTH_KMS_PUBKEY", &cloud.kms_pubkey)
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("DOCKER_CONFIG", home.join("no-docker-config"))
        .env_remove("DSTACK_DOCKER_USERNAME")
        .env_remove("DSTACK_DOCKER_PASSWORD")
        .env_remove("DSTACK_DOCKER_REGISTRY")
        .env_remove("BERTH_CONFIG");
    cmd
}

#[test]
fn deploy_preflight_in_process_and_cvms_list_get_as_a_new_user_meets_them() {
    let engine = Dockerd::start();
    let (_reg, host, mapped) = busybox_registry(Some(("alice", PASSWORD)), "alice/app");
    let dir = tempdir("client");
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let cloud = up(&dir.join("state"), &engine.host(), &[&mapped]);
    let compose: PathBuf = dir.join("compose.yml");
    std::fs::write(
        &compose,
        format!("services:\n  app:\n    image: {host}/alice/app:1\n    network_mode: none\n    command: [\"sh\", \"-c\", \"echo up; sleep 600\"]\n"),
    )
    .unwrap();
    let compose = compose.to_str().unwrap();

    // 1. Credentials piped on standard input: the pre-flight sees them (it
    // used to run `berth check` as a child, which found stdin consumed and
    // failed with credentials_rejected), and the CVM boots. The KMS key comes
    // from BERTH_KMS_PUBKEY only, as `make demo` suggests.
    let creds = format!(
        "DSTACK_DOCKER_USERNAME=alice\nDSTACK_DOCKER_PASSWORD={PASSWORD}\nDSTACK_DOCKER_REGISTRY={host}\n"
    );
    let piped = run(
        &mut user_cmd(
            &cloud,
            &home,
            &[
                "deploy",
                "-n",
                "stdin-app",
                "-c",
                compose,
                "-e",
                "-",
                "--wait",
            ],
        ),
        creds.as_bytes(),
    );
    assert_eq!(piped.code, 0, "{}\n{}", piped.stdout, piped.stderr);
    assert!(
        piped.stderr.contains("Pre-flight: checking 1 image")
            && piped
                .stderr
                .contains(&format!("ok      {host}/alice/app:1")),
        "{}",
        piped.stderr
    );
    assert!(
        piped.stderr.contains("verified against KMS"),
        "{}",
        piped.stderr
    );
    assert!(piped.stdout.contains("BOOT OK"), "{}", piped.stdout);
    assert!(
        !piped.stderr.contains("note: -e KEY=VALUE"),
        "{}",
        piped.stderr
    );
    assert!(!piped.stdout.contains(PASSWORD) && !piped.stderr.contains(PASSWORD));

    // 2. `-e KEY=VALUE`: while the deploy runs (pre-flight, sealing, boot),
    // no process but the deploy itself has the password on its command line.
    let mut deploy = user_cmd(
        &cloud,
        &home,
        &[
            "deploy",
            "-n",
            "argv-app",
            "-c",
            compose,
            "-e",
            "DSTACK_DOCKER_USERNAME=alice",
            "-e",
            &format!("DSTACK_DOCKER_PASSWORD={PASSWORD}"),
            "-e",
            &format!("DSTACK_DOCKER_REGISTRY={host}"),
            "--wait",
        ],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("berth deploy");
    let watch = ArgvWatch::start(PASSWORD, Some(deploy.id()), Duration::ZERO);
    let (stdout, stderr) = {
        let mut out = String::new();
        let mut err = String::new();
        let mut o = deploy.stdout.take().unwrap();
        let mut e = deploy.stderr.take().unwrap();
        let t = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            s
        });
        std::io::Read::read_to_string(&mut o, &mut out).unwrap();
        err.push_str(&t.join().unwrap());
        (out, err)
    };
    let status = deploy.wait().unwrap();
    let scan = watch.finish();
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("Pre-flight"), "{stderr}");
    // The user is told what their own argv exposes, and what to use instead.
    assert!(
        stderr.contains("note: -e KEY=VALUE") && stderr.contains("prefer -e FILE or -e -"),
        "{stderr}"
    );
    assert!(stdout.contains("BOOT OK"), "{stdout}");
    assert!(
        scan.seen_skip,
        "the /proc scan never saw the deploy's own argv ({} passes): it proves nothing",
        scan.passes
    );
    assert!(
        scan.found.is_empty(),
        "processes other than `berth deploy` had the password on their command line: {:?}",
        scan.found
    );

    // 3. A boot that fails: a wrong password, past the pre-flight.
    let bad = run(
        &mut user_cmd(
            &cloud,
            &home,
            &[
                "deploy",
                "-n",
                "bad-pw-app",
                "-c",
                compose,
                "-e",
                "-",
                "--no-check",
                "--wait",
            ],
        ),
        creds.replace(PASSWORD, "not-the-password").as_bytes(),
    );
    assert_eq!(bad.code, 3, "{}\n{}", bad.stdout, bad.stderr);

    // 4. `berth cvms list`: a header row, then one row per CVM (plain output:
    // stdout is a pipe here).
    let list = run(&mut user_cmd(&cloud, &home, &["cvms", "list"]), b"");
    assert_eq!(list.code, 0, "{}", list.stderr);
    let lines: Vec<&str> = list.stdout.lines().collect();
    let header: Vec<&str> = lines[0]
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        ["NAME", "STATUS", "APP ID", "CREATED", "ID"],
        "{}",
        list.stdout
    );
    assert_eq!(lines.len(), 4, "{}", list.stdout);
    let row = |name: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{}", list.stdout))
    };
    assert!(row("stdin-app").contains(" running "), "{}", list.stdout);
    assert!(
        row("bad-pw-app").contains("boot_failed (credentials_rejected)"),
        "{}",
        list.stdout
    );
    // The columns line up under the header.
    let status_col = lines[0].find("STATUS").unwrap();
    let created_col = lines[0].find("CREATED").unwrap();
    for l in &lines[1..] {
        assert_ne!(l.as_bytes()[status_col], b' ', "{}", list.stdout);
        assert_eq!(l.as_bytes()[status_col - 1], b' ', "{}", list.stdout);
        assert!(l[created_col..].starts_with("20"), "{}", list.stdout);
    }

    let list_json = run(
        &mut user_cmd(&cloud, &home, &["cvms", "list", "--json"]),
        b"",
    );
    assert_eq!(list_json.code, 0, "{}", list_json.stderr);
    let objs: Vec<Value> = list_json
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let names: BTreeSet<&str> = objs.iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["stdin-app", "argv-app", "bad-pw-app"])
    );
    let bad_obj = objs.iter().find(|o| o["name"] == "bad-pw-app").unwrap();
    assert_eq!(bad_obj["status"], "boot_failed");
    assert_eq!(bad_obj["boot_category"], "credentials_rejected");
    assert_eq!(bad_obj["registries"], serde_json::json!([host]));

    // 5. `berth cvms get`: a readable view, and the raw answer for scripts.
    let raw = run(
        &mut user_cmd(&cloud, &home, &["cvms", "get", "bad-pw-app", "--json"]),
        b"",
    );
    assert_eq!(raw.code, 0, "{}", raw.stderr);
    let raw: Value = serde_json::from_str(&raw.stdout).expect("JSON");
    let hash = raw["compose_hash"].as_str().unwrap().to_owned();
    assert_eq!(hash.len(), 64);
    let get = run(
        &mut user_cmd(&cloud, &home, &["cvms", "get", "bad-pw-app"]),
        b"",
    );
    assert_eq!(get.code, 0, "{}", get.stderr);
    eprintln!(
        "berth cvms list:\n{}\nberth cvms get bad-pw-app:\n{}",
        list.stdout, get.stdout
    );
    let field = |k: &str| -> String {
        get.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .unwrap_or_else(|| panic!("no `{k}:` line:\n{}", get.stdout))
            .trim()
            .to_owned()
    };
    assert_eq!(field("Name"), "bad-pw-app");
    assert_eq!(field("ID"), raw["vm_uuid"].as_str().unwrap());
    let status = field("Status");
    assert!(
        status.starts_with("boot_failed (credentials_rejected): ")
            && status.contains("rejected the DSTACK_DOCKER_USERNAME/DSTACK_DOCKER_PASSWORD")
            && status.matches("credentials_rejected").count() == 1,
        "{}",
        get.stdout
    );
    assert_eq!(
        field("App ID"),
        format!("app_{}", raw["app_id"].as_str().unwrap())
    );
    assert_eq!(field("Compose hash"), hash);
    assert!(field("Created").starts_with("20") && field("Created").ends_with("UTC"));
    assert_eq!(field("Registries"), host);
    assert_eq!(field("Boot category"), "credentials_rejected");
    assert!(!get.stdout.contains(PASSWORD));

    let ok = run(
        &mut user_cmd(&cloud, &home, &["cvms", "get", "stdin-app"]),
        b"",
    );
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(
        ok.stdout.contains("Status:        running\n"),
        "{}",
        ok.stdout
    );
    assert!(ok.stdout.contains("Boot category: ok\n"), "{}", ok.stdout);
}
