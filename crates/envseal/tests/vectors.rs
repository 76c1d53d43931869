//! Committed test vectors made with pyca/cryptography (`interop/make-vectors.py`),
//! an implementation independent of this crate.

use envseal::{Env, EnvPrivateKey, EnvPublicKey, EnvVar, Origin, SealedEnv};
use rand_core::{CryptoRng, RngCore};

/// Replays fixed bytes: the ephemeral key, then the nonce. Test-only.
struct Replay(Vec<u8>);

impl RngCore for Replay {
    fn next_u32(&mut self) -> u32 {
        unimplemented!()
    }
    fn next_u64(&mut self) -> u64 {
        unimplemented!()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let rest = self.0.split_off(dest.len());
        dest.copy_from_slice(&self.0);
        self.0 = rest;
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl CryptoRng for Replay {}

#[derive(serde::Deserialize)]
struct Vector {
    app_private_key: String,
    app_public_key: String,
    ephemeral_private_key: String,
    nonce: String,
    env: Vec<Var>,
    sealed: String,
}

#[derive(serde::Deserialize)]
struct Var {
    key: String,
    value: String,
}

fn vectors() -> Vec<Vector> {
    serde_json::from_str(include_str!("vectors.json")).unwrap()
}

#[test]
fn vectors_open_to_their_env() {
    for v in vectors() {
        let key = EnvPrivateKey::from_hex(&v.app_private_key).unwrap();
        assert_eq!(key.public_key().to_hex(), v.app_public_key);
        let env = key.open(&SealedEnv::from_hex(&v.sealed).unwrap()).unwrap();
        let got: Vec<(&str, &str)> = env
            .vars()
            .iter()
            .map(|x| (x.key.as_str(), x.value.expose()))
            .collect();
        let want: Vec<(&str, &str)> = v
            .env
            .iter()
            .map(|x| (x.key.as_str(), x.value.as_str()))
            .collect();
        assert_eq!(got, want);
    }
}

#[test]
fn sealing_reproduces_vectors_byte_for_byte() {
    for v in vectors() {
        let env = Env::from_vars(
            v.env
                .iter()
                .map(|x| EnvVar::new(x.key.as_str(), x.value.as_str(), Origin::Argument))
                .collect(),
        )
        .unwrap();
        let mut rng = Replay(
            [
                hex::decode(&v.ephemeral_private_key).unwrap(),
                hex::decode(&v.nonce).unwrap(),
            ]
            .concat(),
        );
        let sealed = EnvPublicKey::from_hex(&v.app_public_key)
            .unwrap()
            .seal_with_rng(&env, &mut rng);
        assert_eq!(sealed.to_hex(), v.sealed);
    }
}
