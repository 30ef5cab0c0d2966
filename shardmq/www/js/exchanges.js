// The exchanges page: every exchange the user may see, add one, delete one.
//
// Owns: its layout and calls: GET /api/exchanges, PUT and DELETE
// /api/exchanges/{vhost}/{name}.
//
// Invariants: the default exchange and amq.* cannot be deleted from here (the broker
// refuses it too: no button); rate columns appear only when the broker reports them.

import { api, get, path } from "./api.js";
import { DataTable, form, h, rate } from "./dom.js";

const TYPES = ["direct", "fanout", "topic", "headers", "x-consistent-hash"];
const stat = (x, key) => x.message_stats && x.message_stats[`${key}_details`];
const hasRates = (rows) => rows.some((x) => x.message_stats && Object.keys(x.message_stats).length);

let table = null;

export function exchanges(root) {
  const status = h("div", { class: "form-status" });
  async function remove(x) {
    if (!window.confirm(`Delete exchange ${x.name}?`)) return;
    try {
      await api("DELETE", path("exchanges", x.vhost, x.name));
      await refresh();
    } catch (e) {
      status.replaceChildren(h("p", { class: "notice error" }, e.message));
    }
  }
  const columns = [
    { key: "vhost", label: "Virtual host", when: (rows) => new Set(rows.map((r) => r.vhost)).size > 1 },
    { key: "name", label: "Name", cell: (x) => x.name || h("i", {}, "(AMQP default)") },
    { key: "type", label: "Type" },
    {
      key: "features",
      label: "Features",
      value: (x) => (x.durable ? "D" : ""),
      cell: (x) => [x.durable ? "D " : "", x.auto_delete ? "AD " : "", x.internal ? "I " : "", ...Object.keys(x.arguments || {})],
    },
    { key: "rate_in", label: "Rate in", num: true, when: hasRates, value: (x) => stat(x, "publish_in")?.rate ?? -1, cell: (x) => rate(stat(x, "publish_in")) },
    { key: "rate_out", label: "Rate out", num: true, when: hasRates, value: (x) => stat(x, "publish_out")?.rate ?? -1, cell: (x) => rate(stat(x, "publish_out")) },
    {
      key: "actions",
      label: "",
      cell: (x) => (x.name === "" || x.name.startsWith("amq.") ? null : h("button", { type: "button", class: "small danger", onclick: () => remove(x) }, "Delete")),
    },
  ];
  table = table || new DataTable("exchanges", columns);
  table.columns = columns; // the delete buttons call this page's refresh
  const add = form(
    "add-exchange",
    "Add a new exchange",
    [
      ["vhost", "Virtual host", { options: ["/"] }],
      ["name", "Name", { required: true }],
      ["type", "Type", { options: TYPES }],
      ["durable", "Durability", { options: ["Durable", "Transient"] }],
      ["auto_delete", "Auto delete", { options: ["No", "Yes"] }],
      ["internal", "Internal", { options: ["No", "Yes"] }],
    ],
    "Add exchange",
    async (v) => {
      await api("PUT", path("exchanges", v.vhost, v.name), {
        type: v.type,
        durable: v.durable === "Durable",
        auto_delete: v.auto_delete === "Yes",
        internal: v.internal === "Yes",
        arguments: {},
      });
      await refresh();
      return `Exchange ${v.name} declared.`;
    },
  );
  get("/api/vhosts")
    .then((vs) => add.querySelector("select[name=vhost]").replaceChildren(...vs.map((v) => h("option", { value: v.name }, v.name))))
    .catch(() => {});
  root.replaceChildren(h("h1", {}, "Exchanges"), table.el, status, h("section", { class: "panel" }, add));
  async function refresh() {
    table.setRows(await get("/api/exchanges"));
  }
  return { refresh };
}
