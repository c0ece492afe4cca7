// The reach in 2D: the active target, the current trial's cursor path and the cursor, in mm.
const MIN_EXTENT_MM = 160;       // half-width shown at least; grows to fit what the data reaches
const TARGET_RADIUS_MM = 10;

export class Reach {
  constructor(canvas, store) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.store = store;
    this.extent = MIN_EXTENT_MM;
    this.drawn = 0;
  }

  fit(x, y) {
    const need = Math.max(Math.abs(x), Math.abs(y)) * 1.1;
    if (need > this.extent) this.extent = need;
  }

  draw() {
    const s = this.store;
    if (s.total === this.drawn || !s.last) return false;
    this.drawn = s.total;
    // Nothing moved (the hold and delay periods, gaps between trials): keep the picture.
    const i = s.last.intention;
    const n = s.pathLength;
    const at = n ? `${s.path[2 * n - 2].toFixed(1)},${s.path[2 * n - 1].toFixed(1)}` : "";
    const key = `${s.pathTrial}|${at}|${i ? i.target_x : ""}|${i ? i.target_y : ""}`;
    if (key === this.key) return false;
    this.key = key;
    const { ctx, canvas } = this;
    const w = canvas.width, h = canvas.height;
    const scale = Math.min(w, h) / (2 * this.extent);
    const px = (x) => w / 2 + x * scale;
    const py = (y) => h / 2 - y * scale;          // +y is up
    ctx.fillStyle = "#0d1117";
    ctx.fillRect(0, 0, w, h);
    ctx.strokeStyle = "#30363d";
    ctx.beginPath();
    ctx.moveTo(0, h / 2); ctx.lineTo(w, h / 2); ctx.moveTo(w / 2, 0); ctx.lineTo(w / 2, h);
    ctx.stroke();
    const intention = s.last.intention;
    if (intention && intention.target_x != null) {
      this.fit(intention.target_x, intention.target_y);
      ctx.fillStyle = "rgba(63, 185, 80, 0.35)";
      ctx.strokeStyle = "#3fb950";
      ctx.beginPath();
      ctx.arc(px(intention.target_x), py(intention.target_y), TARGET_RADIUS_MM * scale + 3, 0, 2 * Math.PI);
      ctx.fill();
      ctx.stroke();
    }
    this.drawPath(px, py);
    return true;
  }

  drawPath(px, py) {
    const { ctx } = this;
    const s = this.store;
    const n = s.pathLength;
    if (!n) return;
    ctx.strokeStyle = "#d29922";
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    for (let i = 0; i < n; i++) {
      const x = s.path[2 * i], y = s.path[2 * i + 1];
      if (i === 0) ctx.moveTo(px(x), py(y)); else ctx.lineTo(px(x), py(y));
    }
    ctx.stroke();
    const x = s.path[2 * n - 2], y = s.path[2 * n - 1];
    this.fit(x, y);
    ctx.fillStyle = "#f0f6fc";
    ctx.beginPath();
    ctx.arc(px(x), py(y), 5, 0, 2 * Math.PI);
    ctx.fill();
    ctx.lineWidth = 1;
  }
}
