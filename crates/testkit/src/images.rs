//! Test images built for real: random (incompressible) layers written as an
//! OCI image layout in Rust, then pushed with `skopeo copy`
//! (`--preserve-digests`, so the digests computed here are the pushed ones).
//!
//! A layer is a gzip (stored, level 0) tarball holding one file of `size`
//! random bytes, so its blob is about `size + 2 KiB`.
//!
//! Runnable images are made of the host's own files (nothing is
//! downloaded): Debian's static busybox ([`ImageSpec::busybox`]), and any
//! host files or programs with their shared libraries
//! ([`ImageSpec::host_files`], [`host_programs`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::util;

/// OCI media types.
pub mod media {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// OCI gzip layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// Docker schema 2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker gzip layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
}

/// Where to push: a registry `host:port` and optional credentials.
#[derive(Clone, Debug)]
pub struct PushTarget {
    host_port: String,
    creds: Option<(String, String)>,
}

impl PushTarget {
    /// Anonymous pushes to `host_port` (HTTP or HTTPS; TLS is not verified).
    pub fn new(host_port: &str) -> Self {
        PushTarget {
            host_port: host_port.to_string(),
            creds: None,
        }
    }

    /// Pushes with these credentials (given to skopeo in a temp auth.json).
    pub fn with_creds(mut self, user: &str, password: &str) -> Self {
        self.creds = Some((user.to_string(), password.to_string()));
        self
    }

    /// The registry `host:port`.
    pub fn host_port(&self) -> &str {
        &self.host_port
    }
}

/// Manifest flavour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OCI manifest / index.
    Oci,
    /// Docker schema 2 manifest / manifest list.
    Docker,
}

#[derive(Clone, Debug)]
struct LayerSpec {
    size: u64,
    seed: Option<u64>,
    /// A runnable root filesystem (`/bin/busybox` and its applets) instead
    /// of random data.
    busybox: bool,
    /// Host files instead of random data: `(host path, path in the image)`
    /// (see [`ImageSpec::host_files`]).
    files: Vec<(PathBuf, String)>,
}

/// What image to build.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    layers: Vec<LayerSpec>,
    os: String,
    arch: String,
    variant: Option<String>,
    format: Format,
}

impl Default for ImageSpec {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageSpec {
    /// linux/amd64, OCI, no layers yet.
    pub fn new() -> Self {
        ImageSpec {
            layers: Vec::new(),
            os: "linux".into(),
            arch: "amd64".into(),
            variant: None,
            format: Format::Oci,
        }
    }

    /// An image with layers of these sizes (bytes of random data each).
    pub fn with_layers(sizes: &[u64]) -> Self {
        sizes.iter().fold(Self::new(), |s, &n| s.layer(n))
    }

    /// Adds a layer of `size` fresh random bytes.
    pub fn layer(mut self, size: u64) -> Self {
        self.layers.push(LayerSpec {
            size,
            seed: None,
            busybox: false,
            files: Vec::new(),
        });
        self
    }

    /// Adds a deterministic layer: the same `(size, seed)` gives the same
    /// blob in every image (to test shared/deduplicated layers).
    pub fn seeded_layer(mut self, size: u64, seed: u64) -> Self {
        self.layers.push(LayerSpec {
            size,
            seed: Some(seed),
            busybox: false,
            files: Vec::new(),
        });
        self
    }

    /// Adds a layer with a runnable root filesystem: Debian's static
    /// `/bin/busybox` (package busybox-static) and its applets (`sh`,
    /// `echo`, `sleep`, `cat`, `env`, `printenv`, `ls`). Containers of such
    /// an image really run.
    pub fn busybox(mut self) -> Self {
        self.layers.push(LayerSpec {
            size: 0,
            seed: None,
            busybox: true,
            files: Vec::new(),
        });
        self
    }

    /// Adds a layer of files taken from this host, each `(host path, path
    /// in the image)`. A host file is followed if it is a symlink (its
    /// content goes in, executable bits kept); a host folder goes in whole,
    /// the symlinks inside it kept as links. Parent folders are created.
    /// With [`ImageSpec::busybox`] and [`host_programs`], this makes images
    /// that run host programs (e.g. `node` and an npm package) without
    /// downloading anything.
    pub fn host_files<P: AsRef<Path>>(mut self, files: &[(P, &str)]) -> Self {
        self.layers.push(LayerSpec {
            size: 0,
            seed: None,
            busybox: false,
            files: files
                .iter()
                .map(|(host, image)| {
                    (
                        host.as_ref().to_path_buf(),
                        image.trim_start_matches('/').to_string(),
                    )
                })
                .collect(),
        });
        self
    }

    /// Sets the platform (e.g. `("linux", "arm64")`).
    pub fn platform(mut self, os: &str, arch: &str) -> Self {
        self.os = os.to_string();
        self.arch = arch.to_string();
        self
    }

    /// Sets the platform variant (e.g. `v8`).
    pub fn variant(mut self, variant: &str) -> Self {
        self.variant = Some(variant.to_string());
        self
    }

    /// Uses Docker schema 2 media types instead of OCI.
    pub fn docker_format(mut self) -> Self {
        self.format = Format::Docker;
        self
    }

    /// The same layer sizes for linux/amd64 and linux/arm64 (fresh data each).
    pub fn amd64_arm64(sizes: &[u64]) -> Vec<ImageSpec> {
        vec![
            Self::with_layers(sizes).platform("linux", "amd64"),
            Self::with_layers(sizes)
                .platform("linux", "arm64")
                .variant("v8"),
        ]
    }
}

/// A content-addressed blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Media type.
    pub media_type: String,
}

/// An image written to an OCI layout.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    /// Manifest digest.
    pub digest: String,
    /// Manifest bytes.
    pub manifest: Vec<u8>,
    /// Manifest media type.
    pub media_type: String,
    /// Config blob.
    pub config: BlobInfo,
    /// Layer blobs (compressed), in order.
    pub layers: Vec<BlobInfo>,
    /// Uncompressed layer digests (`rootfs.diff_ids`).
    pub diff_ids: Vec<String>,
    /// Platform OS.
    pub os: String,
    /// Platform architecture.
    pub arch: String,
}

/// An image index written to an OCI layout.
#[derive(Clone, Debug)]
pub struct BuiltIndex {
    /// Index digest.
    pub digest: String,
    /// Index bytes.
    pub index: Vec<u8>,
    /// Index media type.
    pub media_type: String,
    /// The per-platform images.
    pub images: Vec<BuiltImage>,
}

/// A pushed image.
#[derive(Clone, Debug)]
pub struct PushedImage {
    /// `host:port/repo:tag`.
    pub reference: String,
    /// Repository name.
    pub repository: String,
    /// Tag.
    pub tag: String,
    /// Manifest digest as pushed (equals `image.digest`).
    pub digest: String,
    /// What was built.
    pub image: BuiltImage,
}

/// A pushed multi-arch image.
#[derive(Clone, Debug)]
pub struct PushedIndex {
    /// `host:port/repo:tag`.
    pub reference: String,
    /// Repository name.
    pub repository: String,
    /// Tag.
    pub tag: String,
    /// Index digest as pushed (equals `index.digest`).
    pub digest: String,
    /// What was built (per-platform manifests in `index.images`).
    pub index: BuiltIndex,
}

impl PushedIndex {
    /// The manifest digest for `arch` (e.g. `arm64`).
    pub fn digest_for(&self, arch: &str) -> Option<&str> {
        self.index
            .images
            .iter()
            .find(|i| i.arch == arch)
            .map(|i| i.digest.as_str())
    }
}

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn random_data(size: u64, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix(seed ^ size.rotate_left(32));
    let mut v = Vec::with_capacity(size as usize + 8);
    while (v.len() as u64) < size {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(size as usize);
    v
}

/// Where blobs go: an OCI layout (`blobs/sha256/<hex>`), or skopeo's
/// `dir:` transport (`<hex>`), used for Docker media types because skopeo's
/// `oci:` source only accepts OCI manifests.
fn write_blob(layout: &Path, format: Format, data: &[u8]) -> String {
    let digest = util::sha256_digest(data);
    let dir = match format {
        Format::Oci => layout.join("blobs/sha256"),
        Format::Docker => layout.to_path_buf(),
    };
    std::fs::create_dir_all(&dir).expect("blobs dir");
    std::fs::write(dir.join(&digest[7..]), data).expect("write blob");
    digest
}

fn busybox_tar() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox is missing: install Debian's busybox-static (scripts/deps.sh does)");
    let mut tar = tar::Builder::new(Vec::with_capacity(busybox.len() + 16384));
    for dir in ["bin/", "tmp/"] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(if dir == "tmp/" { 0o1777 } else { 0o755 });
        h.set_size(0);
        h.set_mtime(0);
        tar.append_data(&mut h, dir, std::io::empty())
            .expect("tar dir");
    }
    let mut h = tar::Header::new_ustar();
    h.set_size(busybox.len() as u64);
    h.set_mode(0o755);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, "bin/busybox", busybox.as_slice())
        .expect("tar busybox");
    for applet in [
        "sh", "echo", "sleep", "cat", "env", "printenv", "ls", "true",
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_mtime(0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .expect("tar link");
    }
    tar.into_inner().expect("tar finish")
}

/// The host `programs` (absolute paths) and every shared library `ldd`
/// lists for them, the dynamic loader included, each at its own path: the
/// files [`ImageSpec::host_files`] needs to run these programs in an image.
/// Panics when `ldd` fails (e.g. a program is missing).
pub fn host_programs(programs: &[&str]) -> Vec<(PathBuf, String)> {
    let mut files = std::collections::BTreeSet::new();
    for program in programs {
        files.insert(program.to_string());
        let out = Command::new("ldd")
            .arg(program)
            .stdin(Stdio::null())
            .output()
            .expect("run ldd");
        assert!(
            out.status.success(),
            "testkit: ldd {program} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or
            // `/lib64/ld-linux-x86-64.so.2 (0x…)`; vdso has no file.
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(path) = path.filter(|p| p.starts_with('/')) {
                files.insert(path.to_string());
            }
        }
    }
    files.into_iter().map(|p| (PathBuf::from(&p), p)).collect()
}

fn tar_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Appends the host `path` at `name` (see [`ImageSpec::host_files`]);
/// `follow`: a symlink at `path` is followed (only at the top).
fn append_host_path(tar: &mut tar::Builder<Vec<u8>>, path: &Path, name: &str, follow: bool) {
    use std::os::unix::fs::PermissionsExt;
    let meta = if follow {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    }
    .unwrap_or_else(|e| panic!("testkit: {}: {e}", path.display()));
    let mode = meta.permissions().mode() & 0o7777;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path).expect("read link");
        let mut h = tar_header(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, name, target).expect("tar link");
    } else if meta.is_dir() {
        let mut h = tar_header(tar::EntryType::Directory, mode, 0);
        tar.append_data(&mut h, format!("{name}/"), std::io::empty())
            .expect("tar dir");
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .expect("read dir")
            .map(|e| e.expect("dir entry").file_name())
            .collect();
        entries.sort();
        for entry in entries {
            let child = format!("{name}/{}", entry.to_string_lossy());
            append_host_path(tar, &path.join(&entry), &child, false);
        }
    } else {
        let data = std::fs::read(path).expect("read host file");
        let mut h = tar_header(tar::EntryType::Regular, mode, data.len() as u64);
        tar.append_data(&mut h, name, data.as_slice())
            .expect("tar file");
    }
}

fn host_files_tar(files: &[(PathBuf, String)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut parents = std::collections::BTreeSet::new();
    for (_, name) in files {
        let mut p = Path::new(name).parent();
        while let Some(dir) = p.filter(|d| !d.as_os_str().is_empty()) {
            parents.insert(dir.to_string_lossy().into_owned());
            p = dir.parent();
        }
    }
    for dir in &parents {
        let mut h = tar_header(tar::EntryType::Directory, 0o755, 0);
        tar.append_data(&mut h, format!("{dir}/"), std::io::empty())
            .expect("tar dir");
    }
    for (host, name) in files {
        append_host_path(&mut tar, host, name, true);
    }
    tar.into_inner().expect("tar finish")
}

fn make_layer(index: usize, spec: &LayerSpec) -> (Vec<u8>, String) {
    if spec.busybox || !spec.files.is_empty() {
        let tar = if spec.busybox {
            busybox_tar()
        } else {
            host_files_tar(&spec.files)
        };
        let diff_id = util::sha256_digest(&tar);
        let mut gz = flate2::GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).expect("gzip");
        return (gz.finish().expect("gzip finish"), diff_id);
    }
    let seed = spec
        .seed
        .unwrap_or_else(|| u64::from_le_bytes(util::random_bytes::<8>()));
    let data = random_data(spec.size, seed);
    let mut tar = tar::Builder::new(Vec::with_capacity(data.len() + 4096));
    let mut header = tar::Header::new_ustar();
    header.set_size(spec.size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    let name = match spec.seed {
        Some(s) => format!("data/seeded-{s}-{}.bin", spec.size),
        None => format!("data/layer-{index}.bin"),
    };
    tar.append_data(&mut header, name, data.as_slice())
        .expect("tar append");
    let tar = tar.into_inner().expect("tar finish");
    let diff_id = util::sha256_digest(&tar);
    let mut gz = flate2::GzBuilder::new().mtime(0).write(
        Vec::with_capacity(tar.len() + 1024),
        flate2::Compression::none(),
    );
    gz.write_all(&tar).expect("gzip");
    (gz.finish().expect("gzip finish"), diff_id)
}

fn build_image_blobs(layout: &Path, spec: &ImageSpec) -> BuiltImage {
    let (manifest_mt, config_mt, layer_mt) = match spec.format {
        Format::Oci => (
            media::OCI_MANIFEST,
            media::OCI_CONFIG,
            media::OCI_LAYER_GZIP,
        ),
        Format::Docker => (
            media::DOCKER_MANIFEST,
            media::DOCKER_CONFIG,
            media::DOCKER_LAYER_GZIP,
        ),
    };
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, l) in spec.layers.iter().enumerate() {
        let (blob, diff_id) = make_layer(i, l);
        let digest = write_blob(layout, spec.format, &blob);
        layers.push(BlobInfo {
            digest,
            size: blob.len() as u64,
            media_type: layer_mt.to_string(),
        });
        diff_ids.push(diff_id);
    }
    let mut config = json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": spec.arch,
        "os": spec.os,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": {"org.berth.testkit": "1"}
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": spec.layers.iter().map(|_| json!({"created": "2024-01-01T00:00:00Z", "created_by": "berth testkit"})).collect::<Vec<_>>(),
    });
    if let Some(v) = &spec.variant {
        config["variant"] = json!(v);
    }
    let config_bytes = serde_json::to_vec(&config).expect("config json");
    let config_info = BlobInfo {
        digest: write_blob(layout, spec.format, &config_bytes),
        size: config_bytes.len() as u64,
        media_type: config_mt.to_string(),
    };
    let desc =
        |b: &BlobInfo| json!({"mediaType": b.media_type, "digest": b.digest, "size": b.size});
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": manifest_mt,
        "config": desc(&config_info),
        "layers": layers.iter().map(desc).collect::<Vec<_>>(),
    });
    let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest json");
    let digest = util::sha256_digest(&manifest_bytes);
    if spec.format == Format::Oci {
        write_blob(layout, spec.format, &manifest_bytes);
    }
    BuiltImage {
        digest,
        manifest: manifest_bytes,
        media_type: manifest_mt.to_string(),
        config: config_info,
        layers,
        diff_ids,
        os: spec.os.clone(),
        arch: spec.arch.clone(),
    }
}

fn write_layout_index(layout: &Path, tag: &str, media_type: &str, digest: &str, size: usize) {
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    let index = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": [{
            "mediaType": media_type,
            "digest": digest,
            "size": size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).expect("index.json");
}

fn write_dir_version(layout: &Path) {
    std::fs::write(layout.join("version"), "Directory Transport Version: 1.1\n")
        .expect("dir version");
}

/// Writes `spec` at `layout`: an OCI image layout tagged `tag`, or, for
/// [`ImageSpec::docker_format`], a skopeo `dir:` directory (skopeo's `oci:`
/// source refuses Docker media types). See [`skopeo_source`].
pub fn build_layout(layout: &Path, tag: &str, spec: &ImageSpec) -> BuiltImage {
    let img = build_image_blobs(layout, spec);
    match spec.format {
        Format::Oci => write_layout_index(
            layout,
            tag,
            &img.media_type,
            &img.digest,
            img.manifest.len(),
        ),
        Format::Docker => {
            std::fs::write(layout.join("manifest.json"), &img.manifest).expect("manifest.json");
            write_dir_version(layout);
        }
    }
    img
}

/// The skopeo source reference for what [`build_layout`] or
/// [`build_index_layout`] wrote: `oci:DIR:TAG` or `dir:DIR`.
pub fn skopeo_source(layout: &Path, tag: &str, format: Format) -> String {
    match format {
        Format::Oci => format!("oci:{}:{tag}", layout.display()),
        Format::Docker => format!("dir:{}", layout.display()),
    }
}

/// Writes an OCI layout holding an index of `specs` (one per platform),
/// tagged `tag`. If the first spec uses [`ImageSpec::docker_format`], the
/// index is a Docker manifest list in a skopeo `dir:` directory instead (all
/// specs should then use the same format).
pub fn build_index_layout(layout: &Path, tag: &str, specs: &[ImageSpec]) -> BuiltIndex {
    assert!(!specs.is_empty(), "an index needs at least one image");
    let images: Vec<BuiltImage> = specs.iter().map(|s| build_image_blobs(layout, s)).collect();
    let list_mt = match specs[0].format {
        Format::Oci => media::OCI_INDEX,
        Format::Docker => media::DOCKER_LIST,
    };
    let manifests: Vec<Value> = images
        .iter()
        .zip(specs)
        .map(|(img, spec)| {
            let mut platform = json!({"architecture": img.arch, "os": img.os});
            if let Some(v) = &spec.variant {
                platform["variant"] = json!(v);
            }
            json!({"mediaType": img.media_type, "digest": img.digest, "size": img.manifest.len(), "platform": platform})
        })
        .collect();
    let index = json!({"schemaVersion": 2, "mediaType": list_mt, "manifests": manifests});
    let index_bytes = serde_json::to_vec(&index).expect("index json");
    let digest = util::sha256_digest(&index_bytes);
    match specs[0].format {
        Format::Oci => {
            write_blob(layout, Format::Oci, &index_bytes);
            write_layout_index(layout, tag, list_mt, &digest, index_bytes.len());
        }
        Format::Docker => {
            for img in &images {
                std::fs::write(
                    layout.join(format!("{}.manifest.json", &img.digest[7..])),
                    &img.manifest,
                )
                .expect("instance manifest");
            }
            std::fs::write(layout.join("manifest.json"), &index_bytes).expect("manifest.json");
            write_dir_version(layout);
        }
    }
    BuiltIndex {
        digest,
        index: index_bytes,
        media_type: list_mt.to_string(),
        images,
    }
}

/// Writes a container-tools `auth.json` in `dir` holding `target`'s
/// credentials (for skopeo's `--*-authfile`, so that no password goes on a
/// command line). `None` when the target has no credentials.
pub fn auth_file(dir: &Path, target: &PushTarget) -> Option<PathBuf> {
    let (u, p) = target.creds.as_ref()?;
    let path = dir.join("auth.json");
    let auth = json!({"auths": {target.host_port.clone(): {"auth": util::b64(format!("{u}:{p}").as_bytes())}}});
    std::fs::write(&path, auth.to_string()).expect("auth.json");
    Some(path)
}

/// Copies `source` (a skopeo reference, e.g. from [`skopeo_source`]) to
/// `target/repo:tag` with `skopeo copy --preserve-digests` (`--all` for
/// indexes) and returns the pushed digest. Panics with skopeo's output on
/// failure.
pub fn push_from(source: &str, target: &PushTarget, repo: &str, tag: &str, all: bool) -> String {
    let skopeo = util::tool("BERTH_SKOPEO", "skopeo");
    let work = crate::workdir("skopeo");
    let digest_file = work.path().join("digest");
    let mut cmd = Command::new(skopeo);
    cmd.arg("--insecure-policy")
        .arg("copy")
        .arg("--quiet")
        .arg("--dest-tls-verify=false")
        .arg("--preserve-digests")
        .arg("--digestfile")
        .arg(&digest_file);
    match auth_file(work.path(), target) {
        Some(p) => cmd.arg("--dest-authfile").arg(p),
        None => cmd.arg("--dest-no-creds"),
    };
    if all {
        cmd.arg("--all");
    }
    cmd.arg(source)
        .arg(format!("docker://{}/{repo}:{tag}", target.host_port))
        .env("TMPDIR", work.path())
        .stdin(Stdio::null());
    let out = cmd.output().expect("run skopeo");
    if !out.status.success() {
        panic!(
            "testkit: skopeo copy to {}/{repo}:{tag} failed ({}):\n{}{}",
            target.host_port,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::read_to_string(&digest_file)
        .expect("skopeo digest file")
        .trim()
        .to_string()
}

/// Builds `spec` and pushes it as `repo:tag`.
pub fn push_image(target: &PushTarget, repo: &str, tag: &str, spec: &ImageSpec) -> PushedImage {
    let work = crate::workdir("image");
    let layout = work.path().join("layout");
    let image = build_layout(&layout, tag, spec);
    let digest = push_from(
        &skopeo_source(&layout, tag, spec.format),
        target,
        repo,
        tag,
        false,
    );
    assert_eq!(digest, image.digest, "skopeo changed the manifest digest");
    PushedImage {
        reference: format!("{}/{repo}:{tag}", target.host_port),
        repository: repo.to_string(),
        tag: tag.to_string(),
        digest,
        image,
    }
}

/// Builds one image per spec and pushes them as a multi-arch index
/// `repo:tag` (`skopeo copy --all`).
pub fn push_multi_arch(
    target: &PushTarget,
    repo: &str,
    tag: &str,
    specs: &[ImageSpec],
) -> PushedIndex {
    let work = crate::workdir("index");
    let layout = work.path().join("layout");
    let index = build_index_layout(&layout, tag, specs);
    let digest = push_from(
        &skopeo_source(&layout, tag, specs[0].format),
        target,
        repo,
        tag,
        true,
    );
    assert_eq!(digest, index.digest, "skopeo changed the index digest");
    PushedIndex {
        reference: format!("{}/{repo}:{tag}", target.host_port),
        repository: repo.to_string(),
        tag: tag.to_string(),
        digest,
        index,
    }
}
