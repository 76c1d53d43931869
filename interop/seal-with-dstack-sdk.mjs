// Seals the env read as JSON from stdin ([{key, value}, ...]) with the official
// @phala/dstack-sdk `encryptEnvVars`, printing the hex it returns.
// Usage: node seal-with-dstack-sdk.mjs PUBKEY_HEX < vars.json
import { encryptEnvVars } from "@phala/dstack-sdk/encrypt-env-vars";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const vars = JSON.parse(Buffer.concat(chunks).toString("utf8"));
process.stdout.write((await encryptEnvVars(vars, process.argv[2])) + "\n");
