//! The hand-off overlapped with the pull: the engine receives an image's
//! layers while later layers are still downloading, and never a byte that
//! has not passed its digest check.
//!
//! How, and why this way (measured on the engine the tests run, Debian's
//! dockerd 20.10 with overlay2):
//!
//! - `POST /images/load` writes the whole archive to a temporary folder
//!   before it registers its first layer, so one archive streamed into it
//!   while the pull runs would overlap nothing: the engine's work would
//!   still all start after the last byte.
//! - But the engine reads no file for a layer whose chain it already holds.
//!   So as soon as the config and the first `k` layers of an image are
//!   verified in the store, the hand-off loads a **prefix image**: a config
//!   of its own naming only those `k` diff IDs, in an archive carrying only
//!   the layers the previous prefix did not. The engine unpacks them and
//!   checks each against its diff ID, as for any load, while the pull
//!   fetches the rest. The last load is the image's own verified config
//!   under the name the compose file uses; its image ID is the config's
//!   digest, which every service then runs. Each prefix image is removed as
//!   soon as the next load holds its layers, the last one after the image
//!   itself is in; a prefix config carries a per-boot random label, so two
//!   boots sharing an engine never share (or remove) each other's.
//! - If the engine refuses a partial load (an engine with another image
//!   store), the image is loaded whole once its blobs are all verified, as
//!   before.
//!
//! Not chosen: letting the engine pull from a registry the boot agent
//! serves on loopback. It also overlaps, but it is a listener every local
//! user can reach (it needs per-boot credentials, a scope of this boot's
//! blobs only, and stopping), and the engine keeps a
//! `127.0.0.1:port/…@sha256:…` name for every image, which cannot be
//! removed from an image that has no other name without removing the image.
//! Loads need no listener and leave nothing but the images themselves.
//!
//! The hand-off learns what the pull did from its [`PullEvent`]s
//! ([`PullWatch::observe`]): which manifest an image resolved to, and when a
//! blob was committed. What is verified is what the store holds under
//! `blobs/` (a blob appears there only after its size and digest are
//! checked), so that is what it looks at.

use crate::error::BootError;
use crate::runtime::{DockerRuntime, Handoff, LoadArchive, Member};
use crate::serial::SerialLog;
use registry::manifest::ImageManifest;
use registry::{Category, Digest, OciStore, PullEvent};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// The label a prefix image's config carries, with this boot's random value.
pub const PREFIX_LABEL: &str = "org.berth.handoff-prefix";

/// A config larger than this is not read into memory to build prefix
/// configs: its image is loaded whole after the pull.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

fn runtime_err(message: impl Into<String>) -> BootError {
    BootError::new(Category::Runtime, message)
}

/// What the pull has done, as far as the hand-off cares.
#[derive(Clone, Debug, Default)]
struct PullState {
    /// Normalised reference → the digest of its platform's image manifest.
    resolved: HashMap<String, Digest>,
    /// `Some(ok)` once the pull is over.
    finished: Option<bool>,
}

/// The pull's side of the hand-off: fed with the pull's events.
#[derive(Clone)]
pub struct PullWatch {
    tx: Arc<watch::Sender<PullState>>,
}

impl PullWatch {
    /// Notes what `event` tells the hand-off. Cheap: called from the pull.
    pub fn observe(&self, event: &PullEvent) {
        match event {
            PullEvent::Resolved { image, digest, .. } => self.tx.send_modify(|s| {
                s.resolved.insert(image.clone(), digest.clone());
            }),
            // A blob was verified and committed: look at the store again.
            PullEvent::BlobDone { .. } | PullEvent::Done { .. } => self.tx.send_modify(|_| {}),
            _ => {}
        }
    }

    fn finish(&self, ok: bool) {
        self.tx.send_modify(|s| s.finished = Some(ok));
    }
}

/// An image to hand to the engine.
#[derive(Clone, Debug)]
pub struct Wanted {
    /// The normalised reference, as the pull reports it.
    pub reference: String,
    /// The name the engine gives it (a tag as written in the compose file),
    /// if any.
    pub name: Option<String>,
}

/// What the hand-off did for one image.
#[derive(Clone, Debug)]
pub struct Handed {
    /// The normalised reference.
    pub reference: String,
    /// The digest of the image manifest handed over.
    pub manifest: Digest,
    /// The image ID in the engine (the config digest).
    pub image_id: String,
    /// Whether it was loaded, tagged or already there.
    pub how: Handoff,
}

/// The hand-off, running next to the pull.
pub struct HandoffTask {
    watch: PullWatch,
    task: tokio::task::JoinHandle<Result<Vec<Handed>, BootError>>,
}

/// Starts handing `wanted` to the engine as the pull into `store` verifies
/// their blobs. Feed the pull's events to [`HandoffTask::watch`]; then call
/// [`HandoffTask::finish`] or [`HandoffTask::abandon`]. `pending` is a file
/// of the CVM's state naming this boot's prefix images until they are
/// removed, so that the next boot removes those a killed boot left behind.
pub fn start(
    store: OciStore,
    wanted: Vec<Wanted>,
    serial: SerialLog,
    pending: PathBuf,
) -> HandoffTask {
    let (tx, rx) = watch::channel(PullState::default());
    let watch = PullWatch { tx: Arc::new(tx) };
    let nonce = {
        use rand_core::RngCore as _;
        let mut bytes = [0u8; 16];
        rand_core::OsRng.fill_bytes(&mut bytes);
        hex::encode(bytes)
    };
    let task = tokio::spawn(async move {
        let runtime = DockerRuntime::connect().await?;
        remove_left_behind(&runtime, &pending, &serial).await;
        // Written before the first prefix image can exist.
        let _ = std::fs::write(&pending, &nonce);
        let jobs = wanted.into_iter().enumerate().map(|(i, want)| {
            let image = Image {
                runtime: &runtime,
                store: &store,
                serial: &serial,
                // Two images of one boot never share a prefix image either.
                nonce: format!("{nonce}-{i}"),
                want,
            };
            image.hand(rx.clone())
        });
        let handed = futures_util::future::join_all(jobs).await;
        // Each image removed its prefix images, whatever happened to it;
        // if the engine refused a removal, the next boot tries again.
        let left = runtime
            .images_labelled(PREFIX_LABEL, &format!("{nonce}-"))
            .await;
        if left.is_ok_and(|ids| ids.is_empty()) {
            let _ = std::fs::remove_file(&pending);
        }
        handed.into_iter().collect()
    });
    HandoffTask { watch, task }
}

impl HandoffTask {
    /// The pull's events go here.
    pub fn watch(&self) -> PullWatch {
        self.watch.clone()
    }

    /// After a pull that succeeded: waits for the last loads.
    pub async fn finish(self) -> Result<Vec<Handed>, BootError> {
        self.watch.finish(true);
        self.task
            .await
            .map_err(|e| runtime_err(format!("the hand-off to the engine stopped: {e}")))?
    }

    /// After a pull that failed: stops, removing this boot's prefix images.
    pub async fn abandon(self) {
        self.watch.finish(false);
        let _ = self.task.await;
    }
}

/// Removes the prefix images of the boot named in `pending` (a boot that
/// was killed before it could), and the file.
async fn remove_left_behind(runtime: &DockerRuntime, pending: &Path, serial: &SerialLog) {
    let Ok(nonce) = std::fs::read_to_string(pending) else {
        return;
    };
    let nonce = nonce.trim();
    if nonce.is_empty() {
        return;
    }
    // A label value is `<nonce>-<image index>`.
    match runtime
        .images_labelled(PREFIX_LABEL, &format!("{nonce}-"))
        .await
    {
        Ok(ids) => {
            for id in ids {
                if let Err(e) = runtime.remove_image(&id).await {
                    serial.line(&format!("warning: hand-off: {e}"));
                }
            }
            let _ = std::fs::remove_file(pending);
        }
        Err(e) => serial.line(&format!("warning: hand-off: {e}")),
    }
}

/// One image's hand-off.
struct Image<'a> {
    runtime: &'a DockerRuntime,
    store: &'a OciStore,
    serial: &'a SerialLog,
    nonce: String,
    want: Wanted,
}

/// The pull ended (failed) before the hand-off could.
fn stopped() -> BootError {
    runtime_err("the pull stopped before the hand-off to the engine ended")
}

impl Image<'_> {
    async fn hand(self, mut rx: watch::Receiver<PullState>) -> Result<Handed, BootError> {
        let manifest_digest = loop {
            let state = rx.borrow_and_update().clone();
            if let Some(d) = state.resolved.get(&self.want.reference) {
                break d.clone();
            }
            if state.finished.is_some() || rx.changed().await.is_err() {
                return Err(stopped());
            }
        };
        let bytes = self
            .store
            .read_blob(&manifest_digest)
            .map_err(BootError::from)?
            .ok_or_else(|| {
                runtime_err(format!(
                    "the manifest {manifest_digest} is missing from the store"
                ))
            })?;
        let manifest: ImageManifest = serde_json::from_slice(&bytes).map_err(|_| {
            runtime_err(format!(
                "the manifest {manifest_digest} in the store is not an image manifest"
            ))
        })?;
        let image_id = format!("sha256:{}", manifest.config.digest.hex());
        let handed = |how| Handed {
            reference: self.want.reference.clone(),
            manifest: manifest_digest.clone(),
            image_id: image_id.clone(),
            how,
        };
        if let Some(how) = self
            .runtime
            .already_has(&image_id, self.want.name.as_deref())
            .await?
        {
            return Ok(handed(how));
        }
        let mut loads = Loads {
            image: &self,
            manifest: &manifest,
            prefix: None,
            held: 0,
            partial: true,
        };
        let result = loads.run(&mut rx, &image_id).await;
        loads.remove_prefix().await;
        result.map(|()| handed(Handoff::Loaded))
    }
}

/// The loads of one image, and the prefix image the engine holds for it.
struct Loads<'a> {
    image: &'a Image<'a>,
    manifest: &'a ImageManifest,
    /// The ID of this boot's prefix image in the engine, if any.
    prefix: Option<String>,
    /// Layers the prefix image holds.
    held: usize,
    /// Whether partial loads are still tried.
    partial: bool,
}

impl Loads<'_> {
    async fn run(
        &mut self,
        rx: &mut watch::Receiver<PullState>,
        image_id: &str,
    ) -> Result<(), BootError> {
        let store = self.image.store;
        let (config, layers) = (&self.manifest.config, &self.manifest.layers);
        loop {
            let finished = rx.borrow_and_update().finished;
            if finished == Some(false) {
                return Err(stopped());
            }
            let verified =
                |d: &registry::manifest::Descriptor| store.has_blob(&d.digest, Some(d.size));
            let ready = if verified(config) {
                layers.iter().take_while(|l| verified(l)).count()
            } else {
                0
            };
            if verified(config) && ready == layers.len() {
                return self.load_whole(image_id).await;
            }
            if self.partial && ready > self.held {
                self.load_prefix(ready).await;
                continue;
            }
            if finished == Some(true) {
                let missing = std::iter::once(config)
                    .chain(layers)
                    .find(|d| !verified(d))
                    .map(|d| d.digest.to_string())
                    .unwrap_or_default();
                return Err(runtime_err(format!(
                    "the pull ended without blob {missing} in the store"
                )));
            }
            if rx.changed().await.is_err() {
                return Err(stopped());
            }
        }
    }

    /// Loads a prefix image of the first `k` layers, carrying the layers
    /// the previous one did not hold. On failure, partial loads stop for
    /// this image and it is loaded whole at the end.
    async fn load_prefix(&mut self, k: usize) {
        let started = Instant::now();
        let layers = &self.manifest.layers;
        let result = match self.prefix_config(k) {
            Ok(config) => {
                let id = format!("sha256:{}", hex::encode(sha256(&config)));
                let archive = LoadArchive {
                    config_name: format!("{}.json", &id[7..]),
                    config: Member::Bytes(config),
                    layer_names: layers[..k]
                        .iter()
                        .map(|l| LoadArchive::layer_name(&l.digest))
                        .collect(),
                    carried: self.carried(self.held, k),
                    tags: Vec::new(),
                };
                match self.image.runtime.load(archive).await {
                    Ok(()) => Ok(id),
                    Err(e) => Err(e.message),
                }
            }
            Err(why) => Err(why),
        };
        let serial = self.image.serial;
        let reference = &self.image.want.reference;
        match result {
            Ok(id) => {
                let bytes: u64 = layers[self.held..k].iter().map(|l| l.size).sum();
                serial.line(&format!(
                    "hand-off: {reference}: {} of {} in the engine ({bytes} bytes more, {} ms)",
                    if k == 1 {
                        "layer 1".to_owned()
                    } else {
                        format!("layers 1-{k}")
                    },
                    layers.len(),
                    started.elapsed().as_millis()
                ));
                self.remove_prefix().await;
                self.prefix = Some(id);
                self.held = k;
            }
            Err(why) => {
                serial.line(&format!(
                    "hand-off: {reference}: no partial load ({why}); the image is loaded whole once pulled"
                ));
                self.partial = false;
            }
        }
    }

    /// The last load: the image's own verified config, under its name.
    async fn load_whole(&mut self, image_id: &str) -> Result<(), BootError> {
        let store = self.image.store;
        let config = &self.manifest.config;
        let layers = &self.manifest.layers;
        // Without a prefix image of this boot, nothing can be assumed to be
        // in the engine already: every layer is carried.
        let from = if self.prefix.is_some() { self.held } else { 0 };
        let archive = LoadArchive {
            config_name: format!("{}.json", config.digest.hex()),
            config: Member::File(store.blob_path(&config.digest)),
            layer_names: layers
                .iter()
                .map(|l| LoadArchive::layer_name(&l.digest))
                .collect(),
            carried: self.carried(from, layers.len()),
            tags: self.image.want.name.iter().cloned().collect(),
        };
        self.image.runtime.load(archive).await?;
        if !self.image.runtime.has_image(image_id).await {
            return Err(runtime_err(format!(
                "the engine did not keep image {image_id} after loading it"
            )));
        }
        Ok(())
    }

    /// The layer files of layers `from..to`, each once.
    fn carried(&self, from: usize, to: usize) -> Vec<(String, PathBuf)> {
        let mut out: Vec<(String, PathBuf)> = Vec::new();
        for l in &self.manifest.layers[from..to] {
            let name = LoadArchive::layer_name(&l.digest);
            if !out.iter().any(|(n, _)| *n == name) {
                out.push((name, self.image.store.blob_path(&l.digest)));
            }
        }
        out
    }

    /// A config naming the first `k` diff IDs of the image's config, its
    /// platform, and this boot's label.
    fn prefix_config(&self, k: usize) -> Result<Vec<u8>, String> {
        let config = &self.manifest.config;
        if config.size > MAX_CONFIG_BYTES {
            return Err(format!(
                "its config is larger than {MAX_CONFIG_BYTES} bytes"
            ));
        }
        let bytes = self
            .image
            .store
            .read_blob(&config.digest)
            .ok()
            .flatten()
            .ok_or("its config cannot be read from the store")?;
        let real: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| "its config is not JSON")?;
        let diff_ids = real
            .pointer("/rootfs/diff_ids")
            .and_then(|d| d.as_array())
            .filter(|d| d.len() == self.manifest.layers.len())
            .ok_or("its config's diff IDs do not match its layers")?;
        let mut prefix = serde_json::json!({
            "architecture": real.get("architecture"),
            "os": real.get("os"),
            "config": { "Labels": { PREFIX_LABEL: &self.image.nonce } },
            "rootfs": { "type": "layers", "diff_ids": &diff_ids[..k] },
        });
        if let Some(v) = real.get("variant") {
            prefix["variant"] = v.clone();
        }
        Ok(serde_json::to_vec(&prefix).expect("json"))
    }

    /// Removes this boot's prefix image, if any (its layers stay while the
    /// next load, or the image itself, holds them).
    async fn remove_prefix(&mut self) {
        if let Some(id) = self.prefix.take()
            && let Err(e) = self.image.runtime.remove_image(&id).await
        {
            self.image.serial.line(&format!("warning: hand-off: {e}"));
        }
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}
