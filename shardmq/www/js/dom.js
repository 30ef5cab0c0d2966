// Building the page: elements, numbers, tables, forms.
//
// Owns: `h` (an element from a tag, attributes and children), `fmt`/`rate` (numbers as
// the UI shows them), `DataTable` (a sortable, filterable table whose sort and filter
// survive refreshes), `form` (a small labelled form) and `notice` (a message that fades).
//
// Invariants: text from the broker (queue names, user names, payloads) only ever becomes
// a text node or an attribute value, never markup: no innerHTML anywhere in the UI.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "value") el.value = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function fmt(n) {
  if (n === undefined || n === null || n === "") return "";
  if (typeof n !== "number") return String(n);
  return n.toLocaleString("en-US", { maximumFractionDigits: 1 });
}

// "12.3/s" for a *_details object ({rate: ...}); "" when absent.
export function rate(details) {
  if (!details || typeof details.rate !== "number") return "";
  return `${details.rate.toLocaleString("en-US", { maximumFractionDigits: 1 })}/s`;
}

export function notice(container, text, kind = "ok") {
  const el = h("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
  container.replaceChildren(el);
  return el;
}

// A form of labelled inputs; `fields` are [name, label, {type, value, options, ...}]
// (an option is a value, or [value, text]).
// `submit(values, form)` runs on submit; an error it throws is shown under the form.
export function form(id, title, fields, submitLabel, submit) {
  const status = h("div", { class: "form-status" });
  const inputs = fields.map(([name, label, opts = {}]) => {
    let input;
    if (opts.options) {
      input = h(
        "select",
        { name },
        opts.options.map((o) => {
          const [value, text] = Array.isArray(o) ? o : [o, o];
          return h("option", { value, selected: value === opts.value }, text);
        }),
      );
    } else if (opts.type === "textarea") {
      input = h("textarea", { name, rows: opts.rows || 4 });
      input.value = opts.value || "";
    } else {
      input = h("input", {
        name,
        type: opts.type || "text",
        value: opts.value ?? "",
        required: opts.required,
        min: opts.min,
        placeholder: opts.placeholder,
        autocomplete: opts.autocomplete || "off",
      });
    }
    return h("label", {}, h("span", {}, label), input);
  });
  const el = h(
    "form",
    { id, class: "panel-form" },
    title ? h("h3", {}, title) : null,
    inputs,
    h("button", { type: "submit" }, submitLabel),
    status,
  );
  el.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const values = Object.fromEntries(new FormData(el).entries());
    status.replaceChildren();
    try {
      const msg = await submit(values, el);
      if (msg) notice(status, msg, "ok");
    } catch (e) {
      notice(status, e.message || String(e), "error");
    }
  });
  return el;
}

// columns: [{key, label, value(row) -> sortable, cell(row) -> Node|string, num}]
export class DataTable {
  constructor(id, columns, { rowKey, filterPlaceholder = "Filter by name", limit = 500 } = {}) {
    this.id = id;
    this.columns = columns;
    this.rowKey = rowKey || ((r) => r.name);
    this.limit = limit;
    this.rows = [];
    this.sortKey = (columns.find((c) => !c.when) || columns[0]).key;
    this.sortReverse = false;
    this.filterText = "";
    this.filterRegex = false;
    this.filter = h("input", {
      type: "search",
      class: "filter",
      id: `${id}-filter`,
      placeholder: filterPlaceholder,
      oninput: (e) => {
        this.filterText = e.target.value;
        this.renderBody();
      },
    });
    this.regex = h("input", {
      type: "checkbox",
      onchange: (e) => {
        this.filterRegex = e.target.checked;
        this.renderBody();
      },
    });
    this.count = h("span", { class: "count" });
    this.thead = h("thead");
    this.tbody = h("tbody");
    this.el = h(
      "div",
      { class: "datatable" },
      h("div", { class: "table-tools" }, this.filter, h("label", { class: "inline" }, this.regex, " Regex"), this.count),
      h("table", { id }, this.thead, this.tbody),
    );
    this.renderHead();
  }

  renderHead() {
    const cols = this.visibleColumns();
    this.thead.replaceChildren(
      h(
        "tr",
        {},
        cols.map((c) => {
          const mark = c.key === this.sortKey ? (this.sortReverse ? " ▼" : " ▲") : "";
          return h(
            "th",
            {
              class: c.num ? "num sortable" : "sortable",
              dataset: { key: c.key },
              title: "Sort",
              onclick: () => {
                if (this.sortKey === c.key) this.sortReverse = !this.sortReverse;
                else {
                  this.sortKey = c.key;
                  this.sortReverse = !!c.num; // numbers: largest first
                }
                this.renderHead();
                this.renderBody();
              },
            },
            c.label + mark,
          );
        }),
      ),
    );
  }

  visibleColumns() {
    return this.columns.filter((c) => !c.when || c.when(this.rows));
  }

  setRows(rows) {
    const before = this.visibleColumns().length;
    this.rows = rows || [];
    if (this.visibleColumns().length !== before) this.renderHead();
    this.renderBody();
  }

  matches(row) {
    if (!this.filterText) return true;
    const name = String(this.rowKey(row));
    if (this.filterRegex) {
      try {
        return new RegExp(this.filterText).test(name);
      } catch {
        return false;
      }
    }
    return name.toLowerCase().includes(this.filterText.toLowerCase());
  }

  renderBody() {
    const cols = this.visibleColumns();
    const col = cols.find((c) => c.key === this.sortKey) || cols[0];
    const val = (r) => (col.value ? col.value(r) : r[col.key]);
    const shown = this.rows.filter((r) => this.matches(r));
    shown.sort((a, b) => {
      const x = val(a);
      const y = val(b);
      let d;
      if (typeof x === "number" && typeof y === "number") d = x - y;
      else d = String(x ?? "").localeCompare(String(y ?? ""));
      return this.sortReverse ? -d : d;
    });
    const page = shown.slice(0, this.limit);
    this.tbody.replaceChildren(
      ...page.map((r) =>
        h(
          "tr",
          { dataset: { name: String(this.rowKey(r)), vhost: r.vhost ?? "" } },
          cols.map((c) => h("td", { class: [c.num ? "num" : "", c.key].join(" ").trim() }, c.cell ? c.cell(r) : fmt(r[c.key]))),
        ),
      ),
    );
    if (!page.length) {
      this.tbody.append(h("tr", { class: "empty" }, h("td", { colspan: cols.length }, this.rows.length ? "No rows match the filter." : "None.")));
    }
    const extra = shown.length > page.length ? ` (first ${page.length} shown)` : "";
    this.count.textContent = `${shown.length} of ${this.rows.length}${extra}`;
  }
}
