// The management API as the UI calls it.
//
// Owns: the credentials of this tab (sessionStorage, never a cookie), `api()` (one call
// with HTTP basic auth in an explicit Authorization header, JSON both ways) and path
// helpers (`path`, vhost "/" as %2F like RabbitMQ's API).
//
// Invariants: every fetch is made with `credentials: "omit"`, so the browser neither
// attaches nor prompts for credentials of its own (no native basic-auth dialog whose
// cached credentials a cross-site request could reuse: issue 14 item 7); a 401 for the
// credentials themselves ("Login failed", "Not management user") ends the session.

const KEY = "shardmq.auth";
const USER_KEY = "shardmq.user";

export class ApiError extends Error {
  constructor(status, error, reason) {
    super(reason || error || `HTTP ${status}`);
    this.status = status;
    this.error = error;
    this.reason = reason;
  }
}

function b64(text) {
  const bytes = new TextEncoder().encode(text);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

export function credentials() {
  return sessionStorage.getItem(KEY);
}

export function currentUser() {
  const raw = sessionStorage.getItem(USER_KEY);
  return raw ? JSON.parse(raw) : null;
}

export function forget() {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(USER_KEY);
}

let onLoggedOut = () => {};
export function whenLoggedOut(fn) {
  onLoggedOut = fn;
}

async function call(method, url, body, auth, headers = {}) {
  const init = {
    method,
    headers: { Accept: "application/json", ...headers },
    credentials: "omit",
    cache: "no-store",
    redirect: "error",
  };
  if (auth) init.headers.Authorization = `Basic ${auth}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(url, init);
  const text = await resp.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { error: "bad_response", reason: text.slice(0, 200) };
    }
  }
  if (!resp.ok) {
    const error = data && data.error ? data.error : resp.statusText;
    const reason = data && data.reason ? data.reason : `HTTP ${resp.status}`;
    throw new ApiError(resp.status, error, reason);
  }
  return data;
}

// Try these credentials (GET /api/whoami); on success keep them for this tab.
export async function login(username, password) {
  const auth = b64(`${username}:${password}`);
  const who = await call("GET", "/api/whoami", undefined, auth);
  sessionStorage.setItem(KEY, auth);
  sessionStorage.setItem(USER_KEY, JSON.stringify(who));
  return who;
}

export async function api(method, url, body, headers) {
  const auth = credentials();
  if (!auth) {
    onLoggedOut("");
    throw new ApiError(401, "not_authorized", "Not logged in");
  }
  try {
    return await call(method, url, body, auth, headers);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401 && /Login failed|Not management user/.test(e.reason)) {
      forget();
      onLoggedOut(e.reason);
    }
    throw e;
  }
}

export const get = (url) => api("GET", url);

// "/api/queues/%2F/name" from ("queues", "/", "name"): every segment encoded.
export function path(...segments) {
  return "/api/" + segments.map((s) => encodeURIComponent(s)).join("/");
}

export function isAdmin() {
  const u = currentUser();
  if (!u) return false;
  const tags = Array.isArray(u.tags) ? u.tags : String(u.tags || "").split(",");
  return tags.includes("administrator");
}
