//! What the CVM handlers (`cvms`, `deploy`, `update`) share: finding the
//! user's CVM, and a sealed env from its hex form. Kept
//! apart, as crates.io keeps `controllers/helpers`, so that no handler
//! module imports another that imports it back.

use super::AppState;
use crate::db::{App, Cvm, User};
use crate::error::ApiError;

/// Finds the user's CVM from any of the forms the clients send: the UUID
/// with or without dashes, `app_<app_id>`, the bare app id, the name, or
/// the numeric id.
pub(super) async fn find_cvm(
    state: &AppState,
    user: &User,
    id: &str,
) -> Result<(Cvm, App), ApiError> {
    state.db.find_cvm_of(user.id, id).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "no CVM `{}` among yours",
            id.chars().take(80).collect::<String>()
        ))
    })
}

/// A sealed env from its hex form (`0x` allowed); 422 when it is not hex
/// or too short to be one.
pub(super) fn decode_env(hex_text: &str) -> Result<Vec<u8>, ApiError> {
    let t = hex_text.trim().trim_start_matches("0x");
    let bytes = hex::decode(t).map_err(|_| ApiError::invalid("encrypted_env is not hex"))?;
    // eph_pub(32) + nonce(12) + tag(16): anything shorter cannot be a sealed env.
    if bytes.len() < contract::env_rules::MIN_SEALED_LEN {
        return Err(ApiError::invalid(format!(
            "encrypted_env is {} bytes; a sealed env is at least {} bytes",
            bytes.len(),
            contract::env_rules::MIN_SEALED_LEN
        )));
    }
    Ok(bytes)
}
