//! Lists that page (issue 21): `GET /cvms/paginated` in Phala's shape
//! (`items`, `total`, `page`, `page_size`, `pages`), its bounds and
//! filters, `GET /apps` in slim rows, the status batch by id, and the
//! streamed `GET /cvms`, which must hold exactly what the list held before
//! it streamed. The API in process on a real SQLite file and a real KMS;
//! CVMs are imported through `cloud::Db` (real manifests, stopped).

mod support;

use axum::http::StatusCode;
use cloud::api::logs::syslog_endpoint;
use cloud::api::views::{CvmCurrent, CvmLegacy};
use cloud::appcompose::{AppComposeInput, build};
use cloud::db::{App, Limits, NewCvm};
use contract::CvmStatus;
use serde_json::{Value, json};
use support::*;

const LEGACY: &str = "2025-10-28";
const CURRENT: &str = "2026-01-21";

/// `n` stopped CVMs of user `who` (0 admin, 1 alice, 2 mallory), named
/// `{prefix}-00000`, `{prefix}-00001`, …, each with its own app.
async fn seed(f: &Fixture, who: usize, prefix: &str, n: usize) {
    let user = f.state.db.user_by_key(&f.keys[who]).await.unwrap().unwrap();
    let rows = (0..n)
        .map(|i| {
            let name = format!("{prefix}-{i:05}");
            let compose = format!("services:\n  web:\n    image: nginx:1.{i}\n");
            let built = build(
                &AppComposeInput {
                    name: &name,
                    docker_compose_file: &compose,
                    allowed_envs: &[],
                    public_logs: true,
                    public_sysinfo: false,
                    owner: Some(&user.app_salt),
                    owner_key: None,
                },
                contract::Isolation::Shared,
            )
            .unwrap();
            let app = App {
                app_id: built.app_id,
                user_id: user.id,
                name: name.clone(),
                app_compose: built.bytes,
                compose_hash: built.compose_hash,
                env_pubkey: "ab".repeat(32),
                env_pubkey_signature: "cd".repeat(65),
            };
            let cvm = NewCvm {
                name,
                user_id: user.id,
                app_id: app.app_id.clone(),
                encrypted_env: Some(vec![1; 80]),
                env_keys: vec!["SECRET".into()],
                vcpu: 1,
                memory: 2048,
                disk_size: 20,
            };
            (app, cvm)
        })
        .collect();
    assert_eq!(f.state.db.import_stopped_cvms(rows).await.unwrap(), n);
}

/// A GET with the key of user `who` and the API version `version`.
async fn get(f: &Fixture, who: usize, version: &str, path: &str) -> (StatusCode, Value) {
    let req = axum::http::Request::builder()
        .uri(path)
        .header("x-api-key", &f.keys[who])
        .header("x-phala-version", version)
        .body(axum::body::Body::empty())
        .unwrap();
    use tower::ServiceExt as _;
    let resp = cloud::router(f.state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{path}: not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, body)
}

fn names(items: &Value) -> Vec<String> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_page_has_phala_s_shape_and_counts_every_page() {
    let f = fixture(Limits::default()).await;
    seed(&f, 1, "shop", 120).await;
    let (s, p) = get(&f, 1, CURRENT, "/api/v1/cvms/paginated?page=2&page_size=50").await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(
        (&p["total"], &p["page"], &p["page_size"], &p["pages"]),
        (&json!(120), &json!(2), &json!(50), &json!(3))
    );
    let expected: Vec<String> = (50..100).map(|i| format!("shop-{i:05}")).collect();
    assert_eq!(names(&p["items"]), expected);
    // The 2026-01-21 shape: what `GET /cvms/{id}` answers.
    let first = &p["items"][0];
    let (s, one) = get(
        &f,
        1,
        CURRENT,
        &format!("/api/v1/cvms/{}", first["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{one}");
    assert_eq!(first, &one);
    // The last page is short; one past it is empty and still counts.
    let (_, last) = get(&f, 1, CURRENT, "/api/v1/cvms/paginated?page=3&page_size=50").await;
    assert_eq!(last["items"].as_array().unwrap().len(), 20);
    let (s, past) = get(&f, 1, CURRENT, "/api/v1/cvms/paginated?page=9&page_size=50").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (past["items"].as_array().unwrap().len(), &past["total"]),
        (0, &json!(120))
    );
    // Without a query: page 1 of 50.
    let (_, default) = get(&f, 1, CURRENT, "/api/v1/cvms/paginated").await;
    assert_eq!(
        (&default["page"], &default["page_size"]),
        (&json!(1), &json!(50))
    );
    assert_eq!(names(&default["items"])[0], "shop-00000");
}

#[tokio::test]
async fn page_bounds_are_refused_with_a_sentence() {
    let f = fixture(Limits::default()).await;
    for (query, says) in [
        ("page_size=0", "page_size must be between 1 and 100"),
        ("page_size=101", "page_size must be between 1 and 100"),
        ("page_size=many", "page_size must be a whole number"),
        ("page=0", "page counts from 1"),
        ("page=-1", "page must be a whole number"),
        ("status=sleeping", "status `sleeping` is none of"),
    ] {
        for path in ["/api/v1/cvms/paginated", "/api/v1/apps"] {
            let (s, e) = get(&f, 1, CURRENT, &format!("{path}?{query}")).await;
            assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{path}?{query}: {e}");
            assert!(e.to_string().contains(says), "{path}?{query}: {e}");
        }
    }
    let (s, p) = get(&f, 1, CURRENT, "/api/v1/cvms/paginated?page_size=100").await;
    assert_eq!((s, &p["pages"]), (StatusCode::OK, &json!(1)), "{p}");
}

#[tokio::test]
async fn a_user_sees_only_their_own_cvms() {
    let f = fixture(Limits::default()).await;
    seed(&f, 1, "alice-app", 7).await;
    seed(&f, 2, "mallory-app", 3).await;
    let (_, m) = get(&f, 2, LEGACY, "/api/v1/cvms/paginated").await;
    assert_eq!(m["total"], 3);
    assert!(
        names(&m["items"])
            .iter()
            .all(|n| n.starts_with("mallory-app")),
        "{m}"
    );
    let (_, search) = get(&f, 2, CURRENT, "/api/v1/cvms/paginated?search=alice").await;
    assert_eq!(search["total"], 0, "{search}");
    let (_, apps) = get(&f, 2, CURRENT, "/api/v1/apps?search=alice").await;
    assert_eq!(apps["total"], 0, "{apps}");
    let (_, all) = get(&f, 2, LEGACY, "/api/v1/cvms").await;
    assert_eq!(all.as_array().unwrap().len(), 3);
    // Alice's ids in Mallory's status batch name nothing.
    let (_, a) = get(&f, 1, CURRENT, "/api/v1/cvms/paginated").await;
    let ids: Vec<Value> = a["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["vm_uuid"].clone())
        .collect();
    let (s, _, batch) = call(
        &f,
        Some(&f.keys[2]),
        "POST",
        "/api/v1/status/batch",
        Some(json!({"vm_uuids": ids})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(batch, json!({}));
}

#[tokio::test]
async fn deleted_cvms_are_left_out_of_every_list() {
    let f = fixture(Limits::default()).await;
    seed(&f, 1, "keep", 6).await;
    let alice = f.state.db.user_by_key(&f.keys[1]).await.unwrap().unwrap();
    let all = f.state.db.cvms_of(alice.id).await.unwrap();
    for gone in &all[1..3] {
        f.state
            .db
            .set_status(&gone.id, CvmStatus::Deleted, None, None)
            .await
            .unwrap();
    }
    let left = ["keep-00000", "keep-00003", "keep-00004", "keep-00005"];
    let (_, p) = get(&f, 1, CURRENT, "/api/v1/cvms/paginated?page_size=2&page=2").await;
    assert_eq!((&p["total"], &p["pages"]), (&json!(4), &json!(2)));
    assert_eq!(names(&p["items"]), left[2..]);
    let (_, apps) = get(&f, 1, CURRENT, "/api/v1/apps").await;
    assert_eq!(apps["total"], 4);
    assert_eq!(names(&apps["dstack_apps"]), left);
    let (_, list) = get(&f, 1, LEGACY, "/api/v1/cvms").await;
    assert_eq!(names(&list), left);
    let ids: Vec<&str> = all.iter().map(|c| c.id.as_str()).collect();
    let (_, _, batch) = call(
        &f,
        Some(&f.keys[1]),
        "POST",
        "/api/v1/status/batch",
        Some(json!({"vm_uuids": ids})),
    )
    .await;
    assert_eq!(batch.as_object().unwrap().len(), 4, "{batch}");
    // Asking for deleted ones by status changes nothing.
    let (_, d) = get(&f, 1, CURRENT, "/api/v1/cvms/paginated?status=deleted").await;
    assert_eq!(d["total"], 0);
}

#[tokio::test]
async fn the_streamed_list_holds_what_the_list_held_before() {
    let f = fixture(Limits::default()).await;
    // More than two chunks of the stream (500 rows each), and another
    // user's rows between them in the table.
    seed(&f, 1, "many", 700).await;
    seed(&f, 2, "other", 5).await;
    seed(&f, 1, "more", 400).await;
    let alice = f.state.db.user_by_key(&f.keys[1]).await.unwrap().unwrap();
    // The list before it streamed: every row at once, the same view.
    let before: Vec<Value> = f
        .state
        .db
        .cvms_with_apps_of(alice.id)
        .await
        .unwrap()
        .iter()
        .map(|(cvm, app)| {
            let mut v = CvmLegacy::of(cvm, app, syslog_endpoint(&f.state, cvm));
            v.isolation = f.state.limits.isolation;
            serde_json::to_value(v).unwrap()
        })
        .collect();
    assert_eq!(before.len(), 1100);
    let (s, now) = get(&f, 1, CURRENT, "/api/v1/cvms").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(now, Value::Array(before.clone()));
    // The legacy page's items are those rows, plus the SDK's keys.
    let (_, p) = get(
        &f,
        1,
        LEGACY,
        "/api/v1/cvms/paginated?page=11&page_size=100",
    )
    .await;
    for (item, row) in p["items"].as_array().unwrap().iter().zip(&before[1000..]) {
        for (k, v) in row.as_object().unwrap() {
            assert_eq!(&item[k], v, "{k}");
        }
        assert_eq!(item["hosted"]["id"], row["vm_uuid"]);
        assert_eq!(item["managed_user"]["username"], "alice");
        assert_eq!(item["public_urls"], json!([]));
    }
    // The current page's items are `GET /cvms/{id}`'s shape.
    let (_, c) = get(&f, 1, CURRENT, "/api/v1/cvms/paginated?page=1&page_size=3").await;
    let (cvm, app) = &f.state.db.cvms_with_apps_of(alice.id).await.unwrap()[0];
    let mut first = CvmCurrent::of(cvm, app, syslog_endpoint(&f.state, cvm));
    first.isolation = f.state.limits.isolation;
    assert_eq!(c["items"][0], serde_json::to_value(first).unwrap());
    // An empty list is an empty array.
    let (_, none) = get(&f, 0, LEGACY, "/api/v1/cvms").await;
    assert_eq!(none, json!([]));
}

#[tokio::test]
async fn apps_come_in_slim_pages_with_the_cli_s_filters() {
    let f = fixture(Limits::default()).await;
    seed(&f, 1, "app", 25).await;
    let alice = f.state.db.user_by_key(&f.keys[1]).await.unwrap().unwrap();
    for c in &f.state.db.cvms_of(alice.id).await.unwrap()[..4] {
        f.state
            .db
            .set_status(&c.id, CvmStatus::Running, None, None)
            .await
            .unwrap();
    }
    let (s, p) = get(&f, 1, CURRENT, "/api/v1/apps?page=3&page_size=10").await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(
        (&p["total"], &p["page"], &p["page_size"], &p["total_pages"]),
        (&json!(25), &json!(3), &json!(10), &json!(3))
    );
    let item = &p["dstack_apps"][0];
    assert_eq!(item["name"], "app-00020");
    let cvm = &item["current_cvm"];
    // What the CLI reads and its schema requires; no manifest field.
    for key in [
        "id", "name", "status", "vm_uuid", "resource", "gateway", "app_id",
    ] {
        assert!(!cvm[key].is_null(), "{key}: {cvm}");
    }
    assert!(cvm.get("public_logs").is_none(), "{cvm}");
    assert_eq!(cvm["kms_info"]["encrypted_env_pubkey"], "ab".repeat(32));
    // The CLI's repeated `status` and its `search`.
    let (_, running) = get(
        &f,
        1,
        CURRENT,
        "/api/v1/apps?status=running&status=starting",
    )
    .await;
    assert_eq!(running["total"], 4, "{running}");
    let (_, stopped) = get(
        &f,
        1,
        CURRENT,
        "/api/v1/apps?status=stopped&search=APP-0002",
    )
    .await;
    assert_eq!(
        names(&stopped["dstack_apps"]),
        [
            "app-00020",
            "app-00021",
            "app-00022",
            "app-00023",
            "app-00024"
        ]
    );
    let uuid = cvm["vm_uuid"].as_str().unwrap().replace('-', "");
    let (_, by_id) = get(
        &f,
        1,
        CURRENT,
        &format!("/api/v1/apps?search={}", &uuid[..12]),
    )
    .await;
    assert_eq!(names(&by_id["dstack_apps"]), ["app-00020"]);
    // A literal `%` or `_` matches itself, not everything.
    let (_, pct) = get(&f, 1, CURRENT, "/api/v1/apps?search=%25").await;
    assert_eq!(pct["total"], 0);
    // Another node's CVMs: none here.
    let (_, elsewhere) = get(&f, 1, CURRENT, "/api/v1/cvms/paginated?node_id=2").await;
    assert_eq!(elsewhere["total"], 0);
    let (_, here) = get(&f, 1, CURRENT, "/api/v1/apps?node=berth-local-node").await;
    assert_eq!(here["total"], 25);
}

#[tokio::test]
async fn the_status_batch_finds_cvms_by_id_in_any_form() {
    let f = fixture(Limits::default()).await;
    seed(&f, 1, "batch", 3).await;
    let alice = f.state.db.user_by_key(&f.keys[1]).await.unwrap().unwrap();
    let cvms = f.state.db.cvms_of(alice.id).await.unwrap();
    let asked = json!({"vm_uuids": [
        cvms[0].id,
        cvms[1].id.replace('-', "").to_uppercase(),
        "not-a-uuid",
    ]});
    let (s, _, batch) = call(
        &f,
        Some(&f.keys[1]),
        "POST",
        "/api/v1/status/batch",
        Some(asked),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{batch}");
    let keys: Vec<&String> = batch.as_object().unwrap().keys().collect();
    let mut want = vec![&cvms[0].id, &cvms[1].id];
    want.sort();
    assert_eq!(keys, want);
    assert_eq!(batch[&cvms[1].id]["status"], "stopped");
}

#[tokio::test]
async fn the_official_sdk_reads_both_page_shapes() {
    let script = testkit::interop_path("list-with-phala-sdk.mjs");
    testkit::interop_path("node_modules/@phala/cloud");
    let f = fixture(Limits::default()).await;
    seed(&f, 1, "sdk-app", 7).await;
    let (addr, _stop) = serve(&f, cloud::serve::ServeOptions::default()).await;
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .args(["2", "5"])
        .env("PHALA_CLOUD_API_PREFIX", format!("http://{addr}/api/v1"))
        .env("PHALA_CLOUD_API_KEY", &f.keys[1])
        .output()
        .await
        .expect("node runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the SDK refused the page: {stderr}");
    let pages: Value = serde_json::from_slice(&out.stdout).unwrap();
    for version in [LEGACY, CURRENT] {
        let p = &pages[version];
        assert_eq!(
            (&p["total"], &p["page"], &p["page_size"], &p["pages"]),
            (&json!(7), &json!(2), &json!(5), &json!(2)),
            "{version}: {p}"
        );
        assert_eq!(
            names(&p["items"]),
            ["sdk-app-00005", "sdk-app-00006"],
            "{version}"
        );
    }
    // What each schema kept: the legacy one its `hosted` VM, the current one
    // the UUID as `id`.
    assert_eq!(pages[LEGACY]["items"][0]["hosted"]["name"], "sdk-app-00005");
    assert_eq!(pages[CURRENT]["items"][0]["resource"]["vcpu"], 1);
}
