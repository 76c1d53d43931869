//! TLS certificates for `GetTlsKey` and `Tappd.DeriveKey`: a leaf for the
//! caller's key, signed by the app's CA (a P-256 key derived from the app
//! key, so the same app has the same CA across restarts and updates),
//! itself signed by the simulated TEE's root CA (derived from the
//! attestation key). RA-TLS extensions use dstack's OIDs.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use crate::kdf;

/// dstack's RA-TLS extension OIDs.
const OID_TDX_QUOTE: &[u64] = &[1, 3, 6, 1, 4, 1, 62397, 1, 1];
const OID_EVENT_LOG: &[u64] = &[1, 3, 6, 1, 4, 1, 62397, 1, 2];
const OID_APP_ID: &[u64] = &[1, 3, 6, 1, 4, 1, 62397, 1, 3];

/// What a leaf certificate should say.
pub(crate) struct LeafRequest<'a> {
    pub subject: &'a str,
    pub alt_names: &'a [String],
    pub server_auth: bool,
    pub client_auth: bool,
    pub not_before: Option<u64>,
    pub not_after: Option<u64>,
    /// The RA-TLS extensions: quote and event log.
    pub ra_tls: Option<(Vec<u8>, String)>,
    /// The app id extension.
    pub app_id: Option<&'a [u8]>,
}

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("alt name `{0}` is not a DNS name or IP address")]
    AltName(String),
    #[error("not_before must be earlier than not_after")]
    Validity,
    #[error("a validity time is out of range")]
    TimeRange,
    #[error("the certificate could not be made: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("a derived key is out of the curve's range")]
    Key,
}

/// The app's CA and the root above it, made once at start.
pub(crate) struct CertIssuer {
    app_ca_key: KeyPair,
    app_ca_params: CertificateParams,
    chain_tail: [String; 2],
}

/// A P-256 `KeyPair` from a secret key.
pub(crate) fn p256_key_pair(secret: &p256::SecretKey) -> Result<KeyPair, TlsError> {
    use p256::pkcs8::EncodePrivateKey;
    let der = secret.to_pkcs8_der().map_err(|_| TlsError::Key)?;
    KeyPair::try_from(der.as_bytes()).map_err(TlsError::from)
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Berth");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    params
}

impl CertIssuer {
    /// The app CA from the app key, the root CA from the attestation seed.
    pub(crate) fn new(app_key: &[u8; 32], root_seed: &[u8]) -> Result<Self, TlsError> {
        let root_secret = kdf::derive_p256(root_seed, &[b"berth-simulated-tee-root-ca"])
            .map_err(|_| TlsError::Key)?;
        let root_key = p256_key_pair(&root_secret)?;
        let root_params = ca_params("Berth simulated TEE root CA");
        let root_cert = root_params.self_signed(&root_key)?;

        // A salt of its own: no `GetKey`/`DeriveKey` path can give this key.
        let mut okm = zeroize::Zeroizing::new([0u8; 32]);
        hkdf::Hkdf::<sha2::Sha256>::new(Some(b"berth-app-ca"), app_key)
            .expand(b"app-ca-key", okm.as_mut())
            .map_err(|_| TlsError::Key)?;
        let app_ca_secret = p256::SecretKey::from_slice(okm.as_ref()).map_err(|_| TlsError::Key)?;
        let app_ca_key = p256_key_pair(&app_ca_secret)?;
        let app_ca_params = ca_params("Berth app CA");
        let root_issuer = Issuer::from_params(&root_params, &root_key);
        let app_ca_cert = app_ca_params.signed_by(&app_ca_key, &root_issuer)?;
        Ok(Self {
            app_ca_key,
            app_ca_params,
            chain_tail: [app_ca_cert.pem(), root_cert.pem()],
        })
    }

    /// The chain `[leaf, app CA, root CA]` (PEM) for `key`.
    pub(crate) fn issue(
        &self,
        key: &KeyPair,
        req: &LeafRequest<'_>,
    ) -> Result<Vec<String>, TlsError> {
        let mut params = CertificateParams::default();
        if !req.subject.is_empty() {
            params
                .distinguished_name
                .push(DnType::CommonName, req.subject);
        }
        for name in req.alt_names {
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.as_str()
                        .try_into()
                        .map_err(|_| TlsError::AltName(name.escape_default().to_string()))?,
                ),
            };
            params.subject_alt_names.push(san);
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyAgreement,
        ];
        if req.server_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if req.client_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        let now = OffsetDateTime::now_utc();
        params.not_before = match req.not_before {
            Some(t) => time_of(t)?,
            None => now - time::Duration::hours(1),
        };
        params.not_after = match req.not_after {
            Some(t) => time_of(t)?,
            None => now + time::Duration::days(365),
        };
        if params.not_before >= params.not_after {
            return Err(TlsError::Validity);
        }
        if let Some((quote, event_log)) = &req.ra_tls {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    OID_TDX_QUOTE,
                    der_octets(quote),
                ));
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    OID_EVENT_LOG,
                    der_octets(event_log.as_bytes()),
                ));
        }
        if let Some(app_id) = req.app_id {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    OID_APP_ID,
                    der_octets(app_id),
                ));
        }
        let issuer = Issuer::from_params(&self.app_ca_params, &self.app_ca_key);
        let leaf = params.signed_by(key, &issuer)?;
        Ok(vec![
            leaf.pem(),
            self.chain_tail[0].clone(),
            self.chain_tail[1].clone(),
        ])
    }
}

fn time_of(secs: u64) -> Result<OffsetDateTime, TlsError> {
    let secs = i64::try_from(secs).map_err(|_| TlsError::TimeRange)?;
    let t = OffsetDateTime::from_unix_timestamp(secs).map_err(|_| TlsError::TimeRange)?;
    if t.year() > 9999 {
        return Err(TlsError::TimeRange);
    }
    Ok(t)
}

/// DER `OCTET STRING` of `bytes`.
fn der_octets(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![0x04];
    let n = bytes.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let len = n.to_be_bytes();
        let skip = len.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (len.len() - skip) as u8);
        out.extend_from_slice(&len[skip..]);
    }
    out.extend_from_slice(bytes);
    out
}
