// The spike raster: one pixel row per unit, one column per bin. New columns are written into a
// pixel buffer as wide as the ring and copied into the ring canvas as one dirty rectangle per
// frame (two where the ring wraps); the ring is shown with two blits (oldest left, newest right).
import { WINDOW } from "./store.js";

// Spike count -> pixel (Uint32 over little-endian RGBA: 0xAABBGGRR), magma-like: 0 near black,
// 1 #3b0f70, 2 #8c2981, 3 #de4968, 4 #fe9f6d, 5 #fcfdbf, 6 or more white.
const PALETTE = [0xff140b0b, 0xff700f3b, 0xff81298c, 0xff6849de, 0xff6d9ffe, 0xffbffdfc, 0xffffffff];
const UNOBSERVED = 0xff303030;    // bins between trials (#303030): no measurement, not zeros
const REGION_COLORS = { PMd: "#c678dd", M1: "#61afef" };
const RATE_RESORT_MS = 5000;

export const SORTS = ["area", "rate", "unit"];

export class Raster {
  constructor(canvas, regionCanvas, store) {
    this.canvas = canvas;
    this.regionCanvas = regionCanvas;
    this.store = store;
    this.sort = "area";
    this.order = null;            // row -> unit index
    this.drawn = 0;               // store.total up to which columns are in the ring
    this.units = 0;
    this.lastSort = 0;
  }

  setup() {
    const units = this.store.units;
    this.units = units;
    this.ring = new OffscreenCanvas(WINDOW, units);
    this.ringCtx = this.ring.getContext("2d");
    this.block = this.ringCtx.createImageData(WINDOW, units);
    this.pixels = new Uint32Array(this.block.data.buffer);
    this.canvas.width = WINDOW;
    this.canvas.height = units;
    this.ctx = this.canvas.getContext("2d");
    this.ctx.imageSmoothingEnabled = false;
    this.resort();
  }

  setSort(sort) {
    this.sort = sort;
    if (this.units) this.resort();
  }

  // Row order for the current sort; then every column in the window is redrawn in that order.
  resort() {
    const meta = this.store.meta;
    const ids = meta.unit_ids || [];
    const regions = meta.regions || [];
    const units = [...Array(this.units).keys()];
    const byId = (a, b) => (ids[a] ?? a) - (ids[b] ?? b);
    if (this.sort === "area" && regions.length === this.units) {
      // Areas in the order the metadata first names them (MC_Maze: PMd, then M1), units by id within.
      const rank = new Map();
      for (const r of regions) if (!rank.has(r)) rank.set(r, rank.size);
      units.sort((a, b) => rank.get(regions[a]) - rank.get(regions[b]) || byId(a, b));
    } else if (this.sort === "rate") {
      const mean = this.store.meanCounts();
      units.sort((a, b) => mean[b] - mean[a] || byId(a, b));
    } else {
      units.sort(byId);
    }
    this.order = Uint16Array.from(units);
    this.lastSort = performance.now();
    this.drawn = this.store.total - this.store.size();
    this.drawRegions(regions);
  }

  drawRegions(regions) {
    const c = this.regionCanvas;
    c.width = 1;
    c.height = this.units;
    const ctx = c.getContext("2d");
    for (let r = 0; r < this.units; r++) {
      ctx.fillStyle = REGION_COLORS[regions[this.order[r]]] || "#555";
      ctx.fillRect(0, r, 1, 1);
    }
  }

  writeColumn(n) {
    const s = this.store;
    const j = n % WINDOW;
    const row = j * s.units;
    const px = this.pixels;
    if (!s.observed[j]) {
      for (let r = 0; r < this.units; r++) px[r * WINDOW + j] = UNOBSERVED;
      return;
    }
    const top = PALETTE.length - 1;
    for (let r = 0; r < this.units; r++) {
      const c = s.counts[row + this.order[r]];
      px[r * WINDOW + j] = PALETTE[c > top ? top : c];
    }
  }

  // Copies ring columns [from, to) (no wrap inside) from the pixel buffer into the ring canvas.
  flush(from, to) {
    if (to > from) this.ringCtx.putImageData(this.block, 0, 0, from, 0, to - from, this.units);
  }

  // Called once per animation frame; returns whether anything was drawn.
  draw() {
    const s = this.store;
    if (!s.meta) return false;
    if (s.units !== this.units) this.setup();
    if (this.sort === "rate" && performance.now() - this.lastSort > RATE_RESORT_MS) this.resort();
    if (s.total === this.drawn) return false;
    // At high speed more than a window may have arrived since the last frame: only the newest count.
    const first = Math.max(this.drawn, s.total - WINDOW);
    for (let n = first; n < s.total; n++) this.writeColumn(n);
    const a = first % WINDOW, b = s.total % WINDOW;
    if (s.total - first === WINDOW) this.flush(0, WINDOW);
    else if (a < b) this.flush(a, b);
    else { this.flush(a, WINDOW); this.flush(0, b); }
    this.drawn = s.total;
    const head = s.total % WINDOW;      // the ring's oldest column once the window is full
    const ctx = this.ctx;
    if (s.total < WINDOW) {
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, WINDOW - s.total, this.units);
      ctx.drawImage(this.ring, 0, 0, s.total, this.units, WINDOW - s.total, 0, s.total, this.units);
    } else {
      ctx.drawImage(this.ring, head, 0, WINDOW - head, this.units, 0, 0, WINDOW - head, this.units);
      if (head) ctx.drawImage(this.ring, 0, 0, head, this.units, WINDOW - head, 0, head, this.units);
    }
    return true;
  }
}
