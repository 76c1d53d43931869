// The public API (/api/v1) with the signed-in user's key, sent as
// X-API-Key. The key lives in this tab's sessionStorage only: not in a
// cookie, not in localStorage; Sign out removes it.

const KEY = 'berth-api-key';
export const API = '/api/v1';

export function apiKey() {
  return sessionStorage.getItem(KEY);
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

/** An API answer that is not 2xx: the status, the API's sentence, the body. */
export class ApiError extends Error {
  constructor(status, detail, body) {
    super(detail);
    this.status = status;
    this.body = body;
  }
}

function detailOf(body, status) {
  if (body && typeof body.detail === 'string') return body.detail;
  if (body && body.detail && typeof body.detail.message === 'string') return body.detail.message;
  return `the API answered ${status}`;
}

/** `METHOD /api/v1{path}` with JSON in and out. */
export async function call(method, path, body, { key = apiKey(), version } = {}) {
  const headers = { Accept: 'application/json' };
  if (key) headers['X-API-Key'] = key;
  if (version) headers['X-Phala-Version'] = version;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let resp;
  try {
    resp = await fetch(API + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit',
      cache: 'no-store',
    });
  } catch (e) {
    throw new ApiError(0, `the API could not be reached (${e.message})`, null);
  }
  const text = await resp.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!resp.ok) throw new ApiError(resp.status, detailOf(json, resp.status), json);
  return json;
}

/** The 2025-10-28 shape of CVMs: status, boot category, compose hash, log URL. */
export const LEGACY = '2025-10-28';

/** A log URL handed out by the API, fetched on this page's origin. */
export function sameOrigin(url) {
  const u = new URL(url, location.href);
  return u.pathname + u.search;
}
