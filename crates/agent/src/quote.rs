//! Berth's simulated TDX quote: the byte layout of an Intel TDX quote v4
//! (header, TD report body, signature data), signed by the Berth
//! [`AttestationKey`] instead of Intel's quoting enclave, and marked so in
//! the header's vendor id and user data and in its certification data.

use p256::ecdsa::signature::{Signer, Verifier};

use crate::eventlog::{self, Event};
use crate::identity::{AttestationKey, AttestationPublicKey};

const HEADER_LEN: usize = 48;
const BODY_LEN: usize = 584;
/// Header and TD report body: what the attestation key signs.
const SIGNED_LEN: usize = HEADER_LEN + BODY_LEN;

/// The QE vendor id of a Berth simulated quote (Intel's is
/// `939a7233f79c4ca9940a0db3957f0607`).
pub const SIMULATED_QE_VENDOR_ID: [u8; 16] = *b"berth-simulated\0";
/// The header's user data of a Berth simulated quote.
const SIMULATED_USER_DATA: [u8; 20] = *b"not-a-real-tdx-quote";
/// The certification data type of a Berth quote (Intel's are 1–7).
const SIMULATED_CERT_DATA_TYPE: u16 = 0xbe27;
const SIMULATED_CERT_DATA: &[u8] = b"Berth simulated TEE: this quote is signed by Berth's attestation key, not by an Intel quoting enclave; a DCAP verifier must reject it.";

// Offsets of the TD report body's fields in the quote.
const MRTD: usize = HEADER_LEN + 16 + 48 + 48 + 8 + 8 + 8;
const MRCONFIGID: usize = MRTD + 48;
const RTMR0: usize = MRCONFIGID + 48 * 3;
const REPORT_DATA: usize = RTMR0 + 48 * 4;

/// What a quote measures.
pub(crate) struct QuoteInputs {
    pub mrtd: [u8; 48],
    pub compose_hash: [u8; 32],
    pub rtmrs: [[u8; 48]; 4],
    pub report_data: [u8; 64],
}

/// `mr_config_id` as dstack's version 1 sets it: `0x01 ‖ compose_hash`.
fn mr_config_id(compose_hash: &[u8; 32]) -> [u8; 48] {
    let mut id = [0u8; 48];
    id[0] = 1;
    id[1..33].copy_from_slice(compose_hash);
    id
}

/// Builds and signs a quote.
pub(crate) fn build(key: &AttestationKey, inputs: &QuoteInputs) -> Vec<u8> {
    let mut q = Vec::with_capacity(SIGNED_LEN + 4 + 64 + 64 + 6 + SIMULATED_CERT_DATA.len());
    q.extend_from_slice(&4u16.to_le_bytes()); // version
    q.extend_from_slice(&2u16.to_le_bytes()); // attestation key type: ECDSA-256 with P-256
    q.extend_from_slice(&0x81u32.to_le_bytes()); // TEE type: TDX
    q.extend_from_slice(&0u16.to_le_bytes()); // QE SVN
    q.extend_from_slice(&0u16.to_le_bytes()); // PCE SVN
    q.extend_from_slice(&SIMULATED_QE_VENDOR_ID);
    q.extend_from_slice(&SIMULATED_USER_DATA);
    debug_assert_eq!(q.len(), HEADER_LEN);
    // TD report body: TEE TCB SVN, MRSEAM, MRSIGNERSEAM, SEAM attributes,
    // TD attributes, XFAM are zero (no TDX module).
    q.resize(MRTD, 0);
    q.extend_from_slice(&inputs.mrtd);
    q.extend_from_slice(&mr_config_id(&inputs.compose_hash));
    q.resize(RTMR0, 0); // MROWNER, MROWNERCONFIG
    for rtmr in &inputs.rtmrs {
        q.extend_from_slice(rtmr);
    }
    q.extend_from_slice(&inputs.report_data);
    debug_assert_eq!(q.len(), SIGNED_LEN);
    let signature: p256::ecdsa::Signature = key.signing_key().sign(&q);
    let cert_len = SIMULATED_CERT_DATA.len();
    let sig_data_len = 64 + 64 + 2 + 4 + cert_len;
    q.extend_from_slice(&(sig_data_len as u32).to_le_bytes());
    q.extend_from_slice(&signature.to_bytes());
    q.extend_from_slice(&key.public_key().to_raw());
    q.extend_from_slice(&SIMULATED_CERT_DATA_TYPE.to_le_bytes());
    q.extend_from_slice(&(cert_len as u32).to_le_bytes());
    q.extend_from_slice(SIMULATED_CERT_DATA);
    q
}

/// A quote whose Berth signature checked out, and what it measures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedQuote {
    /// MRTD (simulated: derived from the OS image hash).
    pub mrtd: [u8; 48],
    /// RTMR0–3; RTMR3 is the replay of the runtime event log.
    pub rtmrs: [[u8; 48]; 4],
    /// The 64 bytes of report data.
    pub report_data: [u8; 64],
    /// The compose hash the quote's `mr_config_id` carries.
    pub compose_hash: [u8; 32],
}

/// Why a quote is not a valid Berth quote for the expected app.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuoteError {
    /// Too short, or lengths inside that do not add up.
    #[error("the quote is malformed: {0}")]
    Malformed(&'static str),
    /// Not a TDX v4 quote from a Berth simulated TEE.
    #[error("this is not a Berth simulated quote (a real TDX quote needs a DCAP verifier)")]
    NotSimulated,
    /// Signed by another attestation key.
    #[error("the quote is signed by another attestation key than the one given")]
    OtherKey,
    /// The signature does not verify.
    #[error("the quote's signature does not verify")]
    BadSignature,
    /// The expected compose hash is not 64 hex digits.
    #[error("the expected compose hash is not 64 hex digits")]
    BadExpectedHash,
    /// The quote is for another compose hash.
    #[error("the quote is for compose hash {found}, not the expected {expected}")]
    OtherComposeHash {
        /// The expected compose hash (hex).
        expected: String,
        /// The quote's compose hash (hex).
        found: String,
    },
    /// The event log does not replay to the quote's RTMRs.
    #[error("the event log does not replay to the quote's RTMR{0}")]
    EventLogMismatch(usize),
    /// The event log is not dstack's JSON array of events.
    #[error("the event log is not a JSON array of events")]
    EventLogMalformed,
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

/// Checks a Berth simulated quote: its layout, that `attestation_public_key`
/// signed it, and that it is for `expected_compose_hash` (hex, `0x`
/// accepted). A quote from real hardware is refused: check those with a
/// DCAP verifier.
pub fn verify_quote(
    quote: &[u8],
    attestation_public_key: &AttestationPublicKey,
    expected_compose_hash: &str,
) -> Result<VerifiedQuote, QuoteError> {
    if quote.len() < SIGNED_LEN + 4 + 128 {
        return Err(QuoteError::Malformed("shorter than a TDX v4 quote"));
    }
    let version = u16::from_le_bytes(array(quote, 0));
    let tee_type = u32::from_le_bytes(array(quote, 4));
    if version != 4 || tee_type != 0x81 || quote[12..28] != SIMULATED_QE_VENDOR_ID {
        return Err(QuoteError::NotSimulated);
    }
    let sig_len = u32::from_le_bytes(array(quote, SIGNED_LEN)) as usize;
    if quote.len() != SIGNED_LEN + 4 + sig_len || sig_len < 128 {
        return Err(QuoteError::Malformed(
            "the signature data length does not match",
        ));
    }
    let sig_at = SIGNED_LEN + 4;
    let key = AttestationPublicKey::from_raw(&quote[sig_at + 64..sig_at + 128]).ok_or(
        QuoteError::Malformed("the attestation key is not a P-256 point"),
    )?;
    if key != *attestation_public_key {
        return Err(QuoteError::OtherKey);
    }
    let signature = p256::ecdsa::Signature::from_slice(&quote[sig_at..sig_at + 64])
        .map_err(|_| QuoteError::BadSignature)?;
    key.verifying_key()
        .verify(&quote[..SIGNED_LEN], &signature)
        .map_err(|_| QuoteError::BadSignature)?;
    let expected = parse_hash(expected_compose_hash).ok_or(QuoteError::BadExpectedHash)?;
    let config_id: [u8; 48] = array(quote, MRCONFIGID);
    let compose_hash: [u8; 32] = array(&config_id, 1);
    if config_id != mr_config_id(&compose_hash) || compose_hash != expected {
        return Err(QuoteError::OtherComposeHash {
            expected: hex::encode(expected),
            found: hex::encode(compose_hash),
        });
    }
    let mut rtmrs = [[0u8; 48]; 4];
    for (i, rtmr) in rtmrs.iter_mut().enumerate() {
        *rtmr = array(quote, RTMR0 + 48 * i);
    }
    Ok(VerifiedQuote {
        mrtd: array(quote, MRTD),
        rtmrs,
        report_data: array(quote, REPORT_DATA),
        compose_hash,
    })
}

impl VerifiedQuote {
    /// Checks that an event log (the `event_log` JSON of `GetQuote`)
    /// replays to this quote's four RTMRs, each event's runtime digest
    /// recomputed from its name and payload.
    pub fn check_event_log(&self, event_log_json: &str) -> Result<(), QuoteError> {
        let mut events: Vec<Event> =
            serde_json::from_str(event_log_json).map_err(|_| QuoteError::EventLogMalformed)?;
        for e in &mut events {
            if e.event_type == eventlog::RUNTIME_EVENT_TYPE {
                e.digest = eventlog::runtime_digest(&e.event, &e.event_payload).to_vec();
            }
        }
        let replayed = eventlog::replay(&events);
        match (0..4).find(|&i| replayed[i] != self.rtmrs[i]) {
            Some(i) => Err(QuoteError::EventLogMismatch(i)),
            None => Ok(()),
        }
    }
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let text = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}
