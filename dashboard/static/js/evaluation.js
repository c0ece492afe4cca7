// The decoder-evaluation panel: polls GET /api/sessions/{code}/evaluation and shows, per decoder,
// accuracy, latency and the pseudo-closed-loop score; hidden while the route 404s or is empty.
import { get, hasFeature } from "./api.js";

const POLL_MS = 2000;
const IDLE_POLL_MS = 5000;          // while no decoder answers (or the server has no such route)

// The answer is {decoder: figures} or {"decoders": {decoder: figures}, ...}.
export function decoders(doc) {
  if (!doc || typeof doc !== "object") return [];
  const table = doc.decoders && typeof doc.decoders === "object" ? doc.decoders : doc;
  return Object.entries(table).filter(([, v]) => v && typeof v === "object" && "predictions" in v);
}

const fmt = (v, digits = 2) => (typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : "–");
const pct = (v) => (typeof v === "number" && Number.isFinite(v) ? `${(100 * v).toFixed(0)} %` : "–");

export class Evaluation {
  constructor(panel, code) {
    this.panel = panel;
    this.body = panel.querySelector(".eval-body");
    this.code = code;
    this.timer = null;
  }

  // Servers without the evaluation API never show the panel and are never asked.
  async start() {
    if (await hasFeature("evaluation")) this.poll();
  }

  async poll() {
    let rows = [];
    try {
      rows = decoders(await get(`/api/sessions/${encodeURIComponent(this.code)}/evaluation`));
    } catch { rows = []; }
    this.panel.hidden = rows.length === 0;
    if (rows.length) this.render(rows);
    this.timer = setTimeout(() => this.poll(), rows.length ? POLL_MS : IDLE_POLL_MS);
  }

  render(rows) {
    this.body.replaceChildren(...rows.map(([name, e]) => this.card(name, e)));
  }

  card(name, e) {
    const lat = e.latency_ms || {};
    const trials = e.trials || {};
    const corr = Array.isArray(e.velocity_corr) ? e.velocity_corr : [];
    const card = document.createElement("div");
    card.className = "eval-card";
    card.dataset.decoder = name;
    const figures = [
      ["velocity R²", fmt(e.velocity_r2, 3)],
      ["r (x, y)", `${fmt(corr[0])}, ${fmt(corr[1])}`],
      ["predictions", e.predictions ?? "–"],
      ["missing", e.missing ?? "–"],
      ["invalid", e.invalid ?? "–"],
      ["latency p50 / p95 / p99 / max", `${fmt(lat.p50, 1)} / ${fmt(lat.p95, 1)} / ${fmt(lat.p99, 1)} / ${fmt(lat.max, 1)} ms`],
      ["deadline misses", e.deadline_misses ?? "–"],
      ["normalized latency", fmt(e.normalized_latency, 3)],
      ["success rate", pct(trials.success_rate)],
      ["trials scored", trials.scored ?? "–"],
      ["time to target", trials.mean_time_to_target_s != null ? `${fmt(trials.mean_time_to_target_s)} s` : "–"],
      ["path efficiency", fmt(trials.path_efficiency)],
    ];
    const title = document.createElement("h3");
    title.textContent = name;
    const dl = document.createElement("dl");
    for (const [label, value] of figures) {
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      dd.textContent = String(value);
      dl.append(dt, dd);
    }
    card.append(title, dl, latencyChart(lat, e.latency_histogram));
    return card;
  }
}

// The latency distribution: the route's histogram ({"le_ms": upper bounds, "counts": one more for
// +inf}), else bars of its percentiles.
function latencyChart(lat, histogram) {
  const figure = document.createElement("figure");
  const caption = document.createElement("figcaption");
  const bars = document.createElement("div");
  bars.className = "bars";
  let items;
  if (histogram && Array.isArray(histogram.counts) && Array.isArray(histogram.le_ms)) {
    caption.textContent = "latency histogram (ms, bucket upper bounds)";
    const bound = (v) => (typeof v === "number" && Number.isFinite(v) ? `≤${v}` : "+inf");
    items = histogram.counts.map((c, i) => [bound(histogram.le_ms[i]), c, `${c}`]);
  } else {
    caption.textContent = "latency (ms)";
    items = ["p50", "p95", "p99", "max"].map((k) => [k, lat[k], fmt(lat[k], 1)]);
  }
  const top = Math.max(1e-9, ...items.map(([, v]) => (typeof v === "number" ? v : 0)));
  for (const [label, value, text] of items) {
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.setProperty("--h", `${Math.round(100 * (typeof value === "number" ? value : 0) / top)}%`);
    bar.title = `${label}: ${text}`;
    bar.innerHTML = `<span class="fill"></span><span class="label"></span>`;
    bar.querySelector(".label").textContent = label;
    bars.append(bar);
  }
  figure.append(caption, bars);
  return figure;
}
