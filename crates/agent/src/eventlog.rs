//! The CVM's event log: simulated boot measurements in RTMR0–2 and the
//! dstack runtime events (RTMR3) that dstack's boot emits, plus the app's
//! own `EmitEvent`s. Digests are dstack's v1 runtime-event digests, so the
//! SDKs' `replayRtmrs` gives the quote's RTMRs.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};

/// dstack's event type for runtime events (not a TCG type).
pub(crate) const RUNTIME_EVENT_TYPE: u32 = 0x0800_0001;
/// The event type of Berth's simulated firmware/OS measurements.
const SIMULATED_BOOT_EVENT_TYPE: u32 = 0x0000_000d;

/// At most this many `EmitEvent`s per CVM, and this many payload bytes in
/// all: a CVM that floods its agent fills only its own log.
const MAX_EMITTED_EVENTS: usize = 4096;
const MAX_EMITTED_BYTES: usize = 1 << 20;

/// One entry, in dstack's JSON shape (`imr` zero-based, hex digests).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Event {
    pub imr: u32,
    pub event_type: u32,
    #[serde(with = "hex_serde")]
    pub digest: Vec<u8>,
    pub event: String,
    #[serde(with = "hex_serde")]
    pub event_payload: Vec<u8>,
}

/// dstack's v1 runtime-event digest:
/// `sha384(event_type_le ":" name ":" payload)`.
pub(crate) fn runtime_digest(name: &str, payload: &[u8]) -> [u8; 48] {
    let mut h = Sha384::new();
    h.update(RUNTIME_EVENT_TYPE.to_le_bytes());
    h.update(b":");
    h.update(name.as_bytes());
    h.update(b":");
    h.update(payload);
    h.finalize().into()
}

/// `mr' = sha384(mr ‖ digest)`, the digest zero-padded to 48 bytes.
pub(crate) fn extend(mr: &[u8; 48], digest: &[u8]) -> [u8; 48] {
    let mut padded = [0u8; 48];
    let n = digest.len().min(48);
    padded[..n].copy_from_slice(&digest[..n]);
    let mut h = Sha384::new();
    h.update(mr);
    h.update(padded);
    h.finalize().into()
}

/// The replay of `events` into the four RTMRs.
pub(crate) fn replay(events: &[Event]) -> [[u8; 48]; 4] {
    let mut rtmrs = [[0u8; 48]; 4];
    for e in events {
        if let Some(mr) = rtmrs.get_mut(e.imr as usize) {
            *mr = extend(mr, &e.digest);
        }
    }
    rtmrs
}

/// Why an `EmitEvent` was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EmitError {
    #[error("the event name is empty")]
    EmptyName,
    #[error("the event name is longer than 256 bytes")]
    NameTooLong,
    #[error("the event name `{0}` is reserved for the boot")]
    Reserved(String),
    #[error("this CVM's event log is full ({MAX_EMITTED_EVENTS} events or 1 MiB of payloads)")]
    Full,
}

/// The runtime events dstack's boot emits; an app may not emit them again.
const RESERVED: &[&str] = &[
    "system-preparing",
    "app-id",
    "compose-hash",
    "instance-id",
    "boot-mr-done",
    "os-image-hash",
    "key-provider",
    "system-ready",
];

/// The whole log with its replayed RTMRs and its JSON, kept current.
pub(crate) struct EventLog {
    events: Vec<Event>,
    emitted_bytes: usize,
    emitted: usize,
    rtmrs: [[u8; 48]; 4],
    json: String,
}

/// What a boot measures: the inputs of [`EventLog::boot`].
pub(crate) struct BootMeasurements<'a> {
    pub app_id: &'a [u8],
    pub compose_hash: &'a [u8],
    pub instance_id: &'a [u8],
    pub os_image_hash: &'a [u8],
    pub key_provider: &'a [u8],
}

impl EventLog {
    /// The log of a freshly booted CVM.
    pub(crate) fn boot(m: &BootMeasurements<'_>) -> Self {
        let mut events = Vec::new();
        for imr in 0..3u32 {
            let name = format!("berth-simulated-rtmr{imr}");
            let mut h = Sha384::new();
            h.update(b"berth simulated boot measurement:");
            h.update(name.as_bytes());
            h.update(b":");
            h.update(m.os_image_hash);
            events.push(Event {
                imr,
                event_type: SIMULATED_BOOT_EVENT_TYPE,
                digest: h.finalize().to_vec(),
                event: name,
                event_payload: b"simulated: no TEE measured this".to_vec(),
            });
        }
        let mut runtime: Vec<(&str, &[u8])> = vec![
            ("system-preparing", &[]),
            ("app-id", m.app_id),
            ("compose-hash", m.compose_hash),
            ("instance-id", m.instance_id),
            ("boot-mr-done", &[]),
        ];
        if !m.os_image_hash.is_empty() {
            runtime.push(("os-image-hash", m.os_image_hash));
        }
        runtime.push(("key-provider", m.key_provider));
        runtime.push(("system-ready", &[]));
        for (name, payload) in runtime {
            events.push(runtime_event(name, payload));
        }
        let mut log = Self {
            events,
            emitted_bytes: 0,
            emitted: 0,
            rtmrs: [[0u8; 48]; 4],
            json: String::new(),
        };
        log.refresh();
        log
    }

    /// Appends an app's event to RTMR3.
    pub(crate) fn emit(&mut self, name: &str, payload: &[u8]) -> Result<(), EmitError> {
        if name.is_empty() {
            return Err(EmitError::EmptyName);
        }
        if name.len() > 256 {
            return Err(EmitError::NameTooLong);
        }
        if RESERVED.contains(&name) {
            return Err(EmitError::Reserved(name.to_string()));
        }
        if self.emitted >= MAX_EMITTED_EVENTS
            || self.emitted_bytes + payload.len() > MAX_EMITTED_BYTES
        {
            return Err(EmitError::Full);
        }
        self.emitted += 1;
        self.emitted_bytes += payload.len();
        let event = runtime_event(name, payload);
        self.rtmrs[3] = extend(&self.rtmrs[3], &event.digest);
        self.events.push(event);
        self.json = serde_json::to_string(&self.events).unwrap_or_default();
        Ok(())
    }

    fn refresh(&mut self) {
        self.rtmrs = replay(&self.events);
        self.json = serde_json::to_string(&self.events).unwrap_or_default();
    }

    /// RTMR0–3 as replayed from the log.
    pub(crate) fn rtmrs(&self) -> [[u8; 48]; 4] {
        self.rtmrs
    }

    /// The log as dstack's JSON array.
    pub(crate) fn json(&self) -> &str {
        &self.json
    }
}

fn runtime_event(name: &str, payload: &[u8]) -> Event {
    Event {
        imr: 3,
        event_type: RUNTIME_EVENT_TYPE,
        digest: runtime_digest(name, payload).to_vec(),
        event: name.to_string(),
        event_payload: payload.to_vec(),
    }
}

/// Bytes as lowercase hex in JSON, as dstack's event log writes them.
mod hex_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map_err(|_| serde::de::Error::custom("not hex"))
    }
}
