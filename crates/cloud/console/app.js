// The console's entry point: sign-in, then the views (list, deploy, a
// CVM's page) chosen by the location's hash. Nothing but the sign-in form
// is shown before a key is accepted.

import { call, apiKey, setApiKey, ApiError } from './api.js';
import { deployForm } from './deploy.js';
import { cvmList, cvmPage } from './cvm.js';
import { h, field, replace } from './ui.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
let rules = null;
let current = null; // the view that refreshes itself

function signInView(message) {
  const input = h('input', { type: 'password', autocomplete: 'off', spellcheck: 'false' });
  const f = field('API key', input, 'The key `berth up` printed (or one from `berth users create`). Kept for this tab only.');
  const err = h('p', { class: 'error', role: 'alert', text: message || '' });
  const form = h('form', { class: 'signin', novalidate: true, autocomplete: 'off' },
    h('h2', { text: 'Sign in' }), f.wrap, err, h('button', { type: 'submit', class: 'primary', text: 'Sign in' }));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.textContent = '';
    const key = input.value.trim();
    if (!key) {
      err.textContent = 'Enter your API key.';
      return;
    }
    try {
      await call('GET', '/auth/me', undefined, { key });
    } catch (e) {
      err.textContent = e instanceof ApiError && e.status === 401 ? 'Wrong API key: the API does not know it.' : `Sign-in failed: ${e.message}`;
      return;
    }
    input.value = '';
    setApiKey(key);
    start();
  });
  nav.hidden = true;
  who.textContent = '';
  replace(main, form);
  input.focus();
}

function signOut() {
  setApiKey(null);
  rules = null;
  if (current) current.stop();
  current = null;
  history.replaceState(null, '', '#/');
  signInView('Signed out.');
}

async function start() {
  try {
    const me = await call('GET', '/auth/me');
    who.textContent = me.user ? me.user.username : '';
    rules = await call('GET', '/berth/rules');
  } catch (e) {
    setApiKey(null);
    signInView(e instanceof ApiError && e.status === 401 ? 'Your key is no longer valid; sign in again.' : e.message);
    return;
  }
  nav.hidden = false;
  route();
}

function route() {
  if (!apiKey() || !rules) return;
  if (current) current.stop();
  current = null;
  const hash = location.hash || '#/';
  const m = /^#\/cvm\/(.+)$/.exec(hash);
  if (m) {
    current = cvmPage(decodeURIComponent(m[1]), rules, () => { location.hash = '#/'; });
    replace(main, current.el);
  } else if (hash === '#/deploy') {
    replace(main, deployForm(rules, (cvm) => { location.hash = `#/cvm/${cvm.vm_uuid}`; }));
  } else {
    current = cvmList((id) => { location.hash = `#/cvm/${id}`; });
    replace(main, current.el);
  }
}

document.getElementById('signout').addEventListener('click', signOut);
window.addEventListener('hashchange', route);
if (apiKey()) start();
else signInView();
