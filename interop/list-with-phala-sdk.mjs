// The official Phala Cloud SDK (@phala/cloud, as the `phala` CLI bundles
// it) lists CVMs with `getCvmList` (GET /cvms/paginated) at both API
// versions, validating each answer with its own zod schemas. The API and
// key come from PHALA_CLOUD_API_PREFIX and PHALA_CLOUD_API_KEY (never
// argv); argv: PAGE PAGE_SIZE. Prints {"<version>": parsed page, ...}.
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
const sdk = require("@phala/cloud");

const [page, pageSize] = process.argv.slice(2).map(Number);
const out = {};
for (const version of ["2025-10-28", "2026-01-21"]) {
  const client = sdk.createClient({ version });
  out[version] = await sdk.getCvmList(client, { page, page_size: pageSize });
}
process.stdout.write(JSON.stringify(out));
