// The queues page (a sortable, filterable table; add a queue) and a queue's own page
// (details; publish, get, purge and delete).
//
// Owns: their layout and the calls they make: GET/PUT/DELETE /api/queues/{vhost}/{name},
// POST /api/exchanges/{vhost}/amq.default/publish, POST /api/queues/{vhost}/{name}/get,
// DELETE /api/queues/{vhost}/{name}/contents (purge).
//
// Invariants: the table's sort and filter survive the 5 s refresh (only its rows are
// replaced); rate columns appear only when some queue reports `message_stats`; after a
// change the page reloads what it shows at once rather than waiting for the next poll.

import { ApiError, api, get, path } from "./api.js";
import { DataTable, fmt, form, h, notice, rate } from "./dom.js";

export function queueHref(vhost, name) {
  return `#/queues/${encodeURIComponent(vhost)}/${encodeURIComponent(name)}`;
}

function features(q) {
  const f = [];
  if (q.durable) f.push(h("abbr", { class: "feature", title: "durable" }, "D"));
  if (q.auto_delete) f.push(h("abbr", { class: "feature", title: "auto-delete" }, "AD"));
  if (q.exclusive) f.push(h("abbr", { class: "feature", title: "exclusive" }, "Excl"));
  for (const [k, v] of Object.entries(q.arguments || {})) {
    f.push(h("abbr", { class: "feature arg", title: `${k}: ${JSON.stringify(v)}` }, k.replace(/^x-/, "")));
  }
  if (q.policy) f.push(h("abbr", { class: "feature policy", title: "policy" }, q.policy));
  return f;
}

const stat = (q, key) => q.message_stats && q.message_stats[`${key}_details`];
const hasRates = (rows) => rows.some((q) => q.message_stats && Object.keys(q.message_stats).length);
const rateValue = (key) => (q) => (stat(q, key) ? stat(q, key).rate : -1);

async function vhostNames() {
  try {
    return (await get("/api/vhosts")).map((v) => v.name);
  } catch {
    return ["/"];
  }
}

let table = null; // kept across visits: sort and filter stay as the user left them

export function queues(root) {
  if (!table) {
    table = new DataTable("queues", [
      { key: "vhost", label: "Virtual host", when: (rows) => new Set(rows.map((r) => r.vhost)).size > 1 },
      { key: "name", label: "Name", cell: (q) => h("a", { href: queueHref(q.vhost, q.name), class: "queue-link" }, q.name) },
      { key: "type", label: "Type" },
      { key: "features", label: "Features", value: (q) => (q.durable ? "D" : ""), cell: features },
      { key: "state", label: "State" },
      { key: "messages_ready", label: "Ready", num: true },
      { key: "messages_unacknowledged", label: "Unacked", num: true },
      { key: "messages", label: "Total", num: true },
      { key: "consumers", label: "Consumers", num: true },
      { key: "rate_in", label: "Incoming", num: true, when: hasRates, value: rateValue("publish"), cell: (q) => rate(stat(q, "publish")) },
      {
        key: "rate_out",
        label: "Deliver / get",
        num: true,
        when: hasRates,
        value: rateValue("deliver_get"),
        cell: (q) => rate(stat(q, "deliver_get")),
      },
      { key: "rate_ack", label: "Ack", num: true, when: hasRates, value: rateValue("ack"), cell: (q) => rate(stat(q, "ack")) },
    ]);
  }
  const add = form(
    "add-queue",
    "Add a new queue",
    [
      ["vhost", "Virtual host", { options: ["/"] }],
      ["name", "Name", { required: true }],
      ["durable", "Durability", { options: ["Durable", "Transient"] }],
      ["auto_delete", "Auto delete", { options: ["No", "Yes"] }],
    ],
    "Add queue",
    async (v) => {
      await api("PUT", path("queues", v.vhost, v.name), {
        durable: v.durable === "Durable",
        auto_delete: v.auto_delete === "Yes",
        arguments: {},
      });
      await refresh();
      return `Queue ${v.name} declared.`;
    },
  );
  vhostNames().then((names) => {
    const select = add.querySelector("select[name=vhost]");
    select.replaceChildren(...names.map((n) => h("option", { value: n }, n)));
  });
  root.replaceChildren(h("h1", {}, "Queues"), table.el, h("section", { class: "panel" }, add));
  async function refresh() {
    table.setRows(await get("/api/queues"));
  }
  return { refresh };
}

// POST .../publish; a 404 while the queue exists means the broker lacks the endpoint.
async function publishCall(url, body) {
  try {
    return await api("POST", url, body);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      throw new Error("Publish failed: this broker does not publish through the management API (404)");
    }
    throw e;
  }
}

function details(q) {
  const rows = [
    ["State", q.state, "state"],
    ["Ready", fmt(q.messages_ready), "messages_ready"],
    ["Unacked", fmt(q.messages_unacknowledged), "messages_unacknowledged"],
    ["Total", fmt(q.messages), "messages"],
    ["Consumers", fmt(q.consumers), "consumers"],
    ["Type", q.type, "type"],
    ["Features", features(q), "features"],
    ["Node", q.node, "node"],
  ];
  for (const [key, label] of [
    ["publish", "Incoming"],
    ["deliver_get", "Deliver / get"],
    ["ack", "Ack"],
    ["redeliver", "Redelivered"],
  ]) {
    if (stat(q, key)) rows.push([`${label} rate`, rate(stat(q, key)), `rate-${key}`]);
  }
  return rows
    .filter(([, v]) => v !== undefined && v !== null && v !== "" && !(Array.isArray(v) && !v.length))
    .map(([k, v, cls]) => h("tr", {}, h("th", {}, k), h("td", { class: cls }, v)));
}

function message(m, i) {
  const props = m.properties && Object.keys(m.properties).length ? JSON.stringify(m.properties) : "";
  return h(
    "div",
    { class: "message" },
    h("h4", {}, `Message ${i + 1}`),
    h(
      "table",
      { class: "plain" },
      h("tr", {}, h("th", {}, "Exchange"), h("td", {}, m.exchange || "(AMQP default)")),
      h("tr", {}, h("th", {}, "Routing key"), h("td", {}, m.routing_key)),
      h("tr", {}, h("th", {}, "Redelivered"), h("td", {}, m.redelivered ? "yes" : "no")),
      h("tr", {}, h("th", {}, "Messages left"), h("td", {}, fmt(m.message_count))),
      props ? h("tr", {}, h("th", {}, "Properties"), h("td", {}, h("code", {}, props))) : null,
      h("tr", {}, h("th", {}, `Payload (${fmt(m.payload_bytes)} bytes, ${m.payload_encoding})`), h("td", {}, h("pre", { class: "payload" }, m.payload))),
    ),
  );
}

export function queue(root, [vhost, name]) {
  const qpath = path("queues", vhost, name);
  const facts = h("tbody");
  const actionStatus = h("div", { class: "form-status", id: "queue-status" });
  const got = h("div", { id: "got-messages" });

  const publish = form(
    "publish",
    "Publish message",
    [
      ["delivery_mode", "Delivery mode", { options: ["1 - Non-persistent", "2 - Persistent"] }],
      ["headers", "Headers (JSON object)", { placeholder: '{"key": "value"}' }],
      ["payload", "Payload", { type: "textarea" }],
    ],
    "Publish message",
    async (v) => {
      let headers = {};
      if (v.headers.trim()) {
        try {
          headers = JSON.parse(v.headers);
        } catch {
          throw new Error("Headers must be a JSON object");
        }
      }
      const r = await publishCall(path("exchanges", vhost, "amq.default", "publish"), {
        properties: { delivery_mode: v.delivery_mode.startsWith("2") ? 2 : 1, headers },
        routing_key: name,
        payload: v.payload,
        payload_encoding: "string",
      });
      await refresh();
      return r && r.routed === false ? "Message published, but not routed." : "Message published.";
    },
  );

  const getForm = form(
    "get",
    "Get messages",
    [
      ["ackmode", "Ack mode", { options: ["ack_requeue_true", "reject_requeue_false", "ack_requeue_false"] }],
      ["encoding", "Encoding", { options: ["auto", "base64"] }],
      ["count", "Messages", { type: "number", value: "1", min: "1" }],
    ],
    "Get message(s)",
    async (v) => {
      const msgs = await api("POST", `${qpath}/get`, {
        count: Math.max(1, parseInt(v.count, 10) || 1),
        ackmode: v.ackmode,
        encoding: v.encoding,
        truncate: 50000,
      });
      got.replaceChildren(...(msgs || []).map(message));
      await refresh();
      return msgs && msgs.length ? null : "Queue is empty.";
    },
  );
  const ackHelp = {
    ack_requeue_true: "Nack message requeue true",
    reject_requeue_false: "Reject requeue false",
    ack_requeue_false: "Automatic ack",
  };
  for (const opt of getForm.querySelectorAll("select[name=ackmode] option")) opt.textContent = ackHelp[opt.value];

  const purge = h("button", { type: "button", id: "purge", class: "danger" }, "Purge messages");
  purge.addEventListener("click", async () => {
    try {
      await api("DELETE", `${qpath}/contents`);
      notice(actionStatus, "Queue purged.", "ok");
      await refresh();
    } catch (e) {
      notice(actionStatus, e.message, "error");
    }
  });
  const ifEmpty = h("input", { type: "checkbox", id: "delete-if-empty" });
  const ifUnused = h("input", { type: "checkbox", id: "delete-if-unused" });
  const del = h("button", { type: "button", id: "delete", class: "danger" }, "Delete queue");
  del.addEventListener("click", async () => {
    if (!window.confirm(`Delete queue ${name}?`)) return;
    const q = new URLSearchParams();
    if (ifEmpty.checked) q.set("if-empty", "true");
    if (ifUnused.checked) q.set("if-unused", "true");
    try {
      await api("DELETE", `${qpath}${q.size ? `?${q}` : ""}`);
      location.hash = "#/queues";
    } catch (e) {
      notice(actionStatus, e.message, "error");
    }
  });

  root.replaceChildren(
    h("p", { class: "crumbs" }, h("a", { href: "#/queues" }, "Queues"), ` · virtual host ${vhost}`),
    h("h1", {}, "Queue ", h("span", { id: "queue-name" }, name)),
    h("section", { class: "panel" }, h("h2", {}, "Details"), h("table", { class: "plain", id: "queue-details" }, facts)),
    h("section", { class: "panel" }, publish),
    h("section", { class: "panel" }, getForm, got),
    h(
      "section",
      { class: "panel" },
      h("h3", {}, "Purge and delete"),
      h("div", { class: "action-bar" }, purge, del, h("label", { class: "inline" }, ifEmpty, " if empty"), h("label", { class: "inline" }, ifUnused, " if unused")),
      actionStatus,
    ),
  );

  async function refresh() {
    const q = await get(qpath);
    facts.replaceChildren(...details(q));
  }
  return { refresh };
}
