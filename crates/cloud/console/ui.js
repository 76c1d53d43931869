// Small DOM helpers: elements are built with createElement and textContent
// only (never innerHTML), so nothing a server or a compose file says can
// become markup.

let nextId = 0;

/** `h('div', {class: 'x', onclick: f}, child, 'text', …)`. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** A unique element id. */
export function uid(prefix = 'f') {
  nextId += 1;
  return `${prefix}-${nextId}`;
}

/**
 * A labelled control: `{wrap, input, error}`. The label is the control's
 * accessible name; `error` is the message slot next to it.
 */
export function field(label, input, hint) {
  input.id = input.id || uid();
  const error = h('p', { class: 'error', role: 'alert', id: uid('err') });
  const hintEl = hint ? h('p', { class: 'hint', id: uid('hint'), text: hint }) : null;
  if (hintEl) input.setAttribute('aria-describedby', hintEl.id);
  const wrap = h('div', { class: 'field' }, h('label', { for: input.id, text: label }), input, hintEl, error);
  return { wrap, input, error };
}

/** A password-type input with a show/hide toggle; not autofilled. */
export function secretInput(label, hint) {
  // new-password: browsers neither fill a saved password in nor offer to
  // save this one next to the field before it.
  const input = h('input', { type: 'password', autocomplete: 'new-password', spellcheck: 'false' });
  input.setAttribute('data-lpignore', 'true');
  const f = field(label, input, hint);
  const toggle = h('button', {
    type: 'button',
    class: 'toggle',
    text: 'Show',
    'aria-label': `Show ${label}`,
    onclick: () => {
      const shown = input.type === 'text';
      input.type = shown ? 'password' : 'text';
      toggle.textContent = shown ? 'Show' : 'Hide';
      toggle.setAttribute('aria-label', `${shown ? 'Show' : 'Hide'} ${label}`);
    },
  });
  input.after(toggle);
  return f;
}

/** A text input field. */
export function textInput(label, { hint, placeholder, value } = {}) {
  const input = h('input', { type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder, value });
  return field(label, input, hint);
}

/** Sets or clears a field's error. */
export function setError(f, message) {
  f.error.textContent = message || '';
  if (message) f.input.setAttribute('aria-invalid', 'true');
  else f.input.removeAttribute('aria-invalid');
}

/** Replaces the children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

/** A date as the browser's locale writes it. */
export function when(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}
