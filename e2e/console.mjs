// The web console in a real headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core; no browser is downloaded), against a real
// `berth up` that crates/cli/tests/console.rs started with real registries.
//
//   node console.mjs CONFIG.json
//
// CONFIG (written by the Rust test): the console URL, the admin key, the
// registries and passwords, where to write screenshots and results. Every
// request the browser sends is recorded (method, URL, body) and written to
// `requests.json` in the artifacts folder; every console message of type
// error and every uncaught page error fails the run. Prints one line per
// check and ends with `N passed, N failed`; exits 1 when any failed.

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const artifacts = cfg.artifacts;
fs.mkdirSync(artifacts, { recursive: true });

let passed = 0;
let failed = 0;
const results = {};

async function check(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    passed += 1;
    console.log(`ok   ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } catch (e) {
    failed += 1;
    console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
    await shot(`failed-${name.replace(/[^a-z0-9]+/gi, '-')}`).catch(() => {});
  }
}

function assert(cond, what) {
  if (!cond) throw new Error(what);
}

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: cfg.chromium || '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1200, height: 900 },
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    // A name that is not loopback, for the insecure-context check; it
    // resolves to 127.0.0.1, so only loopback is contacted.
    '--host-resolver-rules=MAP berth-console.test 127.0.0.1',
    // The HTTPS `berth up`'s test certificate, trusted by its key's hash.
    ...(cfg.https ? [`--ignore-certificate-errors-spki-list=${cfg.https.spki}`] : []),
  ],
});
const page = context.pages()[0] || (await context.newPage());
page.setDefaultTimeout(20000);
const dialogs = [];
page.on('dialog', (d) => {
  dialogs.push(d.message());
  d.accept();
});

async function shot(name) {
  await page.screenshot({ path: path.join(artifacts, `${name}.png`), fullPage: true });
}

// Every request the browser sends, with its body.
const requests = [];
page.on('request', (r) => {
  requests.push({ method: r.method(), url: r.url(), body: r.postData() || '' });
});
// Console errors. A 4xx the scenario provoked on purpose (a wrong key)
// shows as "Failed to load resource"; such URLs are listed in `expected`.
const consoleErrors = [];
const expected = new Set();
page.on('console', (m) => {
  if (m.type() !== 'error') return;
  const url = (m.location() && m.location().url) || '';
  if (/Failed to load resource/.test(m.text()) && [...expected].some((e) => url.includes(e))) return;
  consoleErrors.push(`${m.text()} @ ${url}`);
});
page.on('pageerror', (e) => consoleErrors.push(`uncaught: ${e.message}`));

const apiRequestsSince = (n) => requests.slice(n).filter((r) => new URL(r.url).pathname.startsWith('/api/'));

const byLabel = (label) => page.getByLabel(label, { exact: true });

async function openDeploy() {
  await page.getByRole('link', { name: 'Deploy', exact: true }).click();
  await page.getByRole('heading', { name: 'Deploy a new CVM' }).waitFor();
}

async function openAdvanced() {
  const details = page.locator('details.advanced').first();
  if (!(await details.evaluate((d) => d.open))) await page.getByText('Advanced Features', { exact: true }).first().click();
}

async function fillSecretRow(i, key, value) {
  const keys = byLabel('Key');
  while ((await keys.count()) <= i) await page.getByRole('button', { name: 'Add variable' }).first().click();
  await keys.nth(i).fill(key);
  await byLabel('Value').nth(i).fill(value);
}

/** Waits until the CVM page's status is `status` (the page updates itself). */
async function waitStatus(status, secs = 150) {
  await page.locator('dd.cvm-status', { hasText: new RegExp(`^${status}$`) }).waitFor({ timeout: secs * 1000 });
}

async function waitContainerLog(text, secs = 60) {
  await page.locator('.container-logs pre', { hasText: text }).first().waitFor({ timeout: secs * 1000 });
}

const base = cfg.url.replace(/\/$/, '');

await check('the page is served with its security headers', async () => {
  const resp = await page.goto(`${base}/`);
  const hd = resp.headers();
  const csp = hd['content-security-policy'] || '';
  assert(/script-src 'self'/.test(csp) && !/unsafe-inline/.test(csp), `CSP: ${csp}`);
  assert(/connect-src 'self'/.test(csp) && /style-src 'self'/.test(csp), `CSP: ${csp}`);
  assert(/frame-ancestors 'none'/.test(csp), `CSP: ${csp}`);
  assert(hd['x-content-type-options'] === 'nosniff', 'nosniff');
  assert(hd['referrer-policy'] === 'no-referrer', 'referrer-policy');
  // Nothing but the sign-in form before sign-in.
  await byLabel('API key').waitFor();
  assert(!(await page.getByRole('link', { name: 'Deploy' }).isVisible()), 'Deploy link shown before sign-in');
});

await check('a wrong API key is refused and says so', async () => {
  expected.add('/api/v1/auth/me');
  await byLabel('API key').fill('berth_not_a_key');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByText('Wrong API key').waitFor();
  expected.delete('/api/v1/auth/me');
});

await check('sign in keeps the key in this tab only', async () => {
  await byLabel('API key').fill(cfg.key);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('table', { name: 'CVMs' }).waitFor();
  const where = await page.evaluate(() => ({
    session: Object.values(sessionStorage).length,
    local: localStorage.length,
    cookie: document.cookie,
  }));
  assert(where.session === 1 && where.local === 0 && where.cookie === '', JSON.stringify(where));
  const sent = requests.filter((r) => r.url.endsWith('/api/v1/auth/me')).length;
  assert(sent >= 2, 'no /auth/me');
});

await check('the page seals what berth unseal opens', async () => {
  results.sealed = await page.evaluate(
    async ([pub, vars]) => (await import('/console/seal.js')).sealEnv(pub, vars),
    [cfg.unseal_pubkey, cfg.unseal_vars],
  );
  assert(/^[0-9a-f]+$/.test(results.sealed) && results.sealed.length > 120, 'not hex');
});

await check('the page applies the rules the API tells', async () => {
  const verdicts = await page.evaluate(async ([key, ecrCorpus, keyCorpus, dotenvCorpus]) => {
    const rules = await (await fetch('/api/v1/berth/rules', { headers: { 'X-API-Key': key } })).json();
    const m = await import('/console/deploy.js');
    const d = await import('/console/dotenv.js');
    const parse = (text) => {
      try {
        return d.parseDotenv(text).map((v) => [v.key, v.value]);
      } catch {
        return null;
      }
    };
    return {
      rules,
      ecr: ecrCorpus.map(([host, region]) => m.checkEcr(host, region, rules) === null),
      keys: keyCorpus.map((k) => m.checkEnv([{ key: k, value: 'v' }], rules).length === 0),
      dotenv: dotenvCorpus.map(parse),
    };
  }, [cfg.key, cfg.ecr_corpus, cfg.key_corpus, cfg.dotenv_corpus]);
  Object.assign(results, verdicts);
});

await check('a missing required field is refused before any request', async () => {
  await openDeploy();
  const n = requests.length;
  await byLabel('docker-compose.yml').fill(cfg.ghcr.compose);
  await page.getByRole('button', { name: 'Deploy', exact: true }).click();
  await page.getByText('Name is required').waitFor();
  await page.getByText('nothing was sent').waitFor();
  assert(apiRequestsSince(n).length === 0, `sent: ${JSON.stringify(apiRequestsSince(n))}`);
});

await check('an ECR registry in another region is refused before any request', async () => {
  const n = requests.length;
  await byLabel('Name').fill('ecr-mismatch');
  await openAdvanced();
  await page.getByRole('radio', { name: 'AWS ECR' }).check();
  await byLabel('AWS Access Key ID').fill('AKIAEXAMPLE');
  await byLabel('AWS Secret Access Key').fill(cfg.ecr.secret);
  await byLabel('AWS Region').fill('us-west-2');
  await byLabel('AWS ECR Registry').fill(cfg.ecr.host);
  await page.getByRole('button', { name: 'Deploy', exact: true }).click();
  await page.getByText('does not match AWS Region').waitFor();
  assert(apiRequestsSince(n).length === 0, `sent: ${JSON.stringify(apiRequestsSince(n))}`);
  // A provider field and a secret row with the same name: an error, not an override.
  await byLabel('AWS Region').fill(cfg.ecr.region);
  await fillSecretRow(0, 'DSTACK_AWS_REGION', 'eu-west-1');
  await page.getByRole('button', { name: 'Deploy', exact: true }).click();
  await page.getByText('set by the registry provider').waitFor();
  assert(apiRequestsSince(n).length === 0, `sent: ${JSON.stringify(apiRequestsSince(n))}`);
});

await check('a compose file the policy refuses is named next to its field', async () => {
  await page.reload();
  await page.getByRole('heading', { name: 'Deploy a new CVM' }).waitFor();
  await byLabel('Name').fill('no-image-app');
  await byLabel('docker-compose.yml').fill('services:\n  web:\n    command: ["true"]\n');
  const n = requests.length;
  expected.add('/api/v1/berth/compose-images');
  await page.getByRole('button', { name: 'Deploy', exact: true }).click();
  const slot = page.locator('.field', { has: byLabel('docker-compose.yml') }).locator('p.error');
  await slot.filter({ hasText: /image/ }).waitFor();
  expected.delete('/api/v1/berth/compose-images');
  const sent = apiRequestsSince(n).map((r) => new URL(r.url).pathname);
  assert(!sent.includes('/api/v1/cvms/provision'), `provisioned: ${sent}`);
  // The form stays filled in.
  assert((await byLabel('Name').inputValue()) === 'no-image-app', 'the name was cleared');
});

await check('images no credentials cover are named before provisioning', async () => {
  await page.reload();
  await page.getByRole('heading', { name: 'Deploy a new CVM' }).waitFor();
  await byLabel('Name').fill('warn-app');
  await byLabel('docker-compose.yml').fill('services:\n  web:\n    image: busybox:1.36\n');
  await openAdvanced();
  await page.getByRole('radio', { name: 'GHCR' }).check();
  await byLabel('GitHub Username').fill('octocat');
  await byLabel('Personal Access Token (PAT)').fill(cfg.ghcr.password);
  const n = requests.length;
  await page.getByRole('button', { name: 'Deploy', exact: true }).click();
  await page.getByText('No image of the compose file is on ghcr.io: busybox:1.36').waitFor();
  const sent = apiRequestsSince(n).map((r) => new URL(r.url).pathname);
  assert(!sent.includes('/api/v1/cvms/provision'), `provisioned: ${sent}`);
});

await check('deploy with GHCR: running, and the app prints its secret', async () => {
  await page.reload();
  await page.getByRole('heading', { name: 'Deploy a new CVM' }).waitFor();
  await byLabel('Name').fill(cfg.ghcr.name);
  await byLabel('docker-compose.yml').fill(cfg.ghcr.compose);
  await fillSecretRow(0, 'GREETING', cfg.ghcr.greeting);
  await openAdvanced();
  await page.getByRole('radio', { name: 'GHCR' }).check();
  await page.getByText('read:packages').first().waitFor();
  await byLabel('GitHub Username').fill(cfg.ghcr.user);
  await byLabel('Personal Access Token (PAT)').fill(cfg.ghcr.password);
  await shot('deploy-form');
  const n = requests.length;
  await page.getByRole('button', { name: 'Deploy', exact: true }).click();
  await page.waitForURL(/#\/cvm\//);
  const sent = apiRequestsSince(n).map((r) => `${r.method} ${new URL(r.url).pathname}`);
  const order = ['POST /api/v1/cvms/provision', 'POST /api/v1/cvms'];
  assert(order.every((s) => sent.includes(s)) && sent.indexOf(order[0]) < sent.indexOf(order[1]), sent.join(', '));
  const prov = apiRequestsSince(n).find((r) => r.url.endsWith('/cvms/provision'));
  const allowed = JSON.parse(prov.body).compose_file.allowed_envs;
  assert(JSON.stringify(allowed) === JSON.stringify(['GREETING', 'DSTACK_DOCKER_USERNAME', 'DSTACK_DOCKER_PASSWORD', 'DSTACK_DOCKER_REGISTRY']), `allowed_envs ${allowed}`);
  const commit = apiRequestsSince(n).find((r) => r.method === 'POST' && r.url.endsWith('/api/v1/cvms'));
  assert(/^[0-9a-f]+$/.test(JSON.parse(commit.body).encrypted_env), 'commit without ciphertext');
  await waitStatus('running');
  await page.locator('pre.serial', { hasText: 'BOOT OK' }).waitFor({ timeout: 30000 });
  await waitContainerLog(cfg.ghcr.greeting);
  // The service's container state is the engine's, not a guess.
  await page.locator('.container-state', { hasText: /^running \(Up / }).waitFor({ timeout: 30000 });
  // Each service's pinned digest, or that it is not pinned (this compose
  // file names a tag: what the compose hash measures is the tag).
  await page.locator('.image-digest', { hasText: 'not pinned (tag only)' }).waitFor({ timeout: 10000 });
  results.ghcr_url = page.url();
  await shot('cvm-page-running');
});

await check('the password fields were cleared after the deploy', async () => {
  await openDeploy();
  const pats = await page.locator('input[type=password]').evaluateAll((els) => els.map((e) => e.value));
  assert(pats.every((v) => v === ''), 'a password field kept its value');
});

await check('deploy with AWS ECR (secrets pasted as .env text): running', async () => {
  await page.reload();
  await page.getByRole('heading', { name: 'Deploy a new CVM' }).waitFor();
  await byLabel('Name').fill(cfg.ecr.name);
  await byLabel('docker-compose.yml').fill(cfg.ecr.compose);
  await page.getByRole('radio', { name: 'Text' }).check();
  await byLabel('.env text').fill(`# pasted\nexport MESSAGE="${cfg.ecr.message}"\nOTHER='a $literal'\n`);
  await openAdvanced();
  await page.getByRole('radio', { name: 'AWS ECR' }).check();
  await byLabel('AWS Access Key ID').fill('AKIAEXAMPLE');
  await byLabel('AWS Secret Access Key').fill(cfg.ecr.secret);
  await byLabel('AWS Region').fill(cfg.ecr.region);
  await byLabel('AWS ECR Registry').fill(cfg.ecr.host);
  await page.getByRole('button', { name: 'Deploy', exact: true }).click();
  await page.waitForURL(/#\/cvm\//);
  await waitStatus('running');
  await waitContainerLog(cfg.ecr.message);
});

await check('deploy with Other registry (host:port): running', async () => {
  await openDeploy();
  await byLabel('Name').fill(cfg.other.name);
  await byLabel('docker-compose.yml').fill(cfg.other.compose);
  await fillSecretRow(0, 'GREETING', cfg.other.greeting);
  await openAdvanced();
  await page.getByRole('radio', { name: 'Other registry' }).check();
  await byLabel('Registry').fill(cfg.other.registry);
  await byLabel('Username').fill(cfg.ghcr.user);
  await byLabel('Password or Access Token').fill(cfg.ghcr.password);
  await page.getByRole('button', { name: 'Deploy', exact: true }).click();
  await page.waitForURL(/#\/cvm\//);
  await waitStatus('running');
  await waitContainerLog(cfg.other.greeting);
});

await check('deploy with Docker Hub: running', async () => {
  await openDeploy();
  await byLabel('Name').fill(cfg.hub.name);
  await byLabel('docker-compose.yml').fill(cfg.hub.compose);
  await fillSecretRow(0, 'GREETING', cfg.hub.greeting);
  await openAdvanced();
  await page.getByRole('radio', { name: 'Docker Hub' }).check();
  await byLabel('Docker Hub Username').fill(cfg.ghcr.user);
  await byLabel('Password or Access Token').fill(cfg.ghcr.password);
  const n = requests.length;
  await page.getByRole('button', { name: 'Deploy', exact: true }).click();
  await page.waitForURL(/#\/cvm\//);
  const prov = apiRequestsSince(n).find((r) => r.url.endsWith('/cvms/provision'));
  const allowed = JSON.parse(prov.body).compose_file.allowed_envs;
  // Docker Hub is the default registry: no DSTACK_DOCKER_REGISTRY.
  assert(JSON.stringify(allowed) === JSON.stringify(['GREETING', 'DSTACK_DOCKER_USERNAME', 'DSTACK_DOCKER_PASSWORD']), `allowed_envs ${allowed}`);
  await waitStatus('running');
  await waitContainerLog(cfg.hub.greeting);
});

await check('Stop and Start from the CVM page', async () => {
  await page.getByRole('button', { name: 'Stop', exact: true }).click();
  await waitStatus('stopped', 60);
  await page.locator('.container-state', { hasText: /^exited/ }).waitFor({ timeout: 30000 });
  await page.getByRole('button', { name: 'Start', exact: true }).click();
  await waitStatus('running');
});

await check('a wrong password: boot_failed, credentials_rejected, and what to check', async () => {
  await openDeploy();
  await byLabel('Name').fill(cfg.wrong.name);
  await byLabel('docker-compose.yml').fill(cfg.ghcr.compose);
  await fillSecretRow(0, 'GREETING', 'never-shown');
  await openAdvanced();
  await page.getByRole('radio', { name: 'GHCR' }).check();
  await byLabel('GitHub Username').fill(cfg.ghcr.user);
  await byLabel('Personal Access Token (PAT)').fill(cfg.wrong.password);
  await page.getByRole('button', { name: 'Deploy', exact: true }).click();
  await page.waitForURL(/#\/cvm\//);
  await waitStatus('boot_failed');
  const failure = page.getByRole('region', { name: 'Boot failure' });
  await failure.locator('code.category', { hasText: 'credentials_rejected' }).waitFor();
  const steps = failure.locator('ol.steps');
  await steps.getByText('valid and not expired').waitFor();
  await steps.getByText('read:packages').waitFor();
  await failure.locator('pre.failure-lines', { hasText: 'BOOT FAILED' }).waitFor({ timeout: 30000 });
  await shot('cvm-page-boot-failed');
});

await check('Update secrets reaches the app; the serial log follows the restart', async () => {
  await page.goto(results.ghcr_url);
  await waitStatus('running');
  await page.getByRole('button', { name: 'Update secrets' }).click();
  await fillSecretRow(0, 'GREETING', cfg.ghcr.greeting2);
  await page.getByRole('radio', { name: 'GHCR' }).check();
  await byLabel('GitHub Username').fill(cfg.ghcr.user);
  await byLabel('Personal Access Token (PAT)').fill(cfg.ghcr.password);
  const serialBefore = await page.locator('pre.serial').textContent();
  const n = requests.length;
  await page.locator('form.update-form').getByRole('button', { name: 'Update secrets' }).click();
  await page.getByText('Secrets updated').waitFor();
  // The restart's boot appears in the serial log without a reload.
  await page.waitForFunction(
    (before) => {
      const t = document.querySelector('pre.serial').textContent;
      return t !== before && /BOOT OK[^\n]*\n?$/.test(t);
    },
    serialBefore,
    { timeout: 150000 },
  );
  const patch = apiRequestsSince(n).find((r) => r.method === 'PATCH');
  assert(patch && /\/envs$/.test(patch.url), 'no PATCH /envs');
  await waitContainerLog(cfg.ghcr.greeting2, 150);
  await waitStatus('running');
});

await check('the list shows every CVM with its status', async () => {
  await page.getByRole('link', { name: 'CVMs', exact: true }).click();
  const table = page.getByRole('table', { name: 'CVMs' });
  for (const name of [cfg.ghcr.name, cfg.ecr.name, cfg.other.name, cfg.wrong.name]) await table.getByRole('link', { name }).waitFor();
  await table.locator('tr', { hasText: cfg.wrong.name }).getByText('boot_failed (credentials_rejected)').waitFor();
  await table.locator('tr', { hasText: cfg.ecr.name }).getByText('running').waitFor();
  await shot('cvm-list');
});

await check('Delete asks first, then the CVM is gone from the list', async () => {
  const table = page.getByRole('table', { name: 'CVMs' });
  await table.getByRole('link', { name: cfg.wrong.name }).click();
  await waitStatus('boot_failed');
  await page.getByRole('button', { name: 'Delete' }).click();
  await page.waitForURL(/#\/$/);
  await table.getByRole('link', { name: cfg.ghcr.name }).waitFor();
  await table.getByRole('link', { name: cfg.wrong.name }).waitFor({ state: 'detached' });
  assert(dialogs.some((d) => /Delete this CVM/.test(d)), 'no confirmation');
});

await check('Sign out forgets the key', async () => {
  await page.getByRole('button', { name: 'Sign out' }).click();
  await byLabel('API key').waitFor();
  const left = await page.evaluate(() => sessionStorage.length);
  assert(left === 0, 'key kept');
});

await check('over plain HTTP on a non-loopback name the page says why it cannot seal', async () => {
  const port = new URL(base).port;
  await page.goto(`http://berth-console.test:${port}/#/deploy`);
  assert(!(await page.evaluate(() => window.isSecureContext)), 'a secure context');
  await byLabel('API key').fill(cfg.key);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Deploy a new CVM' }).waitFor();
  await page.getByText('cannot encrypt secrets here').first().waitFor();
  await byLabel('Name').fill('insecure-app');
  await byLabel('docker-compose.yml').fill(cfg.ghcr.compose);
  await fillSecretRow(0, 'GREETING', 'x');
  const n = requests.length;
  await page.getByRole('button', { name: 'Deploy', exact: true }).click();
  await page.locator('p[role=alert]', { hasText: 'secure context' }).last().waitFor();
  assert(apiRequestsSince(n).length === 0, `sent: ${JSON.stringify(apiRequestsSince(n))}`);
  await page.getByRole('button', { name: 'Sign out' }).click();
  await byLabel('API key').waitFor();
});

await check('over HTTPS (berth up --tls-cert) on a non-loopback name the page seals', async () => {
  await page.goto(`${cfg.https.url}/#/deploy`);
  assert(await page.evaluate(() => window.isSecureContext), 'not a secure context');
  await byLabel('API key').fill(cfg.key);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Deploy a new CVM' }).waitFor();
  assert((await page.getByText('cannot encrypt secrets here').count()) === 0, 'says it cannot seal');
  results.sealed_https = await page.evaluate(
    async ([pub, vars]) => (await import('/console/seal.js')).sealEnv(pub, vars),
    [cfg.unseal_pubkey, cfg.unseal_vars],
  );
  assert(/^[0-9a-f]+$/.test(results.sealed_https), 'not hex');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await byLabel('API key').waitFor();
});

await check('no request carries a password or a secret value', async () => {
  const secrets = cfg.secrets;
  const leaks = [];
  for (const r of requests) {
    for (const s of secrets) {
      const text = `${r.url}\n${r.body}`;
      if (text.includes(s) || text.includes(encodeURIComponent(s))) leaks.push(`${r.method} ${new URL(r.url).pathname}`);
    }
  }
  assert(requests.length > 20, `only ${requests.length} requests recorded`);
  assert(leaks.length === 0, `plaintext in: ${leaks.join(', ')}`);
});

await check('the browser console has no errors', async () => {
  assert(consoleErrors.length === 0, consoleErrors.join('\n'));
});

fs.writeFileSync(path.join(artifacts, 'requests.json'), JSON.stringify(requests, null, 1));
fs.writeFileSync(cfg.out, JSON.stringify(results));
await context.close();
fs.rmSync(userDataDir, { recursive: true, force: true });
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
