// Sealing in the browser, byte for byte as envseal (and dstack's SDKs) do:
// an ephemeral X25519 key, the raw 32-byte shared secret used directly as
// the AES-256-GCM key (no KDF), a random 12-byte nonce, and
// hex(eph_pub(32) || nonce(12) || ciphertext || tag(16)) over the JSON
// {"env":[{"key","value"},...]}.

/** Why this page cannot seal here, or null when it can. */
export function cannotSeal() {
  if (!window.isSecureContext || !crypto.subtle) {
    return (
      'This page cannot encrypt secrets here: browsers offer WebCrypto only in a secure context. ' +
      'Open the console on a loopback address (http://127.0.0.1:PORT/) or over HTTPS ' +
      '(berth up --tls-cert/--tls-key), or deploy with `berth deploy`.'
    );
  }
  return null;
}

function fromHex(text) {
  const t = text.trim().replace(/^0x/, '');
  if (!/^[0-9a-fA-F]{64}$/.test(t)) throw new Error('the env public key is not 64 hex characters');
  const out = new Uint8Array(32);
  for (let i = 0; i < 32; i += 1) out[i] = parseInt(t.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Seals `vars` ([{key, value}]) to the app's env public key (hex). */
export async function sealEnv(publicKeyHex, vars) {
  const why = cannotSeal();
  if (why) throw new Error(why);
  const peer = await crypto.subtle.importKey('raw', fromHex(publicKeyHex), { name: 'X25519' }, false, []);
  const eph = await crypto.subtle.generateKey({ name: 'X25519' }, true, ['deriveBits']);
  // WebCrypto refuses an all-zero shared secret (a low-order public key).
  const shared = await crypto.subtle.deriveBits({ name: 'X25519', public: peer }, eph.privateKey, 256);
  const key = await crypto.subtle.importKey('raw', shared, { name: 'AES-GCM' }, false, ['encrypt']);
  const nonce = crypto.getRandomValues(new Uint8Array(12));
  const plaintext = new TextEncoder().encode(
    JSON.stringify({ env: vars.map((v) => ({ key: v.key, value: v.value })) }),
  );
  const ct = new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv: nonce }, key, plaintext));
  plaintext.fill(0);
  const ephPub = new Uint8Array(await crypto.subtle.exportKey('raw', eph.publicKey));
  const out = new Uint8Array(32 + 12 + ct.length);
  out.set(ephPub, 0);
  out.set(nonce, 32);
  out.set(ct, 44);
  return toHex(out);
}
