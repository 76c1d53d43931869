// The CVM list and a CVM's page: status (updated by itself), the serial
// log followed live, the containers and their output, Start / Stop /
// Restart / Delete, Update secrets (sealed in this browser), and for a
// boot_failed CVM its category in words with the steps that fit it.

import { call, sameOrigin, LEGACY, ApiError } from './api.js';
import { sealEnv, cannotSeal } from './seal.js';
import { secretsEditor, registryPicker, mergeEnv, checkEnv } from './deploy.js';
import { h, replace, when } from './ui.js';

/** Each failure category in words, and what to check. */
const CATEGORIES = {
  config: ['The deployment is configured wrongly (an image reference, a variable or an option).',
    ['Check the image references in docker-compose.yml.', 'Check the registry provider fields: every required one set, the ECR registry in its own region.']],
  credentials_rejected: ['The registry refused the credentials.',
    ['Check that the credentials are valid and not expired (a revoked or expired token is refused the same way).',
      'Check the username: for GHCR it is your GitHub username, and the registry is ghcr.io.',
      'For GHCR, the Personal Access Token needs at least the read:packages scope.',
      'For AWS ECR, check the access key, the secret key and the session token of temporary credentials.',
      'Update the secrets with the right credentials; the CVM restarts with them.']],
  access_denied: ['The credentials are valid but may not pull this image.',
    ['Check that this account may pull the repository (its permissions or package visibility).',
      'For GHCR, the token needs read:packages and access to the package.',
      'Check that the image path is the one the account can see.']],
  not_found: ['The image, its tag or its repository does not exist.',
    ['Check the image path and tag in docker-compose.yml.', 'Check that the image was pushed to this registry.']],
  rate_limited: ['The registry limits pulls and the limit is reached.',
    ['Wait and restart the CVM.', 'Sign in with credentials (anonymous pulls have lower rate limits).']],
  unreachable: ['The registry could not be reached.',
    ['Check the registry host name.', 'Ask the operator whether this registry is reachable from CVMs.']],
  registry_error: ['The registry answered with an error.', ['Restart the CVM later; check the registry\'s status.']],
  integrity: ['Downloaded content did not match its digest.', ['Restart the CVM; if it persists, push the image again.']],
  runtime: ['The container runtime or the compose tool failed.', ['Check the container logs and docker-compose.yml.']],
};

function statusBadge(cvm) {
  const text = cvm.status === 'boot_failed' && cvm.boot_category ? `boot_failed (${cvm.boot_category})` : cvm.status;
  return h('span', { class: `badge status-${cvm.status}`, text });
}

/** The list of the user's CVMs; refreshes itself until `stop()`. */
export function cvmList(open) {
  const body = h('tbody');
  const note = h('p', { class: 'hint' });
  const el = h('section', { class: 'list' },
    h('h2', { text: 'CVMs' }),
    h('table', { 'aria-label': 'CVMs' },
      h('thead', {}, h('tr', {}, ...['Name', 'Status', 'App ID', 'Created'].map((t) => h('th', { scope: 'col', text: t })))),
      body),
    note);
  let timer = null;
  let stopped = false;
  async function refresh() {
    try {
      const cvms = await call('GET', '/cvms', undefined, { version: LEGACY });
      replace(body, cvms.map((c) => h('tr', { 'data-cvm': c.vm_uuid },
        h('td', {}, h('a', { href: `#/cvm/${c.vm_uuid}`, text: c.name, onclick: (e) => { e.preventDefault(); open(c.vm_uuid); } })),
        h('td', {}, statusBadge(c)),
        h('td', { class: 'mono', text: c.app_id }),
        h('td', { text: when(c.created_at) }))));
      note.textContent = cvms.length ? '' : 'No CVMs yet: deploy one.';
    } catch (e) {
      note.textContent = `Could not list the CVMs: ${e.message}`;
    }
    if (!stopped) timer = setTimeout(refresh, 2000);
  }
  refresh();
  return { el, stop: () => { stopped = true; clearTimeout(timer); } };
}

/** Lines of the serial log that show a failure. */
const FAILURE_LINE = /BOOT FAILED|troubleshooting|error|denied|unauthorized|refused|failed/i;

/** A CVM's page; refreshes itself until `stop()`. */
export function cvmPage(id, rules, gone) {
  const head = h('div', { class: 'cvm-head' });
  const facts = h('dl', { class: 'facts' });
  const failure = h('section', { class: 'failure', hidden: true, 'aria-label': 'Boot failure' });
  const services = h('ul', { class: 'services' });
  const serial = h('pre', { class: 'log serial', 'aria-label': 'Serial log', tabindex: '0' });
  const containerLogs = h('div', { class: 'container-logs' });
  const message = h('p', { class: 'status', role: 'status' });
  const actions = h('div', { class: 'actions' });
  const updateBox = h('div', { class: 'update' });
  const el = h('section', { class: 'cvm' }, head, facts, failure, actions, message,
    h('h3', { text: 'Services' }), services,
    h('h3', { text: 'Serial log' }), serial,
    h('h3', { text: 'Container logs' }), containerLogs,
    updateBox);

  let cvm = null;
  let stopped = false;
  let timer = null;
  let follow = null; // AbortController of the serial stream
  let inflight = false;
  let ticks = 0;
  let forceNext = false;
  // Each service's image as deployed (the compose file the CVM runs):
  // its pinned digest is what the compose hash measures.
  let images = { yaml: null, byService: new Map() };
  let serialText = '';

  function lifecycle(label, path, confirmText) {
    return h('button', {
      type: 'button',
      text: label,
      onclick: async (ev) => {
        if (confirmText && !window.confirm(confirmText)) return;
        ev.target.disabled = true;
        message.textContent = `${label}…`;
        try {
          if (label === 'Delete') {
            await call('DELETE', `/cvms/${cvm.vm_uuid}`);
            gone();
            return;
          }
          await call('POST', `/cvms/${cvm.vm_uuid}/${path}`, label === 'Restart' ? { force: false } : undefined);
          message.textContent = `${label}: done.`;
          kick();
        } catch (e) {
          message.textContent = `${label} failed: ${e.message}`;
        } finally {
          ev.target.disabled = false;
        }
      },
    });
  }
  replace(actions,
    lifecycle('Start', 'start'),
    lifecycle('Stop', 'stop'),
    lifecycle('Restart', 'restart'),
    lifecycle('Delete', null, 'Delete this CVM? Its containers and data are removed.'),
    h('button', { type: 'button', text: 'Update secrets', onclick: () => showUpdate() }));

  function renderSerial() {
    serial.textContent = serialText;
    serial.scrollTop = serial.scrollHeight;
    renderFailure();
  }

  function renderFailure() {
    if (!cvm || cvm.status !== 'boot_failed') {
      failure.hidden = true;
      return;
    }
    const cat = cvm.boot_category || 'unknown';
    const [words, steps] = CATEGORIES[cat] || ['The boot failed.', ['Read the serial log.']];
    const lines = serialText.split('\n').filter((l) => FAILURE_LINE.test(l)).slice(-8);
    replace(failure,
      h('h3', { text: 'Boot failed' }),
      h('p', {}, 'Category: ', h('code', { class: 'category', text: cat }), ` — ${words}`),
      cvm.boot_error ? h('p', { class: 'mono', text: cvm.boot_error }) : null,
      h('h4', { text: 'Troubleshooting' }),
      h('ol', { class: 'steps' }, steps.map((s) => h('li', { text: s }))),
      lines.length ? h('h4', { text: 'Serial log lines that show the failure' }) : null,
      lines.length ? h('pre', { class: 'log failure-lines', text: lines.join('\n') }) : null);
    failure.hidden = false;
  }

  async function followSerial() {
    if (follow) follow.abort();
    const ctl = new AbortController();
    follow = ctl;
    const url = `${sameOrigin(cvm.syslog_endpoint)}&ch=serial&follow`;
    try {
      const resp = await fetch(url, { signal: ctl.signal, cache: 'no-store', credentials: 'omit' });
      if (!resp.ok) throw new Error(`the serial log answered ${resp.status}`);
      const reader = resp.body.getReader();
      const dec = new TextDecoder();
      serialText = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        serialText += dec.decode(value, { stream: true });
        if (serialText.length > 400000) serialText = serialText.slice(-300000);
        renderSerial();
      }
    } catch (e) {
      if (e.name !== 'AbortError') message.textContent = `Serial log: ${e.message}`;
    } finally {
      if (follow === ctl) follow = null;
    }
  }

  async function refreshContainers() {
    let comp;
    try {
      comp = await call('GET', `/cvms/${cvm.vm_uuid}/composition`);
    } catch (e) {
      replace(containerLogs, h('p', { class: 'hint', text: `No containers listed (${e.message}).` }));
      return [];
    }
    const blocks = [];
    for (const c of comp.containers || []) {
      const name = (c.names && c.names[0] || c.id).replace(/^\//, '');
      let text = '';
      try {
        const r = await fetch(`${sameOrigin(c.log_endpoint)}&tail=200`, { cache: 'no-store', credentials: 'omit' });
        text = r.ok ? await r.text() : `(the log answered ${r.status})`;
      } catch (e) {
        text = `(${e.message})`;
      }
      blocks.push(h('div', { class: 'container', 'data-service': name },
        h('h4', { text: name }), h('pre', { class: 'log', 'aria-label': `Logs of ${name}`, text })));
    }
    replace(containerLogs, blocks.length ? blocks : [h('p', { class: 'hint', text: 'No containers.' })]);
    return comp.containers || [];
  }

  /** Each service's image, read once per compose file (the API parses it). */
  async function serviceImages() {
    const yaml = cvm.docker_compose_file || '';
    if (images.yaml !== yaml) {
      let list = [];
      try {
        list = (await call('POST', '/berth/compose-images', { docker_compose_file: yaml })).images || [];
      } catch (e) {
        list = [];
      }
      images = { yaml, byService: new Map(list.map((i) => [i.service, i.image])) };
    }
    return images.byService;
  }

  /** `sha256:…` of an image pinned to a digest, else `not pinned (tag)`. */
  function pinnedDigest(image) {
    if (!image) return 'unknown';
    const at = image.indexOf('@');
    return at >= 0 ? image.slice(at + 1) : 'not pinned (tag only)';
  }

  function composeServices() {
    const yaml = cvm.docker_compose_file || '';
    const m = /^services:\s*\n((?:[ \t]+.*\n?|\s*\n)*)/m.exec(yaml);
    if (!m) return [];
    const indent = (/^([ \t]+)\S/m.exec(m[1]) || [null, '  '])[1];
    const re = new RegExp(`^${indent}([A-Za-z0-9._-]+):`, 'gm');
    return [...m[1].matchAll(re)].map((x) => x[1]);
  }

  /** Refresh now (and refetch containers and the serial log). */
  function kick() {
    forceNext = true;
    if (!inflight) {
      clearTimeout(timer);
      refresh();
    }
  }

  async function refresh() {
    inflight = true;
    try {
      await refreshOnce();
    } finally {
      inflight = false;
      clearTimeout(timer);
      if (!stopped) timer = setTimeout(refresh, 1500);
    }
  }

  async function refreshOnce() {
    const force = forceNext;
    forceNext = false;
    let next;
    try {
      next = await call('GET', `/cvms/${encodeURIComponent(id)}`, undefined, { version: LEGACY });
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        message.textContent = 'This CVM no longer exists.';
        stopped = true;
        return;
      }
      message.textContent = `Could not read the CVM: ${e.message}`;
      return;
    }
    const changed = !cvm || cvm.status !== next.status || cvm.in_progress !== next.in_progress;
    cvm = next;
    replace(head, h('h2', { text: cvm.name }), statusBadge(cvm));
    replace(facts,
      h('dt', { text: 'Status' }), h('dd', { class: 'cvm-status', text: cvm.status }),
      h('dt', { text: 'App ID' }), h('dd', { class: 'mono', text: cvm.app_id }),
      h('dt', { text: 'Compose hash' }), h('dd', { class: 'mono', text: cvm.compose_hash }),
      h('dt', { text: 'Upgrades' }), h('dd', { text: cvm.upgrade_authority === 'owner'
        ? 'owner-authorized (only the owner key can register new code)'
        : 'cloud-authorized (the operator can register new code)' }),
      h('dt', { text: 'Created' }), h('dd', { text: when(cvm.created_at) }));
    if (changed || force) {
      const containers = await refreshContainers();
      // The engine's own state of each service's container (`running`,
      // `exited`, …) and its status text, as the composition reports them.
      const byService = new Map(containers.map((c) => [(c.names && c.names[0] || '').replace(/^\//, ''), c]));
      const imageOf = await serviceImages();
      replace(services, composeServices().map((s) => {
        const c = byService.get(s);
        const state = c ? (c.state || 'unknown') + (c.status ? ` (${c.status})` : '') : 'none';
        return h('li', {}, h('span', { class: 'mono', text: s }), ' — container: ',
          h('span', { class: 'container-state', text: state }),
          ' — image digest: ', h('span', { class: 'mono image-digest', text: pinnedDigest(imageOf.get(s)) }));
      }));
    } else if (cvm.status === 'running' && ++ticks % 3 === 0) {
      refreshContainers();
    }
    if (!follow && (changed || force)) followSerial();
    renderFailure();
  }

  function showUpdate() {
    const secrets = secretsEditor();
    const registry = registryPicker(rules);
    const error = h('p', { class: 'error', role: 'alert' });
    const submit = h('button', { type: 'submit', class: 'primary', text: 'Update secrets' });
    const blocked = cannotSeal();
    const form = h('form', { class: 'update-form', novalidate: true, autocomplete: 'off' },
      h('h3', { text: 'Update secrets' }),
      h('p', { class: 'hint', text: 'All secrets are replaced together: enter every secret and the registry provider again. They are encrypted in this browser; the CVM restarts with them.' }),
      blocked ? h('p', { class: 'error banner', text: blocked }) : null,
      secrets.el,
      h('details', { class: 'advanced', open: true }, h('summary', { text: 'Advanced Features' }), registry.el),
      error, submit,
      h('button', { type: 'button', text: 'Cancel', onclick: () => updateBox.replaceChildren() }));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (submit.disabled) return;
      error.textContent = '';
      secrets.setError('');
      if (blocked) {
        error.textContent = blocked;
        return;
      }
      const prov = registry.collect();
      let env;
      try {
        env = mergeEnv(secrets.vars(), prov.vars);
        const problems = checkEnv(env, rules);
        if (problems.length) throw new Error(problems.join('; '));
      } catch (e) {
        secrets.setError(e.message);
        return;
      }
      if (!prov.ok) return;
      submit.disabled = true;
      let step = 'reading the env public key';
      try {
        const cur = await call('GET', `/cvms/${cvm.vm_uuid}`, undefined, { version: '2026-01-21' });
        const pub = cur.kms_info && cur.kms_info.encrypted_env_pubkey;
        if (!pub) throw new Error('the API gave no env public key for this CVM');
        step = 'sealing the secrets in this browser';
        const sealed = await sealEnv(pub, env);
        step = 'sending the update';
        const res = await call('PATCH', `/cvms/${cvm.vm_uuid}/envs`, { encrypted_env: sealed, env_keys: env.map((v) => v.key) });
        secrets.clear();
        registry.clear();
        updateBox.replaceChildren();
        message.textContent = `Secrets updated: ${(res && res.message) || 'the CVM restarts with them'}.`;
        kick();
      } catch (e) {
        error.textContent = `Update failed while ${step}: ${e.message}`;
      } finally {
        submit.disabled = false;
      }
    });
    replace(updateBox, form);
  }

  forceNext = true;
  refresh();
  return {
    el,
    stop() {
      stopped = true;
      clearTimeout(timer);
      if (follow) follow.abort();
    },
  };
}
