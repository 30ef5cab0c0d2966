// The web UI's entry point: login, navigation between pages, polling.
//
// Owns: the login form (credentials checked with GET /api/whoami, then kept in this tab's
// sessionStorage by api.js), the hash routes (#/, #/queues, #/queues/{vhost}/{name},
// #/exchanges, #/connections, #/users, #/vhosts), and the 5 s refresh of the page shown
// (paused while the tab is hidden).
//
// Invariants: one page at a time: leaving a page stops its timer before the next page
// starts; a refresh never overlaps the previous one; a failed refresh shows its reason in
// the banner and the next good one clears it; a 401 on the credentials shows the login
// form with the broker's reason ("Login failed", "Not management user").

import { ApiError, currentUser, forget, isAdmin, login, whenLoggedOut } from "./api.js";
import { users, vhosts } from "./admin.js";
import { connections } from "./connections.js";
import { exchanges } from "./exchanges.js";
import { overview } from "./overview.js";
import { queue, queues } from "./queues.js";

const POLL_MS = 5000;
const ROUTES = [
  [/^#?\/?$/, "overview", overview],
  [/^#\/queues\/?$/, "queues", queues],
  [/^#\/queues\/([^/]+)\/([^/]+)$/, "queues", queue],
  [/^#\/exchanges\/?$/, "exchanges", exchanges],
  [/^#\/connections\/?$/, "connections", connections],
  [/^#\/users\/?$/, "users", users],
  [/^#\/vhosts\/?$/, "vhosts", vhosts],
];

const $ = (id) => document.getElementById(id);
let current = null; // {page, timer, busy}

function banner(text) {
  const b = $("banner");
  b.textContent = text || "";
  b.hidden = !text;
}

function stopPage() {
  if (!current) return;
  clearInterval(current.timer);
  if (current.page.stop) current.page.stop();
  current = null;
}

async function refresh(state) {
  if (state.busy || current !== state) return;
  state.busy = true;
  try {
    await state.page.refresh();
    if (current === state) banner("");
  } catch (e) {
    if (current === state && !(e instanceof ApiError && e.status === 401 && !currentUser())) {
      banner(`Could not refresh: ${e.message}`);
    }
  } finally {
    state.busy = false;
  }
}

function show() {
  stopPage();
  if (!currentUser()) return showLogin("");
  $("login").hidden = true;
  $("nav").hidden = false;
  $("session").hidden = false;
  $("whoami").textContent = currentUser().name;
  for (const a of document.querySelectorAll(".admin-only")) a.hidden = !isAdmin();

  const hash = location.hash || "#/";
  const match = ROUTES.map(([re, name, fn]) => [hash.match(re), name, fn]).find(([m]) => m);
  const root = $("app");
  root.hidden = false;
  banner("");
  if (!match) {
    root.replaceChildren();
    banner(`No such page: ${hash}`);
    return;
  }
  const [m, name, fn] = match;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === name);
  let params;
  try {
    params = m.slice(1).map(decodeURIComponent);
  } catch {
    banner(`Bad address: ${hash}`);
    return;
  }
  document.body.dataset.page = name;
  const state = { page: fn(root, params), timer: 0, busy: false };
  current = state;
  state.timer = setInterval(() => {
    if (!document.hidden) refresh(state); // a tab in the background asks nothing
  }, POLL_MS);
  refresh(state);
}

function showLogin(reason) {
  stopPage();
  $("app").hidden = true;
  $("app").replaceChildren();
  $("nav").hidden = true;
  $("session").hidden = true;
  banner("");
  $("login").hidden = false;
  const err = $("login-error");
  err.textContent = reason ? `Login failed: ${reason}` : "";
  err.hidden = !reason;
  document.body.dataset.page = "login";
  $("login-username").focus();
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const user = $("login-username").value;
  const password = $("login-password").value;
  const err = $("login-error");
  err.hidden = true;
  try {
    await login(user, password);
    $("login-password").value = "";
    show();
  } catch (e) {
    forget();
    err.textContent = e instanceof ApiError ? `Login failed: ${e.reason}` : `Cannot reach the broker: ${e.message}`;
    err.hidden = false;
  }
});

$("logout").addEventListener("click", () => {
  forget();
  location.hash = "#/";
  showLogin("");
});

whenLoggedOut((reason) => showLogin(reason));
window.addEventListener("hashchange", show);
show();
