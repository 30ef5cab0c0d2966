// Line charts on a <canvas>, from samples the page gathers as it polls.
//
// Owns: `Chart` (a time series per named line, the last `span` seconds of them, drawn
// with axes and a legend of current values) and `History` (those samples, kept while the
// tab is open so that leaving and coming back to the overview keeps the lines).
//
// Invariants: a line is drawn only for the fields the server gave (rates are absent
// until the broker reports them: the chart then says so instead of drawing zeros); the
// canvas is sized to its box times devicePixelRatio, so it is sharp on any screen.

const COLOURS = [
  "#e8710a", "#1a73e8", "#188038", "#a142f4", "#d93025", "#12b5cb",
  "#f9ab00", "#5f6368", "#795548", "#0d652d", "#ff63b8", "#7baaf7",
];

export class History {
  constructor(span = 600) {
    this.span = span; // seconds kept
    this.samples = []; // {t, values: {name: number}}
  }

  add(values, t = Date.now() / 1000) {
    this.samples.push({ t, values });
    const cut = t - this.span;
    while (this.samples.length && this.samples[0].t < cut) this.samples.shift();
  }

  names() {
    const seen = new Set();
    for (const s of this.samples) for (const k of Object.keys(s.values)) seen.add(k);
    return [...seen];
  }
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

export class Chart {
  constructor(canvas, legend, { unit = "", emptyText = "No data yet" } = {}) {
    this.canvas = canvas;
    this.legend = legend;
    this.unit = unit;
    this.emptyText = emptyText;
  }

  draw(history, seconds = 300) {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 600;
    const hgt = canvas.clientHeight || 180;
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(hgt * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, hgt);
    ctx.font = "11px system-ui, sans-serif";

    const names = history.names();
    const now = Date.now() / 1000;
    const t0 = now - seconds;
    const left = 52;
    const right = 8;
    const top = 8;
    const bottom = 20;
    const pw = w - left - right;
    const ph = hgt - top - bottom;
    const x = (t) => left + ((t - t0) / seconds) * pw;

    let max = 0;
    for (const s of history.samples) {
      if (s.t < t0) continue;
      for (const v of Object.values(s.values)) if (typeof v === "number" && v > max) max = v;
    }
    max = niceMax(max);
    const y = (v) => top + ph - (v / max) * ph;

    // grid and axes
    ctx.strokeStyle = "#ddd";
    ctx.fillStyle = "#666";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const v = (max * i) / 4;
      const yy = Math.round(y(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, yy);
      ctx.lineTo(left + pw, yy);
      ctx.stroke();
      ctx.fillText(`${v.toLocaleString("en-US", { maximumFractionDigits: 1 })}${this.unit}`, left - 4, yy);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let s = 0; s <= seconds; s += seconds / 5) {
      const xx = x(t0 + s);
      ctx.textAlign = s === 0 ? "left" : s === seconds ? "right" : "center";
      ctx.fillText(s === seconds ? "now" : `-${Math.round(((seconds - s) / 60) * 10) / 10}m`, xx, top + ph + 4);
    }

    if (!names.length) {
      ctx.fillStyle = "#999";
      ctx.textBaseline = "middle";
      ctx.font = "13px system-ui, sans-serif";
      ctx.fillText(this.emptyText, left + pw / 2, top + ph / 2);
      this.legend.replaceChildren();
      return;
    }

    const items = [];
    names.forEach((name, i) => {
      const colour = COLOURS[i % COLOURS.length];
      ctx.strokeStyle = colour;
      ctx.lineWidth = 2;
      ctx.beginPath();
      let started = false;
      let last;
      for (const s of history.samples) {
        const v = s.values[name];
        if (typeof v !== "number") {
          started = false;
          continue;
        }
        last = v;
        if (s.t < t0) continue;
        if (!started) ctx.moveTo(x(s.t), y(v));
        else ctx.lineTo(x(s.t), y(v));
        started = true;
      }
      ctx.stroke();
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = colour;
      const item = document.createElement("li");
      const label = document.createElement("span");
      label.textContent = name;
      const value = document.createElement("b");
      value.dataset.series = name;
      value.textContent = last === undefined ? "" : `${last.toLocaleString("en-US", { maximumFractionDigits: 1 })}${this.unit}`;
      item.append(swatch, label, value);
      items.push(item);
    });
    this.legend.replaceChildren(...items);
  }
}
