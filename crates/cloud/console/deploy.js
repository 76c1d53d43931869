// The deploy form (Phala Cloud's labels) and the parts the Update secrets
// form reuses: Encrypted Secrets (rows or .env text) and the Private
// Container Registry provider. Everything is checked here before any
// request, with the rules the API tells (GET /berth/rules); then
// provision -> seal in this browser -> commit.

import { call, ApiError } from './api.js';
import { parseDotenv } from './dotenv.js';
import { sealEnv, cannotSeal } from './seal.js';
import { h, field, secretInput, textInput, setError, replace, uid } from './ui.js';

const utf8Len = (s) => new TextEncoder().encode(s).length;

/** Problems of an env (names, duplicates, the guest's limits), as sentences. */
export function checkEnv(vars, rules) {
  const r = rules.env;
  const re = new RegExp(r.key_pattern);
  const errors = [];
  const seen = new Set();
  let total = 0;
  if (vars.length > r.max_vars) errors.push(`${vars.length} variables; at most ${r.max_vars} are allowed`);
  for (const v of vars) {
    if (utf8Len(v.key) > r.max_key_bytes) {
      errors.push(`variable name \`${v.key.slice(0, 40)}…\` is longer than ${r.max_key_bytes} bytes`);
    } else if (!re.test(v.key)) {
      errors.push(`\`${v.key}\` is not a valid variable name (use letters, digits and \`_\`, not starting with a digit)`);
    }
    if (seen.has(v.key)) errors.push(`\`${v.key}\` is given twice`);
    seen.add(v.key);
    const len = utf8Len(v.value);
    if (len > r.max_value_bytes) errors.push(`the value of \`${v.key}\` is ${len} bytes; at most ${r.max_value_bytes} are allowed`);
    total += utf8Len(v.key) + len;
  }
  if (total > r.max_total_bytes) errors.push(`the variables take ${total} bytes; at most ${r.max_total_bytes} are allowed`);
  return errors;
}

/**
 * An ECR registry host and region: null when they agree, else the
 * sentence (the rule of registry::credentials, told by GET /berth/rules).
 */
export function checkEcr(registry, region, rules) {
  let host = registry.trim().toLowerCase();
  if (host.startsWith('https://')) host = host.slice(8);
  if (host.endsWith('/')) host = host.slice(0, -1);
  const m = new RegExp(rules.registry.ecr_registry_pattern).exec(host);
  if (!m) return 'not an ECR registry host; expected ACCOUNT.dkr.ecr.REGION.amazonaws.com with a 12-digit ACCOUNT';
  if (m[2] !== region.trim()) return `the region in this registry (${m[2]}) does not match AWS Region; an ECR registry must be accessed in its own region`;
  return null;
}

function renderDotenv(vars) {
  const esc = (v) => v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n').replace(/\r/g, '\\r').replace(/\t/g, '\\t');
  return vars.map((v) => `${v.key}="${esc(v.value)}"`).join('\n') + (vars.length ? '\n' : '');
}

/** Encrypted Secrets: rows of KEY / value, or a pasted `.env` (Text). */
export function secretsEditor() {
  const rows = h('div', { class: 'rows' });
  const text = h('textarea', { rows: 8, spellcheck: 'false', autocomplete: 'off', class: 'mono', placeholder: 'KEY=value\n# comments, export, "quoted\\nvalues"' });
  const textField = field('.env text', text, 'The same dialect as `berth seal`: quotes, comments, export, multi-line values; no $ expansion.');
  textField.wrap.hidden = true;
  const error = h('p', { class: 'error', role: 'alert' });
  let mode = 'rows';

  function addRow(key = '', value = '') {
    const k = h('input', { type: 'text', autocomplete: 'off', spellcheck: 'false', value: key, class: 'mono' });
    const kf = field('Key', k);
    const vf = secretInput('Value');
    vf.input.value = value;
    const row = h('div', { class: 'row' }, kf.wrap, vf.wrap);
    const remove = h('button', { type: 'button', class: 'link', text: 'Remove', onclick: () => row.remove() });
    row.append(remove);
    rows.append(row);
    return { k, v: vf.input };
  }

  function rowVars() {
    return [...rows.querySelectorAll('.row')]
      .map((r) => {
        const [k, v] = r.querySelectorAll('input');
        return { key: k.value.trim(), value: v.value };
      })
      .filter((x) => x.key || x.value);
  }

  const modeRows = h('input', { type: 'radio', name: uid('mode'), checked: true });
  const modeText = h('input', { type: 'radio', name: modeRows.name });
  const switchTo = (m) => {
    if (m === mode) return;
    if (m === 'text') {
      text.value = renderDotenv(rowVars());
      rows.replaceChildren();
    } else {
      let parsed;
      try {
        parsed = parseDotenv(text.value);
      } catch (e) {
        error.textContent = e.message;
        modeText.checked = true;
        return;
      }
      rows.replaceChildren();
      for (const v of parsed) addRow(v.key, v.value);
      if (!parsed.length) addRow();
      text.value = '';
    }
    error.textContent = '';
    mode = m;
    rows.hidden = addBtn.hidden = m !== 'rows';
    textField.wrap.hidden = m !== 'text';
  };
  modeRows.addEventListener('change', () => switchTo('rows'));
  modeText.addEventListener('change', () => switchTo('text'));
  const addBtn = h('button', { type: 'button', text: 'Add variable', onclick: () => addRow() });
  addRow();

  const el = h(
    'fieldset',
    { class: 'secrets' },
    h('legend', { text: 'Encrypted Secrets' }),
    h('p', { class: 'hint', text: 'Encrypted in this browser before they are sent; only the CVM can read them.' }),
    h('div', { class: 'modes', role: 'radiogroup', 'aria-label': 'Secrets input mode' },
      h('label', {}, modeRows, ' Rows'), h('label', {}, modeText, ' Text')),
    rows,
    addBtn,
    textField.wrap,
    error,
  );
  return {
    el,
    /** The variables, or throws Error(sentence) when the text does not parse. */
    vars() {
      return mode === 'rows' ? rowVars() : parseDotenv(text.value).map(({ key, value }) => ({ key, value }));
    },
    setError(msg) {
      error.textContent = msg || '';
    },
    clear() {
      for (const r of rows.querySelectorAll('.row')) r.querySelectorAll('input')[1].value = '';
      text.value = '';
    },
  };
}

const PROVIDERS = [
  ['none', 'No private registry'],
  ['dockerhub', 'Docker Hub'],
  ['ghcr', 'GHCR'],
  ['ecr', 'AWS ECR'],
  ['other', 'Other registry'],
];

/** Private Container Registry: the provider and its fields. */
export function registryPicker(rules) {
  const group = uid('provider');
  const radios = {};
  const panels = {};
  const fields = {};
  const d = rules.registry.docker;
  const a = rules.registry.ecr;
  fields.dockerhub = {
    user: textInput('Docker Hub Username'),
    pass: secretInput('Password or Access Token'),
  };
  fields.ghcr = {
    user: textInput('GitHub Username'),
    pass: secretInput('Personal Access Token (PAT)', 'The token needs at least the read:packages scope.'),
  };
  fields.ecr = {
    keyId: textInput('AWS Access Key ID'),
    secret: secretInput('AWS Secret Access Key'),
    region: textInput('AWS Region', { placeholder: 'us-east-1' }),
    registry: textInput('AWS ECR Registry', { placeholder: '123456789012.dkr.ecr.us-east-1.amazonaws.com' }),
    session: secretInput('AWS Session Token (optional)', 'Only for temporary credentials.'),
  };
  fields.other = {
    registry: textInput('Registry', { placeholder: 'registry.example.com:5000', hint: 'host[:port]' }),
    user: textInput('Username'),
    pass: secretInput('Password or Access Token'),
  };
  const radioList = h('div', { class: 'providers', role: 'radiogroup', 'aria-label': 'Private Container Registry' });
  for (const [id, label] of PROVIDERS) {
    radios[id] = h('input', { type: 'radio', name: group, value: id, checked: id === 'none' });
    radioList.append(h('label', { class: 'provider' }, radios[id], ` ${label}`));
  }
  panels.dockerhub = h('div', {}, fields.dockerhub.user.wrap, fields.dockerhub.pass.wrap);
  panels.ghcr = h('div', {}, h('p', { class: 'hint' }, 'Registry: ', h('code', { text: rules.registry.ghcr })),
    fields.ghcr.user.wrap, fields.ghcr.pass.wrap);
  panels.ecr = h('div', {}, ...Object.values(fields.ecr).map((f) => f.wrap));
  panels.other = h('div', {}, ...Object.values(fields.other).map((f) => f.wrap));
  const chosen = () => PROVIDERS.map(([id]) => id).find((id) => radios[id].checked) || 'none';
  // Only the chosen provider's fields are in the page (Docker Hub and Other
  // registry share a label); the others keep their values while detached.
  const panelBox = h('div', { class: 'provider-fields' });
  const show = () => {
    const id = chosen();
    replace(panelBox, panels[id] || null);
  };
  for (const r of Object.values(radios)) r.addEventListener('change', show);
  show();

  const el = h('fieldset', { class: 'registry' }, h('legend', { text: 'Private Container Registry' }), radioList, panelBox);

  const required = (f, what) => {
    if (!f.input.value.trim()) {
      setError(f, `${what} is required`);
      return false;
    }
    return true;
  };

  return {
    el,
    chosen,
    /** The provider's variables and problems: {vars, ok, registry}. */
    collect() {
      for (const group of Object.values(fields)) for (const f of Object.values(group)) setError(f, '');
      const p = chosen();
      const f = fields[p];
      let ok = true;
      const vars = [];
      if (p === 'dockerhub' || p === 'ghcr') {
        ok = required(f.user, f === fields.ghcr ? 'GitHub Username' : 'Docker Hub Username') & ok;
        ok = required(f.pass, f === fields.ghcr ? 'Personal Access Token (PAT)' : 'Password or Access Token') & ok;
        vars.push({ key: d.username, value: f.user.input.value.trim() }, { key: d.password, value: f.pass.input.value });
        if (p === 'ghcr') vars.push({ key: d.registry, value: rules.registry.ghcr });
        return { vars, ok: !!ok, registry: p === 'ghcr' ? rules.registry.ghcr : rules.registry.docker_hub };
      }
      if (p === 'other') {
        ok = required(f.registry, 'Registry') & ok;
        ok = required(f.user, 'Username') & ok;
        ok = required(f.pass, 'Password or Access Token') & ok;
        const host = f.registry.input.value.trim().replace(/^https?:\/\//, '').replace(/\/.*$/, '').toLowerCase();
        if (host && !/^([a-z0-9]([a-z0-9-]*[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[0-9]+)?$|^\[[0-9a-f:.]+\](:[0-9]+)?$/.test(host)) {
          setError(f.registry, 'not a registry host; use host or host:port, e.g. registry.example.com:5000');
          ok = false;
        }
        vars.push({ key: d.username, value: f.user.input.value.trim() }, { key: d.password, value: f.pass.input.value },
          { key: d.registry, value: host });
        return { vars, ok: !!ok, registry: host };
      }
      if (p === 'ecr') {
        ok = required(f.keyId, 'AWS Access Key ID') & ok;
        ok = required(f.secret, 'AWS Secret Access Key') & ok;
        ok = required(f.region, 'AWS Region') & ok;
        ok = required(f.registry, 'AWS ECR Registry') & ok;
        if (f.registry.input.value.trim() && f.region.input.value.trim()) {
          const why = checkEcr(f.registry.input.value, f.region.input.value, rules);
          if (why) {
            setError(f.registry, why);
            ok = false;
          }
        }
        const host = f.registry.input.value.trim().toLowerCase().replace(/^https:\/\//, '').replace(/\/$/, '');
        vars.push(
          { key: a.access_key_id, value: f.keyId.input.value.trim() },
          { key: a.secret_access_key, value: f.secret.input.value },
          { key: a.region, value: f.region.input.value.trim() },
          { key: a.registry, value: host },
        );
        if (f.session.input.value) vars.push({ key: a.session_token, value: f.session.input.value });
        return { vars, ok: !!ok, registry: host };
      }
      return { vars, ok: true, registry: null };
    },
    clear() {
      for (const group of Object.values(fields)) for (const f of Object.values(group)) if (f.input.type === 'password') f.input.value = '';
    },
  };
}

/** Secrets merged with the provider's variables: a clash is an error. */
export function mergeEnv(secrets, provider) {
  const providerKeys = new Set(provider.map((v) => v.key));
  const clash = secrets.filter((v) => providerKeys.has(v.key)).map((v) => v.key);
  if (clash.length) {
    throw new Error(`${clash.join(', ')} ${clash.length > 1 ? 'are' : 'is'} set by the registry provider's fields; remove ${clash.length > 1 ? 'them' : 'it'} from Encrypted Secrets`);
  }
  return [...secrets, ...provider];
}

/** Registries the env's logins cover (the variables registry::credentials reads). */
function coveredRegistries(vars, rules) {
  const get = (k) => (vars.find((v) => v.key === k) || {}).value;
  const d = rules.registry.docker;
  const out = [];
  if (get(d.username)) out.push((get(d.registry) || rules.registry.docker_hub).toLowerCase());
  if (get(rules.registry.ecr.registry)) out.push(get(rules.registry.ecr.registry).toLowerCase());
  return out;
}

/** Warnings about images the credentials do not cover (names the images). */
export function imageWarnings(images, vars, rules) {
  const covered = coveredRegistries(vars, rules);
  if (!covered.length || !images.length) return [];
  const on = (i) => covered.includes(i.registry.toLowerCase());
  if (!images.some(on)) {
    return [`No image of the compose file is on ${covered.join(' or ')}: ${images.map((i) => i.image).join(', ')} would be pulled without these credentials.`];
  }
  return images.filter((i) => !on(i)).map((i) => `${i.image} is on ${i.registry}, which no credentials cover: it will be pulled anonymously.`);
}

/** The deploy form. `done(cvm)` opens the new CVM's page. */
export function deployForm(rules, done) {
  const name = textInput('Name', { hint: `Use ${rules.name.rule}.` });
  const compose = field('docker-compose.yml', h('textarea', { rows: 12, spellcheck: 'false', class: 'mono', autocomplete: 'off' }));
  const file = h('input', { type: 'file', accept: '.yml,.yaml,text/yaml' });
  const fileField = field('Load docker-compose.yml from a file', file);
  file.addEventListener('change', async () => {
    const f = file.files && file.files[0];
    if (f) compose.input.value = await f.text();
  });
  const secrets = secretsEditor();
  const registry = registryPicker(rules);
  const warnings = h('div', { class: 'warnings', role: 'status' });
  const status = h('p', { class: 'status', role: 'status' });
  const error = h('p', { class: 'error', role: 'alert' });
  const submit = h('button', { type: 'submit', class: 'primary', text: 'Deploy' });
  const blocked = cannotSeal();
  let acknowledged = '';

  const form = h('form', { class: 'deploy', novalidate: true, autocomplete: 'off' },
    h('h2', { text: 'Deploy a new CVM' }),
    blocked ? h('p', { class: 'error banner', role: 'alert', text: blocked }) : null,
    name.wrap, compose.wrap, fileField.wrap, secrets.el,
    h('details', { class: 'advanced' }, h('summary', { text: 'Advanced Features' }), registry.el),
    warnings, error, status, submit);

  function localChecks() {
    let ok = true;
    setError(name, '');
    setError(compose, '');
    secrets.setError('');
    const n = name.input.value.trim();
    if (!n) {
      setError(name, 'Name is required');
      ok = false;
    } else if (n.length < rules.name.min_len || n.length > rules.name.max_len || !new RegExp(rules.name.pattern).test(n)) {
      setError(name, `use ${rules.name.rule}`);
      ok = false;
    }
    if (!compose.input.value.trim()) {
      setError(compose, 'docker-compose.yml is required');
      ok = false;
    }
    const prov = registry.collect();
    if (!prov.ok) {
      form.querySelector('details.advanced').open = true;
      ok = false;
    }
    let env = [];
    try {
      env = mergeEnv(secrets.vars(), prov.vars);
      const problems = checkEnv(env, rules);
      if (problems.length) {
        secrets.setError(problems.join('; '));
        ok = false;
      }
    } catch (e) {
      secrets.setError(e.message);
      ok = false;
    }
    return ok ? { name: n, env } : null;
  }

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (submit.disabled) return;
    error.textContent = '';
    status.textContent = '';
    if (blocked) {
      error.textContent = blocked;
      return;
    }
    const checked = localChecks();
    if (!checked) {
      error.textContent = 'Fix the fields marked above; nothing was sent.';
      return;
    }
    submit.disabled = true;
    let step = 'checking the compose file';
    try {
      const yaml = compose.input.value;
      let images;
      try {
        images = (await call('POST', '/berth/compose-images', { docker_compose_file: yaml })).images;
      } catch (e) {
        if (e instanceof ApiError && e.status === 422) {
          setError(compose, e.message);
          throw new Error('the compose file was refused (see docker-compose.yml)');
        }
        throw e;
      }
      const warned = imageWarnings(images, checked.env, rules);
      replace(warnings, warned.map((w) => h('p', { class: 'warning', text: w })));
      const signature = JSON.stringify(warned);
      if (warned.length && acknowledged !== signature) {
        acknowledged = signature;
        warnings.append(h('p', { class: 'warning', text: 'Press Deploy again to deploy anyway.' }));
        return;
      }
      step = 'provisioning';
      status.textContent = 'Provisioning…';
      let prov;
      try {
        prov = await call('POST', '/cvms/provision', {
          name: checked.name,
          compose_file: {
            docker_compose_file: yaml,
            allowed_envs: checked.env.map((v) => v.key),
            name: '',
            public_logs: true,
            public_sysinfo: true,
          },
          listed: false,
          instance_type: 'tdx.small',
        });
      } catch (e) {
        if (e instanceof ApiError) {
          if (e.status === 409 || /^name /.test(e.message)) setError(name, e.message);
          else if (/^allowed_envs/.test(e.message)) secrets.setError(e.message.replace(/^allowed_envs: /, ''));
          else if (e.status === 422) setError(compose, e.message);
        }
        throw e;
      }
      step = 'sealing the secrets in this browser';
      status.textContent = 'Encrypting the secrets in this browser…';
      const sealed = checked.env.length ? await sealEnv(prov.app_env_encrypt_pubkey, checked.env) : undefined;
      step = 'committing';
      status.textContent = 'Creating the CVM…';
      const body = { app_id: prov.app_id, compose_hash: prov.compose_hash };
      if (sealed) body.encrypted_env = sealed;
      const cvm = await call('POST', '/cvms', body);
      secrets.clear();
      registry.clear();
      status.textContent = '';
      done(cvm);
    } catch (e) {
      status.textContent = '';
      error.textContent = `Deploy failed while ${step}: ${e.message}`;
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}
