mod common;

use common::{OCI_ACCEPT, curl, sha256};
use testkit::images::{self, ImageSpec, PushTarget};
use testkit::{FaultProxy, Listener, Registry, RequestKind, Target};

#[test]
fn push_through_proxy_rewrites_locations_and_records() {
    let reg = Registry::with_htpasswd(&[("u", "p")]);
    let proxy = FaultProxy::start(&reg);
    let target = PushTarget::new(&proxy.host_port()).with_creds("u", "p");
    let pushed = images::push_image(&target, "lib/app", "1", &ImageSpec::with_layers(&[2000]));
    let reqs = proxy.requests();
    assert!(
        reqs.iter()
            .any(|r| r.kind == RequestKind::Upload && r.method == "PUT" && r.status == 201)
    );
    assert!(
        reqs.iter()
            .all(|r| r.listener == Listener::Proxy && r.status != 502)
    );
    // The upstream registry has it.
    let m = curl(&[
        "-u",
        "u:p",
        "-I",
        "-H",
        OCI_ACCEPT,
        &format!("{}/v2/lib/app/manifests/1", reg.base_url()),
    ]);
    assert_eq!(
        m.header("docker-content-digest"),
        Some(pushed.digest.as_str())
    );

    proxy.clear_requests();
    let murl = format!("{}/v2/lib/app/manifests/1", proxy.base_url());
    assert_eq!(
        curl(&["-u", "u:p", "-I", "-H", OCI_ACCEPT, &murl]).status,
        200
    );
    assert_eq!(curl(&["-u", "u:p", "-H", OCI_ACCEPT, &murl]).status, 200);
    assert_eq!(curl(&["-H", OCI_ACCEPT, &murl]).status, 401);
    assert_eq!(proxy.manifest_heads(), 1);
    assert_eq!(proxy.manifest_gets(), 2);
    let r = proxy.requests();
    assert!(r[0].authorization && !r[2].authorization);
    assert_eq!(r[2].status, 401);
}

#[test]
fn drop_then_resume_with_range() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(&reg);
    let pushed = images::push_image(
        &reg.push_target(),
        "big",
        "1",
        &ImageSpec::with_layers(&[200_000]),
    );
    let layer = pushed.image.layers[0].clone();
    let url = format!("{}/v2/big/blobs/{}", proxy.base_url(), layer.digest);

    proxy.drop_blob_after(50_000, 1);
    let cut = curl(&[&url]);
    assert_eq!(cut.exit, 18, "curl should report a partial transfer");
    assert_eq!(cut.status, 200);
    assert_eq!(cut.body.len(), 50_000);

    let rest = curl(&["-H", "Range: bytes=50000-", &url]);
    assert_eq!(rest.exit, 0);
    assert_eq!(rest.status, 206);
    let mut all = cut.body.clone();
    all.extend_from_slice(&rest.body);
    assert_eq!(sha256(&all), layer.digest);

    let blob_reqs: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.kind == RequestKind::Blob)
        .collect();
    assert_eq!(blob_reqs.len(), 2);
    assert_eq!(blob_reqs[0].fault, Some("drop"));
    assert_eq!(blob_reqs[1].range.as_deref(), Some("bytes=50000-"));
    assert_eq!(proxy.blob_bytes_served(), layer.size);
    assert_eq!(proxy.faults().drop_after.unwrap().remaining, 0);
}

#[test]
fn corrupt_one_byte() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(&reg);
    let pushed = images::push_image(
        &reg.push_target(),
        "c",
        "1",
        &ImageSpec::with_layers(&[10_000]),
    );
    let layer = &pushed.image.layers[0];
    let url = format!("{}/v2/c/blobs/{}", proxy.base_url(), layer.digest);
    proxy.corrupt_blob(1234, 1);
    let bad = curl(&[&url]);
    let good = curl(&[&url]);
    assert_eq!(sha256(&good.body), layer.digest);
    assert_ne!(sha256(&bad.body), layer.digest);
    assert_eq!(bad.body.len(), good.body.len());
    let diffs: Vec<usize> = (0..bad.body.len())
        .filter(|&i| bad.body[i] != good.body[i])
        .collect();
    assert_eq!(diffs, vec![1234]);
}

#[test]
fn too_many_requests_and_unavailable() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(&reg);
    let pushed = images::push_image(
        &reg.push_target(),
        "r",
        "1",
        &ImageSpec::with_layers(&[100]),
    );
    let murl = format!("{}/v2/r/manifests/1", proxy.base_url());
    proxy.too_many_requests(Target::Manifests, 7, 2);
    for _ in 0..2 {
        let r = curl(&["-H", OCI_ACCEPT, &murl]);
        assert_eq!(r.status, 429);
        assert_eq!(r.header("retry-after"), Some("7"));
        assert_eq!(r.header("ratelimit-limit"), Some("100;w=21600"));
        assert_eq!(r.header("ratelimit-remaining"), Some("0;w=21600"));
        assert_eq!(r.json()["errors"][0]["code"], "TOOMANYREQUESTS");
    }
    assert_eq!(curl(&["-H", OCI_ACCEPT, &murl]).status, 200);

    let burl = format!(
        "{}/v2/r/blobs/{}",
        proxy.base_url(),
        pushed.image.layers[0].digest
    );
    proxy.unavailable(Target::Blobs, 1);
    // Only blobs are affected.
    assert_eq!(curl(&["-H", OCI_ACCEPT, &murl]).status, 200);
    let r = curl(&[&burl]);
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["errors"][0]["code"], "UNAVAILABLE");
    assert_eq!(curl(&[&burl]).status, 200);
    let faults: Vec<_> = proxy.requests().iter().filter_map(|r| r.fault).collect();
    assert_eq!(faults, vec!["429", "429", "503"]);
}

#[test]
fn rate_limit_headers_count_gets_not_heads() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(&reg);
    images::push_image(
        &reg.push_target(),
        "rl",
        "1",
        &ImageSpec::with_layers(&[100]),
    );
    let murl = format!("{}/v2/rl/manifests/1", proxy.base_url());
    proxy.rate_limit(100, 2, true);
    let r = curl(&["-H", OCI_ACCEPT, &murl]);
    assert_eq!(r.header("ratelimit-limit"), Some("100;w=21600"));
    assert_eq!(r.header("ratelimit-remaining"), Some("1;w=21600"));
    let h = curl(&["-I", "-H", OCI_ACCEPT, &murl]);
    assert_eq!(h.status, 200);
    assert_eq!(h.header("ratelimit-remaining"), Some("1;w=21600"));
    assert_eq!(
        curl(&["-H", OCI_ACCEPT, &murl]).header("ratelimit-remaining"),
        Some("0;w=21600")
    );
    let over = curl(&["-H", OCI_ACCEPT, &murl]);
    assert_eq!(over.status, 429);
    assert_eq!(over.json()["errors"][0]["code"], "TOOMANYREQUESTS");
    // HEAD still works once the limit is reached.
    assert_eq!(curl(&["-I", "-H", OCI_ACCEPT, &murl]).status, 200);
    assert_eq!(proxy.manifest_gets(), 3);
    assert_eq!(proxy.manifest_heads(), 2);
}

#[test]
fn redirect_blobs_to_another_host() {
    let reg = Registry::with_htpasswd(&[("u", "p")]);
    let proxy = FaultProxy::start(&reg);
    assert_ne!(proxy.redirect_host(), "127.0.0.1");
    let pushed = images::push_image(
        &reg.push_target(),
        "red/app",
        "1",
        &ImageSpec::with_layers(&[30_000]),
    );
    let layer = &pushed.image.layers[0];
    let url = format!("{}/v2/red/app/blobs/{}", proxy.base_url(), layer.digest);

    proxy.redirect_blobs(usize::MAX, true);
    let r = curl(&["-u", "u:p", &url]);
    assert_eq!(r.status, 307);
    let location = r.header("location").unwrap().to_string();
    assert!(
        location.starts_with(&proxy.redirect_base_url()),
        "{location}"
    );

    // curl drops credentials when following to another host.
    let followed = curl(&["-L", "-u", "u:p", &url]);
    assert_eq!(followed.status, 200);
    assert_eq!(sha256(&followed.body), layer.digest);
    // Storage rejects requests that carry Authorization (S3 style)...
    let leaked = curl(&["-H", "Authorization: Basic dTpw", &location]);
    assert_eq!(leaked.status, 400);
    assert!(leaked.text().contains("InvalidArgument"));
    // ...and serves ranges of the presigned URL.
    let part = curl(&["-H", "Range: bytes=1000-", &location]);
    assert_eq!(part.status, 206);
    assert_eq!(part.body, followed.body[1000..]);

    let storage = proxy.storage_requests();
    assert_eq!(storage.len(), 3);
    assert_eq!(
        storage.iter().map(|r| r.authorization).collect::<Vec<_>>(),
        vec![false, true, false]
    );
    assert_eq!(storage[1].fault, Some("reject-auth"));
    assert!(storage.iter().all(|r| r.kind == RequestKind::Blob));

    // Manifests are never redirected; clearing stops redirects.
    proxy.clear_faults();
    assert_eq!(curl(&["-u", "u:p", &url]).status, 200);
}

#[tokio::test(flavor = "current_thread")]
async fn fixtures_work_inside_a_current_thread_runtime() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let reg = Registry::start();
    let proxy = FaultProxy::start(&reg);
    let mut s = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert!(
        out.starts_with(b"HTTP/1.0 200") || out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(proxy.count(RequestKind::Base, "GET"), 1);
}
