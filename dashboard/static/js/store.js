// The last WINDOW packets of the stream in fixed rings (no allocation per packet), plus the trial path.
export const WINDOW = 400;          // bins kept and shown: 10 s of recording at 25 ms
const PATH_MAX = 2000;              // points of the current trial's cursor path

export class Store {
  constructor() {
    this.meta = null;
    this.units = 0;
    this.total = 0;                 // packets stored since the metadata (ring index = total % WINDOW)
    this.counts = new Uint8Array(0);
    this.t = new Float64Array(WINDOW);
    this.vx = new Float32Array(WINDOW);
    this.vy = new Float32Array(WINDOW);
    this.observed = new Uint8Array(WINDOW);
    this.events = [];               // [{n, name, trial}] of the window (n: the packet's number)
    this.last = null;               // the newest packet's data
    this.path = new Float32Array(PATH_MAX * 2);
    this.pathLength = 0;
    this.pathTrial = null;
    this.sortVersion = 0;
  }

  setMeta(meta) {
    const units = meta.num_channels ?? meta.unit_ids.length;
    if (!this.meta || units !== this.units) {
      this.units = units;
      this.counts = new Uint8Array(WINDOW * units);
      this.total = 0;
      this.events = [];
    }
    this.meta = meta;
  }

  push(d) {
    if (!this.meta) return;
    const i = this.total % WINDOW;
    const units = this.units;
    const src = d.spikes.spike_counts;
    const row = i * units;
    for (let u = 0; u < units; u++) {
      const c = src[u];
      this.counts[row + u] = c > 255 ? 255 : c;
    }
    const k = d.kinematics;
    this.t[i] = d.timestamp;
    this.observed[i] = d.observed ? 1 : 0;
    this.vx[i] = k && k.vx != null ? k.vx : NaN;
    this.vy[i] = k && k.vy != null ? k.vy : NaN;
    for (const name of d.events || []) this.events.push({ n: this.total, name, trial: d.trial_id });
    this.total += 1;
    this.last = d;
    this.extendPath(d);
    if (this.events.length > 64) this.dropOldEvents();
  }

  extendPath(d) {
    if (d.trial_id !== this.pathTrial) {
      this.pathTrial = d.trial_id;
      this.pathLength = 0;
    }
    const k = d.kinematics;
    if (!k || k.x == null || k.y == null || this.pathLength >= PATH_MAX) return;
    this.path[2 * this.pathLength] = k.x;
    this.path[2 * this.pathLength + 1] = k.y;
    this.pathLength += 1;
  }

  dropOldEvents() {
    const oldest = this.total - WINDOW;
    this.events = this.events.filter((e) => e.n >= oldest);
  }

  // Number of packets in the window, and the ring index of the i-th oldest.
  size() { return Math.min(this.total, WINDOW); }
  index(i) { return (this.total - this.size() + i) % WINDOW; }

  // Mean count per unit over the window's observed bins (for sorting by rate).
  meanCounts() {
    const sums = new Float64Array(this.units);
    let bins = 0;
    for (let i = 0; i < this.size(); i++) {
      const j = this.index(i);
      if (!this.observed[j]) continue;
      bins += 1;
      const row = j * this.units;
      for (let u = 0; u < this.units; u++) sums[u] += this.counts[row + u];
    }
    return bins ? sums.map((s) => s / bins) : sums;
  }
}
