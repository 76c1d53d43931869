// Checks a KMS signature over an app's env public key with the official
// @phala/dstack-sdk verifier and prints the signer's public key it recovers
// (compressed secp256k1, "0x" + 66 hex characters).
//
// Usage: node verify-kms-signature.mjs PUBKEY_HEX SIGNATURE_HEX APP_ID_HEX [TIMESTAMP]
//   with TIMESTAMP (Unix seconds): verifyEnvEncryptPublicKey (signature_v1,
//   which also refuses a timestamp older than 300 s or more than 60 s ahead);
//   without: verifyEnvEncryptPublicKeyLegacy (signature).
// Exits 1, printing nothing on stdout, when the SDK returns null.
import {
  verifyEnvEncryptPublicKey,
  verifyEnvEncryptPublicKeyLegacy,
} from "@phala/dstack-sdk/verify-env-encrypt-public-key";

const [pubkeyHex, signatureHex, appId, timestamp] = process.argv.slice(2);
if (!pubkeyHex || !signatureHex || !appId) {
  process.stderr.write(
    "usage: node verify-kms-signature.mjs PUBKEY_HEX SIGNATURE_HEX APP_ID_HEX [TIMESTAMP]\n",
  );
  process.exit(2);
}

function bytes(hex, what) {
  const h = hex.replace(/^0x/i, "");
  if (h.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(h)) {
    process.stderr.write(`${what} is not hex\n`);
    process.exit(2);
  }
  return Uint8Array.from(Buffer.from(h, "hex"));
}

const publicKey = bytes(pubkeyHex, "PUBKEY_HEX");
const signature = bytes(signatureHex, "SIGNATURE_HEX");
const signer =
  timestamp === undefined
    ? verifyEnvEncryptPublicKeyLegacy(publicKey, signature, appId)
    : verifyEnvEncryptPublicKey(publicKey, signature, appId, BigInt(timestamp));

if (signer === null) {
  process.stderr.write("the SDK rejected the signature (it returned null)\n");
  process.exit(1);
}
process.stdout.write(signer + "\n");
