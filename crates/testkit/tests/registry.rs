mod common;

use common::{OCI_ACCEPT, curl, sha256};
use testkit::images::{self, ImageSpec};
use testkit::{Registry, free_port, repo_root};

#[test]
fn helpers() {
    let a = free_port();
    let b = free_port();
    assert_ne!(a, b);
    assert!(repo_root().join("Cargo.toml").is_file());
    assert!(repo_root().join("crates/testkit").is_dir());
}

#[test]
fn plain_registry_push_and_pull() {
    let reg = Registry::start();
    assert!(reg.base_url().starts_with("http://127.0.0.1:"));
    let r = curl(&[&format!("{}/v2/", reg.base_url())]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );

    let pushed = images::push_image(
        &reg.push_target(),
        "team/app",
        "v1",
        &ImageSpec::with_layers(&[1000, 20_000]),
    );
    assert_eq!(pushed.image.layers.len(), 2);
    assert_eq!(pushed.reference, format!("{}/team/app:v1", reg.host_port()));

    let m = curl(&[
        "-H",
        OCI_ACCEPT,
        &format!("{}/v2/team/app/manifests/v1", reg.base_url()),
    ]);
    assert_eq!(m.status, 200);
    assert_eq!(
        m.header("docker-content-digest"),
        Some(pushed.digest.as_str())
    );
    assert_eq!(m.body, pushed.image.manifest);

    let layer = &pushed.image.layers[1];
    let b = curl(&[&format!(
        "{}/v2/team/app/blobs/{}",
        reg.base_url(),
        layer.digest
    )]);
    assert_eq!(b.status, 200);
    assert_eq!(b.body.len() as u64, layer.size);
    assert_eq!(sha256(&b.body), layer.digest);
    // Random data does not compress: the blob is about the layer size.
    assert!(layer.size > 20_000 && layer.size < 24_000, "{}", layer.size);

    // distribution serves Range requests with 206.
    let r = curl(&[
        "-H",
        "Range: bytes=100-",
        &format!("{}/v2/team/app/blobs/{}", reg.base_url(), layer.digest),
    ]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, b.body[100..]);

    assert!(reg.log_contents().contains("listening on"));
    assert!(reg.log_path().starts_with(reg.workdir()));
}

#[test]
fn htpasswd_auth_and_rotation() {
    let mut reg = Registry::with_htpasswd(&[("alice", "s3cret")]);
    let url = format!("{}/v2/", reg.base_url());
    let anon = curl(&[&url]);
    assert_eq!(anon.status, 401);
    assert!(
        anon.header("www-authenticate")
            .unwrap()
            .starts_with("Basic realm=")
    );
    assert_eq!(curl(&["-u", "alice:wrong", &url]).status, 401);
    assert_eq!(curl(&["-u", "alice:s3cret", &url]).status, 200);

    let pushed = images::push_image(
        &reg.push_target(),
        "app",
        "latest",
        &ImageSpec::with_layers(&[5000]),
    );
    let murl = format!("{}/v2/app/manifests/latest", reg.base_url());
    assert_eq!(curl(&["-H", OCI_ACCEPT, &murl]).status, 401);
    let m = curl(&["-u", "alice:s3cret", "-H", OCI_ACCEPT, &murl]);
    assert_eq!(m.status, 200);
    assert_eq!(
        m.header("docker-content-digest"),
        Some(pushed.digest.as_str())
    );

    // Password rotation (as with ECR's 12-hour tokens): distribution re-reads
    // the file when it changes.
    reg.set_users(&[("AWS", "token-2")]);
    assert_eq!(curl(&["-u", "alice:s3cret", &url]).status, 401);
    assert_eq!(curl(&["-u", "AWS:token-2", &url]).status, 200);
}

#[test]
fn tls_registry_with_test_ca() {
    let reg = Registry::builder().tls().htpasswd(&[("u", "p")]).start();
    assert!(reg.base_url().starts_with("https://127.0.0.1:"));
    let ca = reg
        .ca_cert_path()
        .expect("CA path")
        .to_str()
        .unwrap()
        .to_string();
    assert!(reg.ca_cert_pem().unwrap().contains("BEGIN CERTIFICATE"));
    let url = format!("{}/v2/", reg.base_url());
    // Untrusted without the CA...
    let r = curl(&[&url]);
    assert_eq!(r.status, 0);
    assert_eq!(r.exit, 60, "curl should fail certificate verification");
    // ...trusted with it, for the IP and for localhost.
    assert_eq!(curl(&["--cacert", &ca, "-u", "u:p", &url]).status, 200);
    let port = reg.addr().port();
    assert_eq!(
        curl(&[
            "--cacert",
            &ca,
            "-u",
            "u:p",
            &format!("https://localhost:{port}/v2/")
        ])
        .status,
        200
    );
    // skopeo pushes over TLS too (without verification).
    let pushed = images::push_image(
        &reg.push_target(),
        "secure/app",
        "1",
        &ImageSpec::with_layers(&[100]),
    );
    let m = curl(&[
        "--cacert",
        &ca,
        "-u",
        "u:p",
        "-I",
        "-H",
        OCI_ACCEPT,
        &format!("{}/v2/secure/app/manifests/1", reg.base_url()),
    ]);
    assert_eq!(m.status, 200);
    assert_eq!(
        m.header("docker-content-digest"),
        Some(pushed.digest.as_str())
    );
}

#[test]
fn registry_is_killed_on_drop() {
    let reg = Registry::start();
    let pid = reg.pid();
    let addr = reg.addr();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(reg);
    assert!(std::net::TcpStream::connect(addr).is_err());
}
