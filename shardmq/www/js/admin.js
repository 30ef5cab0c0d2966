// The administrator's pages: users (and their permissions) and virtual hosts.
//
// Owns: their layout and calls: GET/PUT/DELETE /api/users/{name}, GET /api/permissions,
// PUT/DELETE /api/permissions/{vhost}/{user}, GET/PUT/DELETE /api/vhosts/{name}.
//
// Invariants: shown only to a user tagged administrator (the broker refuses the others
// anyway, 401 "Not administrator user"); deleting asks first.

import { api, currentUser, get, isAdmin, path } from "./api.js";
import { DataTable, form, h, notice } from "./dom.js";

const TAGS = [["", "(none)"], "management", "policymaker", "monitoring", "administrator"];

function adminOnly(root) {
  root.replaceChildren(h("h1", {}, "Administrators only"), h("p", { class: "notice error" }, "This page needs the administrator tag."));
  return { async refresh() {} };
}

function deleteButton(label, what, call, status, refresh) {
  return h(
    "button",
    {
      type: "button",
      class: "small danger",
      onclick: async () => {
        if (!window.confirm(`Delete ${what}?`)) return;
        try {
          await call();
          await refresh();
        } catch (e) {
          notice(status, e.message, "error");
        }
      },
    },
    label,
  );
}

async function vhostOptions(select) {
  try {
    const vs = await get("/api/vhosts");
    select.replaceChildren(...vs.map((v) => h("option", { value: v.name }, v.name)));
  } catch {
    // leave the default
  }
}

export function users(root) {
  if (!isAdmin()) return adminOnly(root);
  const status = h("div", { class: "form-status" });
  const tags = (u) => (Array.isArray(u.tags) ? u.tags.join(", ") : u.tags || "");
  const userTable = new DataTable("users", [
    { key: "name", label: "Name" },
    { key: "tags", label: "Tags", value: tags, cell: tags },
    { key: "password", label: "Has password", value: (u) => (u.password_hash ? "yes" : "no"), cell: (u) => (u.password_hash ? "yes" : "no") },
    {
      key: "delete",
      label: "",
      cell: (u) =>
        u.name === currentUser()?.name
          ? h("span", { class: "muted" }, "(you)")
          : deleteButton("Delete", `user ${u.name}`, () => api("DELETE", path("users", u.name)), status, refresh),
    },
  ]);
  const permTable = new DataTable(
    "permissions",
    [
      { key: "user", label: "User" },
      { key: "vhost", label: "Virtual host" },
      { key: "configure", label: "Configure" },
      { key: "write", label: "Write" },
      { key: "read", label: "Read" },
      {
        key: "clear",
        label: "",
        cell: (p) => deleteButton("Clear", `${p.user}'s permissions on ${p.vhost}`, () => api("DELETE", path("permissions", p.vhost, p.user)), status, refresh),
      },
    ],
    { rowKey: (p) => `${p.user}@${p.vhost}`, filterPlaceholder: "Filter by user@vhost" },
  );
  const add = form(
    "add-user",
    "Add a user",
    [
      ["name", "Username", { required: true }],
      ["password", "Password", { type: "password", autocomplete: "new-password" }],
      ["tags", "Tags", { options: TAGS }],
    ],
    "Add user",
    async (v) => {
      const body = { tags: v.tags };
      if (v.password) body.password = v.password;
      await api("PUT", path("users", v.name), body);
      await refresh();
      return `User ${v.name} saved.`;
    },
  );
  const perm = form(
    "set-permission",
    "Set permission",
    [
      ["user", "User", { required: true }],
      ["vhost", "Virtual host", { options: ["/"] }],
      ["configure", "Configure regexp", { value: ".*" }],
      ["write", "Write regexp", { value: ".*" }],
      ["read", "Read regexp", { value: ".*" }],
    ],
    "Set permission",
    async (v) => {
      await api("PUT", path("permissions", v.vhost, v.user), { configure: v.configure, write: v.write, read: v.read });
      await refresh();
      return `Permission set for ${v.user} on ${v.vhost}.`;
    },
  );
  vhostOptions(perm.querySelector("select[name=vhost]"));
  root.replaceChildren(
    h("h1", {}, "Users"),
    userTable.el,
    status,
    h("section", { class: "panel" }, add),
    h("h2", {}, "Permissions"),
    permTable.el,
    h("section", { class: "panel" }, perm),
  );
  async function refresh() {
    const [us, ps] = await Promise.all([get("/api/users"), get("/api/permissions")]);
    userTable.setRows(us);
    permTable.setRows(ps);
  }
  return { refresh };
}

export function vhosts(root) {
  if (!isAdmin()) return adminOnly(root);
  const status = h("div", { class: "form-status" });
  const table = new DataTable("vhosts", [
    { key: "name", label: "Name" },
    { key: "description", label: "Description" },
    { key: "messages", label: "Messages", num: true },
    {
      key: "delete",
      label: "",
      cell: (v) => deleteButton("Delete", `virtual host ${v.name} and everything in it`, () => api("DELETE", path("vhosts", v.name)), status, refresh),
    },
  ]);
  const add = form(
    "add-vhost",
    "Add a virtual host",
    [
      ["name", "Name", { required: true }],
      ["description", "Description"],
    ],
    "Add virtual host",
    async (v) => {
      await api("PUT", path("vhosts", v.name), { description: v.description });
      await refresh();
      return `Virtual host ${v.name} added.`;
    },
  );
  root.replaceChildren(h("h1", {}, "Virtual hosts"), table.el, status, h("section", { class: "panel" }, add));
  async function refresh() {
    table.setRows(await get("/api/vhosts"));
  }
  return { refresh };
}
