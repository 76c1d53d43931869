mod common;

use common::{OCI_ACCEPT, curl};
use testkit::Registry;
use testkit::images::{self, ImageSpec, media};

#[test]
fn multi_arch_index() {
    let reg = Registry::with_htpasswd(&[("u", "p")]);
    let pushed = images::push_multi_arch(
        &reg.push_target(),
        "multi/app",
        "v2",
        &ImageSpec::amd64_arm64(&[1000, 2000]),
    );
    assert_eq!(pushed.index.images.len(), 2);
    let m = curl(&[
        "-u",
        "u:p",
        "-H",
        OCI_ACCEPT,
        &format!("{}/v2/multi/app/manifests/v2", reg.base_url()),
    ]);
    assert_eq!(m.status, 200);
    assert_eq!(m.header("content-type"), Some(media::OCI_INDEX));
    assert_eq!(
        m.header("docker-content-digest"),
        Some(pushed.digest.as_str())
    );
    let idx = m.json();
    assert_eq!(idx["manifests"][1]["platform"]["architecture"], "arm64");
    assert_eq!(idx["manifests"][1]["platform"]["variant"], "v8");
    for arch in ["amd64", "arm64"] {
        let d = pushed.digest_for(arch).unwrap();
        let r = curl(&[
            "-u",
            "u:p",
            "-H",
            OCI_ACCEPT,
            &format!("{}/v2/multi/app/manifests/{d}", reg.base_url()),
        ]);
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["layers"].as_array().unwrap().len(), 2);
    }
    assert_ne!(pushed.digest_for("amd64"), pushed.digest_for("arm64"));
}

#[test]
fn docker_format_and_shared_layers() {
    let reg = Registry::start();
    let a = images::push_image(
        &reg.push_target(),
        "d/a",
        "1",
        &ImageSpec::new()
            .seeded_layer(4096, 7)
            .layer(100)
            .docker_format(),
    );
    let b = images::push_image(
        &reg.push_target(),
        "d/b",
        "1",
        &ImageSpec::new().seeded_layer(4096, 7).layer(100),
    );
    assert_eq!(a.image.media_type, media::DOCKER_MANIFEST);
    assert_eq!(a.image.layers[0].digest, b.image.layers[0].digest);
    assert_ne!(a.image.layers[1].digest, b.image.layers[1].digest);
    let m = curl(&[
        "-H",
        OCI_ACCEPT,
        &format!("{}/v2/d/a/manifests/1", reg.base_url()),
    ]);
    assert_eq!(m.header("content-type"), Some(media::DOCKER_MANIFEST));
    assert_eq!(m.header("docker-content-digest"), Some(a.digest.as_str()));

    let list = images::push_multi_arch(
        &reg.push_target(),
        "d/list",
        "1",
        &[
            ImageSpec::with_layers(&[10]).docker_format(),
            ImageSpec::with_layers(&[10])
                .platform("linux", "arm64")
                .docker_format(),
        ],
    );
    let m = curl(&[
        "-H",
        OCI_ACCEPT,
        &format!("{}/v2/d/list/manifests/1", reg.base_url()),
    ]);
    assert_eq!(m.header("content-type"), Some(media::DOCKER_LIST));
    assert_eq!(
        m.header("docker-content-digest"),
        Some(list.digest.as_str())
    );
}

#[test]
fn layout_only() {
    let dir = tempfile::tempdir().unwrap();
    let img = images::build_layout(dir.path(), "t", &ImageSpec::with_layers(&[1 << 20]));
    assert!(dir.path().join("index.json").is_file());
    assert!(
        dir.path()
            .join("blobs/sha256")
            .join(&img.digest[7..])
            .is_file()
    );
    assert!(img.layers[0].size > 1 << 20);
    assert_eq!(img.diff_ids.len(), 1);
}
