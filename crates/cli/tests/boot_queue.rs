//! The boot queue (issue 21, part 3) against a real `berth up --max-boots
//! 2` on a real Docker engine and a real registry: a busy node accepts
//! every commit (no 429), each CVM waits `starting` with "waiting for a
//! boot slot (N ahead)" and then runs; slots go round-robin between users
//! (one user's 10 do not hold back another user's 1 for more than a
//! round); a queued CVM that is stopped never boots, and one restarted
//! while it waits boots once.

mod common;
use common::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use testkit::Dockerd;

const ADMIN_KEY: &str = "berth_test_admin_key_queue_0123456789";

/// "waiting for a boot slot (N ahead)": N.
fn ahead(progress: &Value) -> Option<usize> {
    progress
        .as_str()?
        .strip_prefix("waiting for a boot slot (")?
        .strip_suffix(" ahead)")?
        .parse()
        .ok()
}

struct Queue {
    cloud: Cloud,
    compose: String,
}

impl Queue {
    fn new_user(&self, name: &str) -> String {
        let (code, v) = self.cloud.json_as(
            ADMIN_KEY,
            "POST",
            "/users",
            Some(&json!({"username": name})),
        );
        assert_eq!(code, 200, "{v}");
        v["api_key"].as_str().unwrap().to_owned()
    }

    /// Provisions and commits `name` as `key`: the commit's answer (the
    /// legacy shape), which must be a 200 however busy the node is.
    fn commit(&self, key: &str, name: &str) -> Value {
        let (code, p) = self.cloud.json_as(
            key,
            "POST",
            "/cvms/provision",
            Some(&json!({"name": name, "compose_file": {"docker_compose_file": self.compose, "allowed_envs": []}})),
        );
        assert_eq!(code, 200, "provision {name}: {p}");
        let (code, c) = self.cloud.call(
            key,
            "POST",
            "/cvms",
            Some(&json!({"app_id": p["app_id"], "compose_hash": p["compose_hash"], "name": name})),
        );
        assert_eq!(code, 200, "commit {name} on a busy node: {c}");
        c
    }

    fn get(&self, key: &str, id: &str) -> Value {
        self.cloud.cvm_as(key, id)
    }

    /// Waits (at most 300 s) until every CVM of `ids` has ended its boot;
    /// fails unless each is `running`.
    fn all_running(&self, cvms: &[(String, String)]) {
        let deadline = Instant::now() + Duration::from_secs(300);
        for (key, id) in cvms {
            loop {
                let v = self.get(key, id);
                if !v["in_progress"].as_bool().unwrap() {
                    assert_eq!(v["status"], "running", "{v}");
                    assert!(v.get("boot_progress").is_none(), "{v}");
                    break;
                }
                assert!(Instant::now() < deadline, "still booting: {v}");
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
}

#[test]
fn a_busy_node_queues_every_boot_and_shares_its_slots_between_users() {
    let engine = Dockerd::start();
    let (_reg, host, mapped) = busybox_registry(None, "queue/app");
    let dir = tempdir("boot-queue");
    let cloud = Cloud::start(
        &dir.join("state"),
        &engine.host(),
        Some(ADMIN_KEY),
        &[&mapped, "--max-boots", "2", "--max-boots-per-user", "2"],
    );
    let q = Queue {
        cloud,
        compose: format!(
            "services:\n  app:\n    image: {host}/queue/app:1\n    network_mode: none\n    command: [\"sh\", \"-c\", \"echo up; sleep 600\"]\n"
        ),
    };
    let users: Vec<String> = (1..=4).map(|i| q.new_user(&format!("user{i}"))).collect();

    // 1. One user's 10, then another user's 1: the one goes within the
    // next round (at most one of the 10 starts before it).
    let heavy: Vec<String> = (0..10)
        .map(|i| {
            q.commit(&users[0], &format!("heavy-{i}"))["vm_uuid"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let light = q.commit(&users[1], "light");
    let light_id = light["vm_uuid"].as_str().unwrap().to_owned();
    let waiting = |key: &str, id: &str| q.get(key, id)["boot_progress"].clone();
    let heavy_waiting = || {
        heavy
            .iter()
            .filter(|id| ahead(&waiting(&users[0], id)).is_some())
            .count()
    };
    let heavy_before = heavy_waiting();
    assert!(
        heavy_before >= 5,
        "the node boots 2 at a time: most of the 10 wait ({heavy_before})"
    );
    // Its position, in the commit's answer and in both shapes of GET.
    let at_commit = ahead(&light["boot_progress"]);
    assert!(
        at_commit.is_some_and(|n| n <= 1),
        "behind another user's {heavy_before} waiting, the light user's one is next or after one: {light}"
    );
    let (code, legacy) = q
        .cloud
        .call(&users[1], "GET", &format!("/cvms/{light_id}"), None);
    assert_eq!(code, 200, "{legacy}");
    assert_eq!(legacy["status"], "starting", "{legacy}");
    assert!(ahead(&legacy["boot_progress"]).is_some(), "{legacy}");
    assert!(legacy["boot_error"].is_null(), "{legacy}");
    let mut seen = Vec::new();
    loop {
        let v = q.get(&users[1], &light_id);
        let n = ahead(&v["boot_progress"]);
        if n.is_none() {
            break;
        }
        assert_eq!(v["status"], "starting", "{v}");
        assert!(v["in_progress"].as_bool().unwrap(), "{v}");
        seen.push(n.unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    // One of the heavy user's may start before it, and one more may start
    // while the 10 are read again.
    let heavy_after = heavy_waiting();
    assert!(
        heavy_before - heavy_after <= 2,
        "{} of the heavy user's CVMs got a slot before the light user's one (positions seen: {seen:?})",
        heavy_before - heavy_after
    );
    // N only goes down as the queue moves.
    assert!(seen.windows(2).all(|w| w[1] <= w[0]), "{seen:?}");
    let mut all: Vec<(String, String)> = heavy
        .iter()
        .map(|id| (users[0].clone(), id.clone()))
        .collect();
    all.push((users[1].clone(), light_id));
    q.all_running(&all);

    // 2. 20 deployments at once, 5 for each of 4 users: all accepted.
    let commits: Vec<_> = (0..20)
        .map(|i| {
            let key = users[i % 4].clone();
            let (api, compose) = (q.cloud.api.clone(), q.compose.clone());
            std::thread::spawn(move || {
                let name = format!("burst-{i:02}");
                let p: Value = {
                    let (code, text) = curl(
                        &[
                            "-X",
                            "POST",
                            "-H",
                            &format!("X-API-Key: {key}"),
                            "-H",
                            "Content-Type: application/json",
                            "-d",
                            &json!({"name": name, "compose_file": {"docker_compose_file": compose, "allowed_envs": []}}).to_string(),
                        ],
                        &format!("{api}/cvms/provision"),
                    );
                    assert_eq!(code, 200, "provision {name}: {text}");
                    serde_json::from_str(&text).unwrap()
                };
                let (code, text) = curl(
                    &[
                        "-X",
                        "POST",
                        "-H",
                        &format!("X-API-Key: {key}"),
                        "-H",
                        "Content-Type: application/json",
                        "-d",
                        &json!({"app_id": p["app_id"], "compose_hash": p["compose_hash"], "name": name}).to_string(),
                    ],
                    &format!("{api}/cvms"),
                );
                assert_eq!(code, 200, "commit {name} (no 429 on a busy node): {text}");
                let c: Value = serde_json::from_str(&text).unwrap();
                (key, c["vm_uuid"].as_str().unwrap().to_owned())
            })
        })
        .collect();
    let burst: Vec<(String, String)> = commits.into_iter().map(|t| t.join().unwrap()).collect();
    // While they wait, GET says so, with a number; the numbers are distinct.
    let mut positions = BTreeSet::new();
    let mut queued = Vec::new();
    for (key, id) in &burst {
        let v = q.get(key, id);
        if let Some(n) = ahead(&v["boot_progress"]) {
            assert_eq!(v["status"], "starting", "{v}");
            positions.insert(n);
            queued.push((key.clone(), id.clone(), n));
        }
    }
    assert!(
        queued.len() >= 10,
        "20 deployments on 2 slots: most wait ({} do)",
        queued.len()
    );
    // Stop one far back in the queue: it never boots. Restart another:
    // it keeps its place and boots once.
    queued.sort_by_key(|(_, _, n)| std::cmp::Reverse(*n));
    let (stop_key, stop_id, _) = queued[0].clone();
    let (restart_key, restart_id, _) = queued[1].clone();
    let (code, v) = q
        .cloud
        .call(&stop_key, "POST", &format!("/cvms/{stop_id}/stop"), None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "stopped", "{v}");
    let (code, v) = q.cloud.call(
        &restart_key,
        "POST",
        &format!("/cvms/{restart_id}/restart"),
        None,
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "starting", "{v}");
    let others: Vec<(String, String)> = burst
        .iter()
        .filter(|(_, id)| *id != stop_id)
        .cloned()
        .collect();
    q.all_running(&others);
    let stopped = q.get(&stop_key, &stop_id);
    assert_eq!(stopped["status"], "stopped", "{stopped}");
    let serial = q.cloud.serial_log(&stop_key, &stop_id, "no-secret");
    assert!(
        !serial.contains("BOOT"),
        "the stopped CVM booted:\n{serial}"
    );
    let serial = q.cloud.serial_log(&restart_key, &restart_id, "no-secret");
    assert_eq!(
        serial.matches("BOOT OK").count(),
        1,
        "the restarted CVM booted once:\n{serial}"
    );
    // 30 containers: the 11 of the first part, the burst's 19, none of the
    // stopped one.
    let running = engine.docker_out(&["ps", "-q", "--filter", "status=running"]);
    assert_eq!(running.lines().count(), 30, "{running}");
    q.cloud.stop();
}
