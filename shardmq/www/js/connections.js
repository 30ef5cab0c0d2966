// The connections page: who is connected, and closing a connection.
//
// Owns: its layout and calls: GET /api/connections, DELETE /api/connections/{name}
// (with RabbitMQ's X-Reason header).
//
// Invariants: a broker without the endpoint (404) gets a plain message, not a broken
// table; fields absent from a row are shown empty.

import { ApiError, api, get, path } from "./api.js";
import { DataTable, h, notice, rate } from "./dom.js";

let table = null;

function client(c) {
  const p = c.client_properties || {};
  return p.connection_name || [p.product, p.version].filter(Boolean).join(" ") || "";
}

export function connections(root) {
  const status = h("div", { class: "form-status", id: "connections-status" });
  async function close(c) {
    if (!window.confirm(`Close connection ${c.name}?`)) return;
    try {
      await api("DELETE", path("connections", c.name), undefined, { "X-Reason": "Closed via management UI" });
      notice(status, `Connection ${c.name} closed.`, "ok");
      // the worker drops it in a moment: not listed again by the next poll
      table.setRows(table.rows.filter((r) => r.name !== c.name));
    } catch (e) {
      notice(status, e.message, "error");
    }
  }
  const columns = [
    { key: "name", label: "Name" },
    { key: "vhost", label: "Virtual host" },
    { key: "user", label: "User" },
    { key: "client", label: "Client", value: client, cell: client },
    { key: "state", label: "State" },
    { key: "protocol", label: "Protocol" },
    { key: "channels", label: "Channels", num: true },
    { key: "recv", label: "From client", num: true, when: (rows) => rows.some((c) => c.recv_oct_details), value: (c) => c.recv_oct_details?.rate ?? -1, cell: (c) => rate(c.recv_oct_details) },
    { key: "send", label: "To client", num: true, when: (rows) => rows.some((c) => c.send_oct_details), value: (c) => c.send_oct_details?.rate ?? -1, cell: (c) => rate(c.send_oct_details) },
    { key: "close", label: "", cell: (c) => h("button", { type: "button", class: "small danger close-connection", onclick: () => close(c) }, "Close") },
  ];
  table = table || new DataTable("connections", columns);
  table.columns = columns;
  root.replaceChildren(h("h1", {}, "Connections"), table.el, status);
  async function refresh() {
    try {
      table.setRows(await get("/api/connections"));
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        table.setRows([]);
        notice(status, "This broker does not list connections yet.", "error");
        return;
      }
      throw e;
    }
  }
  return { refresh };
}
