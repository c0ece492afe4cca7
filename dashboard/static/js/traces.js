// Velocity traces (vx, vy) of the window with uPlot, and the trial events as labelled lines.
import uPlot from "../vendor/uplot/uPlot.esm.js";
import { WINDOW } from "./store.js";

const REDRAW_MS = 50;                 // traces at 20 Hz look smooth and cost less than every frame
// Each event: colour, short label and its own label row, so that close events stay readable.
const EVENTS = { trial_start: ["#8b949e", "start", 0], target_on: ["#3fb950", "target", 1],
                 go_cue: ["#f85149", "go", 2], move_onset: ["#d29922", "move", 3],
                 trial_end: ["#8b949e", "end", 4] };

export class Traces {
  constructor(element, store) {
    this.store = store;
    this.binS = 0.025;
    this.lastDraw = 0;
    this.drawn = 0;
    this.x = new Array(WINDOW);
    this.vx = new Array(WINDOW);
    this.vy = new Array(WINDOW);
    const opts = {
      width: element.clientWidth || 600, height: 180,
      legend: { show: true, live: false },
      cursor: { show: false },
      scales: { x: { time: false } },
      axes: [
        { stroke: "#8b949e", grid: { stroke: "#21262d" }, label: "s before now (recording time)" },
        { stroke: "#8b949e", grid: { stroke: "#21262d" }, label: "mm/s" },
      ],
      series: [
        {},
        { label: "vx", stroke: "#58a6ff", width: 1.5 },
        { label: "vy", stroke: "#f778ba", width: 1.5 },
      ],
      hooks: { draw: [(u) => this.drawEvents(u)] },
    };
    this.plot = new uPlot(opts, [[], [], []], element);
    new ResizeObserver(() => this.plot.setSize({ width: element.clientWidth, height: 180 })).observe(element);
  }

  draw(now) {
    const s = this.store;
    if (s.total === this.drawn || now - this.lastDraw < REDRAW_MS || !s.meta) return false;
    this.lastDraw = now;
    this.drawn = s.total;
    this.binS = s.meta.bin_size_ms / 1000;
    const n = s.size();
    this.x.length = this.vx.length = this.vy.length = n;
    for (let i = 0; i < n; i++) {
      const j = s.index(i);
      this.x[i] = (i - n + 1) * this.binS;
      this.vx[i] = Number.isNaN(s.vx[j]) ? null : s.vx[j];
      this.vy[i] = Number.isNaN(s.vy[j]) ? null : s.vy[j];
    }
    this.plot.setData([this.x, this.vx, this.vy]);
    return true;
  }

  drawEvents(u) {
    const s = this.store;
    const ctx = u.ctx;
    const { top, height } = u.bbox;
    ctx.save();
    ctx.font = `${10 * devicePixelRatio}px system-ui, sans-serif`;
    ctx.lineWidth = devicePixelRatio;
    for (const e of s.events) {
      const age = s.total - 1 - e.n;
      if (age >= WINDOW) continue;
      const x = u.valToPos(-age * this.binS, "x", true);
      const [color, label, row] = EVENTS[e.name] || ["#8b949e", e.name, 0];
      ctx.strokeStyle = ctx.fillStyle = color;
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, top + height);
      ctx.stroke();
      ctx.fillText(label, x + 2 * devicePixelRatio, top + (10 + 10 * row) * devicePixelRatio);
    }
    ctx.restore();
  }
}
