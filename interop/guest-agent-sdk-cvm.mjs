// Runs INSIDE a container of a Berth CVM whose compose file mounts the guest
// agent the way Phala's examples do (/var/run/dstack.sock, and
// /var/run/tappd.sock for the legacy client). Calls every route the official
// @phala/dstack-sdk offers, then the two curl commands of dstack's docs, and
// prints ONE short JSON line prefixed `BERTH-SDK ` (no secret: derived keys
// are printed as public keys only; the signature chains are printed so the
// test recovers them itself).
//
// Usage: node guest-agent-sdk-cvm.mjs [DSTACK_SOCKET [TAPPD_SOCKET]]
import { execFileSync } from "node:child_process";
import { DstackClient, TappdClient } from "@phala/dstack-sdk";
import { secp256k1 } from "@noble/curves/secp256k1";

const dstackSock = process.argv[2] || "/var/run/dstack.sock";
const tappdSock = process.argv[3] || "/var/run/tappd.sock";
// The SDK's deprecation notices go to stderr, never into the JSON.
console.warn = (...args) => process.stderr.write(args.join(" ") + "\n");

const hex = (b) => Buffer.from(b).toString("hex");
// TDX quote v4: RTMR0..3 at 376 (48 bytes each), report_data at 568.
const rtmrsOf = (quoteHex) => {
  const q = Buffer.from(quoteHex, "hex");
  return [0, 1, 2, 3].map((i) => q.subarray(376 + 48 * i, 424 + 48 * i).toString("hex"));
};
const reportDataOf = (quoteHex) =>
  Buffer.from(quoteHex, "hex").subarray(568, 632).toString("hex");
const out = {};

const client = new DstackClient(dstackSock);
out.reachable = await client.isReachable();
const info = await client.info();
out.info = {
  app_id: info.app_id,
  instance_id: info.instance_id,
  compose_hash: info.compose_hash,
  simulated_tee: info.simulated_tee,
};

const key = await client.getKey("wallet/eth", "signing");
out.getKey = {
  path: "wallet/eth",
  purpose: "signing",
  derived_pubkey: hex(secp256k1.getPublicKey(key.key, true)),
  signature_chain: key.signature_chain.map(hex),
};

await client.emitEvent("berth-sdk-event", "hello from inside the CVM");
const reportData = "berth-in-cvm";
const quote = await client.getQuote(reportData);
const replayed = quote.replayRtmrs();
out.getQuote = {
  quote_bytes: quote.quote.length / 2,
  report_data_in_quote: reportDataOf(quote.quote),
  report_data_expected: hex(Buffer.from(reportData)).padEnd(128, "0"),
  replayed,
  rtmrs_in_quote: rtmrsOf(quote.quote),
  events: JSON.parse(quote.event_log).map((e) => e.event),
};

const tls = await client.getTlsKey({
  subject: "in-cvm.example",
  altNames: ["in-cvm.example"],
  usageServerAuth: true,
});
out.getTlsKey = {
  key_is_pkcs8_pem: tls.key.startsWith("-----BEGIN PRIVATE KEY-----"),
  chain_len: tls.certificate_chain.length,
};

const sig = await client.sign("secp256k1", "signed inside the CVM");
const ver = await client.verify("secp256k1", "signed inside the CVM", sig.signature, sig.public_key);
const bad = await client.verify("secp256k1", "another message", sig.signature, sig.public_key);
out.sign = { chain_len: sig.signature_chain.length, valid: ver.valid, tampered_valid: bad.valid };

const tappd = new TappdClient(tappdSock);
const dk1 = await tappd.deriveKey("/legacy", "legacy.example", ["legacy.example"]);
const dk2 = await tappd.deriveKey("/legacy");
out.tappdDeriveKey = {
  deterministic: dk1.key === dk2.key,
  chain_len: dk1.certificate_chain.length,
};
const tq = await tappd.tdxQuote("legacy report data", "sha512");
out.tappdTdxQuote = {
  hash_algorithm: tq.hash_algorithm,
  quote_bytes: tq.quote.length / 2,
  replayed: tq.replayRtmrs(),
  rtmrs_in_quote: rtmrsOf(tq.quote),
};

// The curl commands of dstack's docs, as an app's shell would run them.
const curl = (args) => {
  const text = execFileSync("curl", ["-s", "--max-time", "5", "-w", "\n%{http_code} %{content_type}", ...args], {
    encoding: "utf8",
  });
  const cut = text.lastIndexOf("\n");
  const [status, contentType] = text.slice(cut + 1).split(" ");
  let body = null;
  try {
    body = JSON.parse(text.slice(0, cut));
  } catch {}
  return {
    status: Number(status),
    content_type: contentType,
    json: body !== null,
    quote_bytes: body?.quote ? body.quote.length / 2 : 0,
    report_data_in_quote: body?.quote ? reportDataOf(body.quote) : null,
  };
};
out.curlTdxQuote = curl([
  "--unix-socket",
  tappdSock,
  "-d",
  '{"report_data":"0x1234deadbeef","hash_algorithm":"raw"}',
  "http://localhost/prpc/Tappd.TdxQuote?json",
]);
out.curlGetQuote = curl([
  "--unix-socket",
  dstackSock,
  "http://localhost/GetQuote?report_data=0x1234deadbeef",
]);

process.stdout.write("BERTH-SDK " + JSON.stringify(out) + "\n");
