// The overview page: totals, queued messages and message rates (GET /api/overview).
//
// Owns: the page's layout and the two charts' histories (kept for the life of the tab,
// one sample per poll, so the lines go on across page changes).
//
// Invariants: only fields present in the answer are shown; message rates appear when the
// broker reports `message_stats` (`*_details.rate`), not before.

import { get } from "./api.js";
import { Chart, History } from "./chart.js";
import { fmt, h } from "./dom.js";

const RATE_LABELS = {
  publish: "Publish",
  confirm: "Publisher confirm",
  deliver: "Deliver (manual ack)",
  deliver_no_ack: "Deliver (auto ack)",
  get: "Get (manual ack)",
  get_no_ack: "Get (auto ack)",
  get_empty: "Get (empty)",
  deliver_get: "Deliver / get",
  redeliver: "Redelivered",
  ack: "Consumer ack",
  return_unroutable: "Unroutable (return)",
  drop_unroutable: "Unroutable (drop)",
};
const DETAILED = ["deliver", "deliver_no_ack", "get", "get_no_ack"];
const TOTALS = [
  ["connections", "Connections"],
  ["channels", "Channels"],
  ["exchanges", "Exchanges"],
  ["queues", "Queues"],
  ["consumers", "Consumers"],
];

const queued = new History();
const rates = new History();

// {label: rate} of every *_details.rate in message_stats, in RabbitMQ's chart order.
export function rateValues(stats) {
  const out = {};
  if (!stats) return out;
  const detailed = DETAILED.some((k) => stats[`${k}_details`]);
  const known = Object.keys(RATE_LABELS);
  const keys = Object.keys(stats)
    .filter((k) => k.endsWith("_details"))
    .map((k) => k.slice(0, -"_details".length))
    .sort((a, b) => (known.indexOf(a) + 1 || 99) - (known.indexOf(b) + 1 || 99));
  for (const name of keys) {
    const value = stats[`${name}_details`];
    if (!value || typeof value.rate !== "number") continue;
    if (name === "deliver_get" && detailed) continue;
    out[RATE_LABELS[name] || name] = value.rate;
  }
  return out;
}

export function overview(root) {
  const totals = h("div", { class: "totals", id: "object-totals" });
  const queuedCanvas = h("canvas", { id: "chart-queued", class: "chart" });
  const queuedLegend = h("ul", { class: "legend", id: "legend-queued" });
  const ratesCanvas = h("canvas", { id: "chart-rates", class: "chart" });
  const ratesLegend = h("ul", { class: "legend", id: "legend-rates" });
  const node = h("dl", { class: "facts", id: "node-facts" });
  const listeners = h("tbody");
  root.replaceChildren(
    h("h1", {}, "Overview"),
    totals,
    h("section", { class: "panel" }, h("h2", {}, "Queued messages"), h("div", { class: "chart-box" }, queuedCanvas, queuedLegend)),
    h("section", { class: "panel" }, h("h2", {}, "Message rates"), h("div", { class: "chart-box" }, ratesCanvas, ratesLegend)),
    h("section", { class: "panel" }, h("h2", {}, "Node"), node),
    h(
      "section",
      { class: "panel" },
      h("h2", {}, "Ports and contexts"),
      h("table", { class: "plain" }, h("thead", {}, h("tr", {}, h("th", {}, "Protocol"), h("th", {}, "Bound to"), h("th", {}, "Port"))), listeners),
    ),
  );
  const queuedChart = new Chart(queuedCanvas, queuedLegend, { emptyText: "Waiting for the first sample" });
  const ratesChart = new Chart(ratesCanvas, ratesLegend, {
    unit: "/s",
    emptyText: "No message rates reported by this broker yet",
  });
  const redraw = () => {
    queuedChart.draw(queued);
    ratesChart.draw(rates);
  };
  window.addEventListener("resize", redraw);

  return {
    async refresh() {
      const o = await get("/api/overview");
      const qt = o.queue_totals || {};
      const sample = {};
      if (typeof qt.messages_ready === "number") sample.Ready = qt.messages_ready;
      if (typeof qt.messages_unacknowledged === "number") sample.Unacked = qt.messages_unacknowledged;
      if (typeof qt.messages === "number") sample.Total = qt.messages;
      queued.add(sample);
      rates.add(rateValues(o.message_stats));
      redraw();

      const ot = o.object_totals || {};
      totals.replaceChildren(
        ...TOTALS.filter(([k]) => k in ot).map(([k, label]) =>
          h("div", { class: "total", id: `total-${k}` }, h("span", { class: "label" }, label), h("b", {}, fmt(ot[k]))),
        ),
      );
      const facts = [
        ["Product", [o.product_name, o.product_version].filter(Boolean).join(" ")],
        ["API level", o.management_version ? `RabbitMQ management ${o.management_version}` : ""],
        ["Node", o.node],
        ["Runtime", o.erlang_full_version],
        ["Statistics", o.rates_mode ? `rates mode: ${o.rates_mode}` : ""],
      ].filter(([, v]) => v);
      node.replaceChildren(...facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
      listeners.replaceChildren(
        ...(o.listeners || []).map((l) => h("tr", {}, h("td", {}, l.protocol), h("td", {}, l.ip_address), h("td", { class: "num" }, l.port))),
      );
    },
    stop() {
      window.removeEventListener("resize", redraw);
    },
  };
}
