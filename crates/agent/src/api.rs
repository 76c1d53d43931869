//! The routes: dstack's `DstackGuest` service (`/GetKey`, …) and the legacy
//! `Tappd` service (`/prpc/Tappd.*`), both answered from one
//! [`AgentState`]. Each handler takes decoded arguments and returns JSON;
//! the HTTP framing lives in `server`.

use std::sync::Mutex;

use k256::ecdsa::SigningKey;
use k256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use k256::ecdsa::signature::{Signer, Verifier};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::decode::{self, RequestParts};
use crate::eventlog::{BootMeasurements, EventLog};
use crate::identity::{AgentIdentity, AttestationKey};
use crate::kdf;
use crate::quote::{self, QuoteInputs};
use crate::tls::{self, CertIssuer, LeafRequest};

/// The version this agent's API follows (dstack's guest agent).
const API_VERSION: &str = "0.5.8";

/// What every answer is computed from.
pub(crate) struct AgentState {
    identity: AgentIdentity,
    app_key: SigningKey,
    app_id: Vec<u8>,
    instance_id: Vec<u8>,
    compose_hash: [u8; 32],
    os_image_hash: Vec<u8>,
    app_name: String,
    key_provider_info: String,
    mrtd: [u8; 48],
    attestation_key: AttestationKey,
    certs: CertIssuer,
    events: Mutex<EventLog>,
}

/// An answer: 200 with JSON, or an error.
pub(crate) enum Answer {
    Ok(Value),
    BadRequest(String),
    NotFound(String),
}

fn bad(e: impl std::fmt::Display) -> Answer {
    Answer::BadRequest(e.to_string())
}

fn parse_hex_field(name: &str, text: &str, len: Option<usize>) -> Result<Vec<u8>, String> {
    let bytes = hex::decode(text).map_err(|_| format!("{name} is not hex"))?;
    match len {
        Some(n) if bytes.len() != n => Err(format!("{name} is not {} hex digits", n * 2)),
        _ => Ok(bytes),
    }
}

impl AgentState {
    /// Checks the identity (its parts agree with each other and the KMS
    /// signature recovers to the KMS root key) and prepares the answers.
    pub(crate) fn new(
        identity: AgentIdentity,
        attestation_key: AttestationKey,
    ) -> Result<Self, String> {
        let app_id = parse_hex_field("app_id", &identity.app_id, Some(20))?;
        let compose_hash: [u8; 32] =
            parse_hex_field("compose_hash", &identity.compose_hash, Some(32))?
                .try_into()
                .map_err(|_| "compose_hash is not 64 hex digits".to_string())?;
        if Sha256::digest(identity.app_compose.as_bytes()).as_slice() != compose_hash {
            return Err("compose_hash is not the sha256 of app_compose".into());
        }
        let os_image_hash = parse_hex_field("os_image_hash", &identity.os_image_hash, None)?;
        let instance_id = match hex::decode(&identity.instance_id) {
            Ok(bytes) if !bytes.is_empty() => bytes,
            _ => Sha256::digest(identity.instance_id.as_bytes())[..20].to_vec(),
        };
        let app_key = SigningKey::from_slice(identity.app_key.as_ref())
            .map_err(|_| "the app key is not a secp256k1 secret key".to_string())?;
        let app_pub = app_key.verifying_key().to_sec1_bytes();
        let message = kdf::kms_issued_message(&app_id, &app_pub);
        let recovered = recover(&message, &identity.app_key_kms_signature)
            .ok_or("the KMS signature over the app key is malformed")?;
        if recovered.as_slice() != identity.kms_root_public_key {
            return Err(
                "the KMS signature over the app key does not recover to the KMS root public key"
                    .into(),
            );
        }
        let app_name = serde_json::from_str::<Value>(&identity.app_compose)
            .ok()
            .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_default();
        let key_provider_info = json!({
            "name": "kms",
            "id": hex::encode(identity.kms_root_public_key),
        })
        .to_string();
        let mut mrtd_h = sha2::Sha384::new();
        mrtd_h.update(b"berth simulated mrtd:");
        mrtd_h.update(&os_image_hash);
        let mrtd: [u8; 48] = mrtd_h.finalize().into();
        let events = EventLog::boot(&BootMeasurements {
            app_id: &app_id,
            compose_hash: &compose_hash,
            instance_id: &instance_id,
            os_image_hash: &os_image_hash,
            key_provider: key_provider_info.as_bytes(),
        });
        let certs = CertIssuer::new(&identity.app_key, attestation_key.seed().as_ref())
            .map_err(|e| e.to_string())?;
        Ok(Self {
            identity,
            app_key,
            app_id,
            instance_id,
            compose_hash,
            os_image_hash,
            app_name,
            key_provider_info,
            mrtd,
            attestation_key,
            certs,
            events: Mutex::new(events),
        })
    }

    /// Answers one request; `path` is the URL path without the query.
    pub(crate) fn handle(&self, path: &str, req: &RequestParts<'_>) -> Answer {
        let method = path
            .strip_prefix("/prpc/DstackGuest.")
            .or_else(|| path.strip_prefix('/').filter(|m| !m.contains('/')));
        if let Some(method) = method {
            return match method {
                "GetKey" => self.with(req, |a| {
                    self.get_key(a).map(|(key, chain)| {
                        json!({
                            "key": key, "signature_chain": chain,
                        })
                    })
                }),
                "GetTlsKey" => self.with(req, |a| self.get_tls_key(a)),
                "GetQuote" => self.with(req, |a| self.get_quote(a)),
                "Attest" => bad("Attest is not available in a simulated CVM; use GetQuote"),
                "Info" => Answer::Ok(self.info()),
                "Version" => Answer::Ok(version()),
                "Sign" => self.with(req, |a| self.sign(a)),
                "Verify" => self.with(req, |a| self.verify(a)),
                "EmitEvent" => self.with(req, |a| self.emit_event(a)),
                "GpuInfo" => Answer::Ok(json!({ "attestation": "" })),
                _ => not_found(path),
            };
        }
        match path.strip_prefix("/prpc/Tappd.") {
            Some("DeriveKey") => self.with(req, |a| self.tappd_derive_key(a)),
            Some("DeriveK256Key") => self.with(req, |a| {
                self.get_key(a)
                    .map(|(key, chain)| json!({ "k256_key": key, "k256_signature_chain": chain }))
            }),
            Some("TdxQuote") => self.with(req, |a| self.tdx_quote(a)),
            Some("RawQuote") => self.with(req, |a: RawQuoteArgs| {
                self.tdx_quote(TdxQuoteArgs {
                    report_data: a.report_data,
                    hash_algorithm: "raw".into(),
                    prefix: String::new(),
                })
            }),
            Some("Info") => Answer::Ok(self.info()),
            Some("Version") => Answer::Ok(version()),
            _ => not_found(path),
        }
    }

    fn with<A, F>(&self, req: &RequestParts<'_>, f: F) -> Answer
    where
        A: serde::de::DeserializeOwned + Default,
        F: FnOnce(A) -> Result<Value, String>,
    {
        match decode::decode::<A>(req) {
            Ok(args) => match f(args) {
                Ok(v) => Answer::Ok(v),
                Err(e) => Answer::BadRequest(e),
            },
            Err(e) => bad(e),
        }
    }

    /// `GetKey`: `HKDF(app_key, path)`, with the chain
    /// `[app key's sig over keccak256(purpose ":" hex(pubkey)), KMS sig]`.
    fn get_key(&self, a: GetKeyArgs) -> Result<(String, Vec<String>), String> {
        match a.algorithm.as_str() {
            "" | "secp256k1" | "k256" => {}
            "ed25519" => {
                return Err(
                    "algorithm ed25519 is not supported by this agent; use secp256k1".into(),
                );
            }
            _ => return Err("unknown algorithm; use secp256k1".into()),
        }
        let derived =
            kdf::derive_k256(&self.identity.app_key, &a.path).map_err(|e| e.to_string())?;
        let pubkey_hex = hex::encode(derived.verifying_key().to_sec1_bytes());
        let message = format!("{}:{}", a.purpose, pubkey_hex);
        let sig = kdf::sign_recoverable(&self.app_key, message.as_bytes());
        Ok((
            hex::encode(derived.to_bytes()),
            vec![
                hex::encode(sig),
                hex::encode(self.identity.app_key_kms_signature),
            ],
        ))
    }

    fn get_tls_key(&self, a: GetTlsKeyArgs) -> Result<Value, String> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| e.to_string())?;
        let chain = self.issue(
            &key,
            &LeafArgs {
                subject: &a.subject,
                alt_names: &a.alt_names,
                ra_tls: a.usage_ra_tls,
                server_auth: a.usage_server_auth,
                client_auth: a.usage_client_auth,
                not_before: a.not_before,
                not_after: a.not_after,
                with_app_info: a.with_app_info,
            },
        )?;
        Ok(json!({ "key": key.serialize_pem(), "certificate_chain": chain }))
    }

    fn tappd_derive_key(&self, a: DeriveKeyArgs) -> Result<Value, String> {
        let key = if a.random_seed {
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| e.to_string())?
        } else {
            let secret = kdf::derive_p256(self.identity.app_key.as_ref(), &[a.path.as_bytes()])
                .map_err(|e| e.to_string())?;
            tls::p256_key_pair(&secret).map_err(|e| e.to_string())?
        };
        let chain = self.issue(
            &key,
            &LeafArgs {
                subject: &a.subject,
                alt_names: &a.alt_names,
                ra_tls: a.usage_ra_tls,
                server_auth: a.usage_server_auth,
                client_auth: a.usage_client_auth,
                not_before: None,
                not_after: None,
                with_app_info: false,
            },
        )?;
        Ok(json!({ "key": key.serialize_pem(), "certificate_chain": chain }))
    }

    fn issue(&self, key: &rcgen::KeyPair, a: &LeafArgs<'_>) -> Result<Vec<String>, String> {
        let ra_tls = a.ra_tls.then(|| {
            let mut h = sha2::Sha512::new();
            h.update(b"ratls-cert:");
            h.update(rcgen::PublicKeyData::subject_public_key_info(key));
            let report_data: [u8; 64] = h.finalize().into();
            let (quote, log) = self.quote(report_data);
            (quote, log)
        });
        self.certs
            .issue(
                key,
                &LeafRequest {
                    subject: a.subject,
                    alt_names: a.alt_names,
                    server_auth: a.server_auth,
                    client_auth: a.client_auth,
                    not_before: a.not_before,
                    not_after: a.not_after,
                    ra_tls,
                    app_id: a.with_app_info.then_some(self.app_id.as_slice()),
                },
            )
            .map_err(|e| e.to_string())
    }

    /// A quote over `report_data` and the event log it measures.
    fn quote(&self, report_data: [u8; 64]) -> (Vec<u8>, String) {
        let (rtmrs, log) = {
            let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
            (events.rtmrs(), events.json().to_string())
        };
        let quote = quote::build(
            &self.attestation_key,
            &QuoteInputs {
                mrtd: self.mrtd,
                compose_hash: self.compose_hash,
                rtmrs,
                report_data,
            },
        );
        (quote, log)
    }

    fn get_quote(&self, a: RawQuoteArgs) -> Result<Value, String> {
        let report_data = pad64(&a.report_data)?;
        let (quote, event_log) = self.quote(report_data);
        Ok(json!({
            "quote": hex::encode(quote),
            "event_log": event_log,
            "report_data": hex::encode(report_data),
            "vm_config": self.vm_config(),
        }))
    }

    fn tdx_quote(&self, a: TdxQuoteArgs) -> Result<Value, String> {
        let algorithm = if a.hash_algorithm.is_empty() {
            "sha512"
        } else {
            a.hash_algorithm.as_str()
        };
        let tag = if a.prefix.is_empty() {
            "app-data"
        } else {
            a.prefix.as_str()
        };
        let report_data = report_data_with_hash(tag, &a.report_data, algorithm)?;
        let (quote, event_log) = self.quote(report_data);
        Ok(json!({
            "quote": hex::encode(quote),
            "event_log": event_log,
            "hash_algorithm": algorithm,
            "prefix": if algorithm == "raw" { "" } else { tag },
        }))
    }

    fn sign(&self, a: SignArgs) -> Result<Value, String> {
        let prehashed = match a.algorithm.as_str() {
            "secp256k1" | "k256" => false,
            "secp256k1_prehashed" => true,
            "ed25519" => {
                return Err(
                    "algorithm ed25519 is not supported by this agent; use secp256k1".into(),
                );
            }
            _ => return Err("unknown algorithm; use secp256k1 or secp256k1_prehashed".into()),
        };
        if prehashed && a.data.len() != 32 {
            return Err(format!(
                "pre-hashed signing needs a 32-byte digest, not {} bytes",
                a.data.len()
            ));
        }
        let (key_hex, chain) = self.get_key(GetKeyArgs {
            path: "vms".into(),
            purpose: "signing".into(),
            algorithm: "secp256k1".into(),
        })?;
        let key_bytes = hex::decode(key_hex).map_err(|e| e.to_string())?;
        let key = SigningKey::from_slice(&key_bytes).map_err(|e| e.to_string())?;
        let signature: k256::ecdsa::Signature = if prehashed {
            key.sign_prehash(&a.data)
                .map_err(|_| "the digest could not be signed".to_string())?
        } else {
            key.sign(&a.data)
        };
        let signature = hex::encode(signature.to_bytes());
        Ok(json!({
            "signature": signature,
            "signature_chain": [signature, chain[0], chain[1]],
            "public_key": hex::encode(key.verifying_key().to_sec1_bytes()),
        }))
    }

    fn verify(&self, a: VerifyArgs) -> Result<Value, String> {
        let prehashed = match a.algorithm.as_str() {
            "secp256k1" | "k256" => false,
            "secp256k1_prehashed" => true,
            "ed25519" => {
                return Err(
                    "algorithm ed25519 is not supported by this agent; use secp256k1".into(),
                );
            }
            _ => return Err("unknown algorithm; use secp256k1 or secp256k1_prehashed".into()),
        };
        let key = k256::ecdsa::VerifyingKey::from_sec1_bytes(&a.public_key)
            .map_err(|_| "public_key is not a secp256k1 public key".to_string())?;
        let signature = k256::ecdsa::Signature::from_slice(&a.signature)
            .map_err(|_| "signature is not a 64-byte secp256k1 signature".to_string())?;
        let valid = if prehashed {
            key.verify_prehash(&a.data, &signature).is_ok()
        } else {
            key.verify(&a.data, &signature).is_ok()
        };
        Ok(json!({ "valid": valid }))
    }

    fn emit_event(&self, a: EmitEventArgs) -> Result<Value, String> {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events
            .emit(&a.event, &a.payload)
            .map_err(|e| e.to_string())?;
        Ok(json!({}))
    }

    fn vm_config(&self) -> String {
        json!({
            "spec_version": 1,
            "os_image_hash": hex::encode(&self.os_image_hash),
            "simulated_tee": true,
        })
        .to_string()
    }

    fn info(&self) -> Value {
        let (rtmrs, event_log) = {
            let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
            (events.rtmrs(), events.json().to_string())
        };
        let mut agg = Sha256::new();
        agg.update(self.mrtd);
        for r in &rtmrs {
            agg.update(r);
        }
        let mr_aggregated = hex::encode(agg.finalize());
        let event_log: Value = serde_json::from_str(&event_log).unwrap_or(Value::Array(vec![]));
        let tcb_info = json!({
            "mrtd": hex::encode(self.mrtd),
            "rtmr0": hex::encode(rtmrs[0]),
            "rtmr1": hex::encode(rtmrs[1]),
            "rtmr2": hex::encode(rtmrs[2]),
            "rtmr3": hex::encode(rtmrs[3]),
            "mr_aggregated": mr_aggregated,
            "os_image_hash": hex::encode(&self.os_image_hash),
            "compose_hash": hex::encode(self.compose_hash),
            "device_id": "",
            "event_log": event_log,
            "app_compose": self.identity.app_compose,
            "simulated_tee": true,
            "tee": crate::SIMULATED_NOTICE,
        });
        json!({
            "app_id": hex::encode(&self.app_id),
            "instance_id": hex::encode(&self.instance_id),
            "app_cert": "",
            "tcb_info": serde_json::to_string_pretty(&tcb_info).unwrap_or_default(),
            "app_name": self.app_name,
            "device_id": "",
            "mr_aggregated": mr_aggregated,
            "os_image_hash": hex::encode(&self.os_image_hash),
            "key_provider_info": self.key_provider_info,
            "compose_hash": hex::encode(self.compose_hash),
            "vm_config": self.vm_config(),
            "cloud_vendor": "Berth",
            "cloud_product": "Berth simulated CVM (no TEE hardware)",
            "simulated_tee": true,
        })
    }
}

fn version() -> Value {
    json!({ "version": API_VERSION, "rev": concat!("berth-agent-", env!("CARGO_PKG_VERSION")) })
}

fn not_found(path: &str) -> Answer {
    let shown: String = path
        .chars()
        .take(80)
        .flat_map(char::escape_default)
        .collect();
    Answer::NotFound(format!("no such route: {shown}"))
}

fn pad64(data: &[u8]) -> Result<[u8; 64], String> {
    if data.len() > 64 {
        return Err(format!(
            "report_data is {} bytes; at most 64 are allowed",
            data.len()
        ));
    }
    let mut out = [0u8; 64];
    out[..data.len()].copy_from_slice(data);
    Ok(out)
}

/// dstack's `to_report_data_with_hash`: `hash(tag ":" content)`, zero
/// padded to 64 bytes; `raw` passes the content through.
fn report_data_with_hash(tag: &str, content: &[u8], algorithm: &str) -> Result<[u8; 64], String> {
    fn h<D: Digest>(tag: &str, content: &[u8]) -> Vec<u8> {
        let mut d = D::new();
        d.update(tag.as_bytes());
        d.update(b":");
        d.update(content);
        d.finalize().to_vec()
    }
    let out = match algorithm {
        "sha256" => h::<Sha256>(tag, content),
        "sha384" => h::<sha2::Sha384>(tag, content),
        "sha512" => h::<sha2::Sha512>(tag, content),
        "sha3-256" => h::<sha3::Sha3_256>(tag, content),
        "sha3-384" => h::<sha3::Sha3_384>(tag, content),
        "sha3-512" => h::<sha3::Sha3_512>(tag, content),
        "keccak256" => h::<sha3::Keccak256>(tag, content),
        "keccak384" => h::<sha3::Keccak384>(tag, content),
        "keccak512" => h::<sha3::Keccak512>(tag, content),
        "raw" => return pad64(content),
        _ => {
            return Err(
                "unknown hash_algorithm; use sha256, sha384, sha512, sha3-256, sha3-384, sha3-512, keccak256, keccak384, keccak512 or raw"
                    .into(),
            );
        }
    };
    pad64(&out)
}

/// The address a recoverable signature over `keccak256(message)` recovers
/// to, as a compressed public key.
pub(crate) fn recover(message: &[u8], sig: &[u8; 65]) -> Option<Vec<u8>> {
    let signature = k256::ecdsa::Signature::from_slice(&sig[..64]).ok()?;
    let recid = k256::ecdsa::RecoveryId::from_byte(sig[64] % 27)?;
    let digest = sha3::Keccak256::new_with_prefix(message);
    let key = k256::ecdsa::VerifyingKey::recover_from_digest(digest, &signature, recid).ok()?;
    Some(key.to_sec1_bytes().to_vec())
}

struct LeafArgs<'a> {
    subject: &'a str,
    alt_names: &'a [String],
    ra_tls: bool,
    server_auth: bool,
    client_auth: bool,
    not_before: Option<u64>,
    not_after: Option<u64>,
    with_app_info: bool,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct GetKeyArgs {
    #[serde(deserialize_with = "decode::string")]
    path: String,
    #[serde(deserialize_with = "decode::string")]
    purpose: String,
    #[serde(deserialize_with = "decode::string")]
    algorithm: String,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct GetTlsKeyArgs {
    #[serde(deserialize_with = "decode::string")]
    subject: String,
    #[serde(deserialize_with = "decode::strings")]
    alt_names: Vec<String>,
    #[serde(deserialize_with = "decode::flag")]
    usage_ra_tls: bool,
    #[serde(deserialize_with = "decode::flag")]
    usage_server_auth: bool,
    #[serde(deserialize_with = "decode::flag")]
    usage_client_auth: bool,
    #[serde(deserialize_with = "decode::opt_u64")]
    not_before: Option<u64>,
    #[serde(deserialize_with = "decode::opt_u64")]
    not_after: Option<u64>,
    #[serde(deserialize_with = "decode::flag")]
    with_app_info: bool,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct DeriveKeyArgs {
    #[serde(deserialize_with = "decode::string")]
    path: String,
    #[serde(deserialize_with = "decode::string")]
    subject: String,
    #[serde(deserialize_with = "decode::strings")]
    alt_names: Vec<String>,
    #[serde(deserialize_with = "decode::flag")]
    usage_ra_tls: bool,
    #[serde(deserialize_with = "decode::flag")]
    usage_server_auth: bool,
    #[serde(deserialize_with = "decode::flag")]
    usage_client_auth: bool,
    #[serde(deserialize_with = "decode::flag")]
    random_seed: bool,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RawQuoteArgs {
    #[serde(deserialize_with = "decode::hex_bytes")]
    report_data: Vec<u8>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct TdxQuoteArgs {
    #[serde(deserialize_with = "decode::hex_bytes")]
    report_data: Vec<u8>,
    #[serde(deserialize_with = "decode::string")]
    hash_algorithm: String,
    #[serde(deserialize_with = "decode::string")]
    prefix: String,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct SignArgs {
    #[serde(deserialize_with = "decode::string")]
    algorithm: String,
    #[serde(deserialize_with = "decode::hex_bytes")]
    data: Vec<u8>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct VerifyArgs {
    #[serde(deserialize_with = "decode::string")]
    algorithm: String,
    #[serde(deserialize_with = "decode::hex_bytes")]
    data: Vec<u8>,
    #[serde(deserialize_with = "decode::hex_bytes")]
    signature: Vec<u8>,
    #[serde(deserialize_with = "decode::hex_bytes")]
    public_key: Vec<u8>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct EmitEventArgs {
    #[serde(deserialize_with = "decode::string")]
    event: String,
    #[serde(deserialize_with = "decode::hex_bytes")]
    payload: Vec<u8>,
}
