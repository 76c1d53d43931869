// Calls a guest agent with the official @phala/dstack-sdk (DstackClient on
// dstack.sock, the legacy TappdClient on tappd.sock) and prints one JSON
// object of what the SDK returned, for Berth's agent interop test.
//
// Usage: node guest-agent-sdk.mjs DSTACK_SOCKET TAPPD_SOCKET
// The signature chain of getKey is also checked here with @noble/curves (not
// Berth's code): the recovered signers are printed as compressed hex.
import { DstackClient, TappdClient } from "@phala/dstack-sdk";
import { secp256k1 } from "@noble/curves/secp256k1";
import { keccak_256 } from "@noble/hashes/sha3";

const [dstackSock, tappdSock] = process.argv.slice(2);
if (!dstackSock || !tappdSock) {
  process.stderr.write("usage: node guest-agent-sdk.mjs DSTACK_SOCKET TAPPD_SOCKET\n");
  process.exit(2);
}
// The SDK's deprecation notices go to stderr, never into the JSON.
console.warn = (...args) => process.stderr.write(args.join(" ") + "\n");

const hex = (b) => Buffer.from(b).toString("hex");
const recover = (message, sig) =>
  hex(
    secp256k1.Signature.fromCompact(sig.slice(0, 64))
      .addRecoveryBit(sig[64])
      .recoverPublicKey(keccak_256(message))
      .toRawBytes(true),
  );

const client = new DstackClient(dstackSock);
const out = {};

out.reachable = await client.isReachable();
const info = await client.info();
out.info = {
  app_id: info.app_id,
  instance_id: info.instance_id,
  compose_hash: info.compose_hash,
  app_name: info.app_name,
  simulated_tee: info.simulated_tee,
  tcb_app_compose: info.tcb_info.app_compose,
  tcb_rtmr3: info.tcb_info.rtmr3,
  tcb_event_names: info.tcb_info.event_log.map((e) => e.event),
};
out.version = await client.version();

const key = await client.getKey("wallet/eth", "signing");
const derivedPub = hex(secp256k1.getPublicKey(key.key, true));
out.getKey = {
  key: hex(key.key),
  derived_pubkey: derivedPub,
  chain_len: key.signature_chain.length,
  app_signer: recover(new TextEncoder().encode(`signing:${derivedPub}`), key.signature_chain[0]),
  kms_signature: hex(key.signature_chain[1]),
};

await client.emitEvent("sdk-test-event", "hello from the SDK");
const quote = await client.getQuote("berth-sdk-test");
const replayed = quote.replayRtmrs();
const q = Buffer.from(quote.quote, "hex");
const rtmrsInQuote = [0, 1, 2, 3].map((i) => q.subarray(376 + 48 * i, 424 + 48 * i).toString("hex"));
out.getQuote = {
  quote: quote.quote,
  event_log: quote.event_log,
  report_data: quote.report_data,
  replayed,
  rtmrs_in_quote: rtmrsInQuote,
  replay_matches: replayed.every((r, i) => r === rtmrsInQuote[i]),
};

const tls = await client.getTlsKey({
  subject: "sdk.example",
  altNames: ["sdk.example", "127.0.0.1"],
  usageRaTls: true,
  usageServerAuth: true,
  usageClientAuth: true,
});
out.getTlsKey = {
  key_is_pkcs8_pem: tls.key.startsWith("-----BEGIN PRIVATE KEY-----"),
  key_bytes: tls.asUint8Array().length,
  chain: tls.certificate_chain,
};

const sig = await client.sign("secp256k1", "message from the SDK");
const ver = await client.verify("secp256k1", "message from the SDK", sig.signature, sig.public_key);
const bad = await client.verify("secp256k1", "another message", sig.signature, sig.public_key);
out.sign = {
  chain_len: sig.signature_chain.length,
  public_key: hex(sig.public_key),
  valid: ver.valid,
  tampered_valid: bad.valid,
};

const tappd = new TappdClient(tappdSock);
const dk1 = await tappd.deriveKey("/legacy", "legacy.example", ["legacy.example"]);
const dk2 = await tappd.deriveKey("/legacy");
out.tappdDeriveKey = {
  deterministic: dk1.key === dk2.key,
  chain_len: dk1.certificate_chain.length,
  key_bytes: dk1.asUint8Array(32).length,
};
const tq = await tappd.tdxQuote("legacy report data", "sha512");
const traw = await tappd.tdxQuote("0102", "raw");
out.tappdTdxQuote = {
  hash_algorithm: tq.hash_algorithm,
  prefix: tq.prefix,
  quote: tq.quote,
  replay_matches: tq
    .replayRtmrs()
    .every(
      (r, i) =>
        r === Buffer.from(tq.quote, "hex").subarray(376 + 48 * i, 424 + 48 * i).toString("hex"),
    ),
  raw_quote: traw.quote,
};
out.tappdReachable = await tappd.isReachable();

process.stdout.write(JSON.stringify(out) + "\n");
