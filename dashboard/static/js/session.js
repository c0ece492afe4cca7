// The live page of one session (/dashboard/{code}): wires the stream to the views and draws them
// on requestAnimationFrame, so packets only update typed arrays and never touch the DOM.
import { ApiError, get, post } from "./api.js";
import { Controls } from "./controls.js";
import { Evaluation } from "./evaluation.js";
import { Raster } from "./raster.js";
import { Reach } from "./reach.js";
import { Store } from "./store.js";
import { Stream, streamBases } from "./stream.js";
import { Traces } from "./traces.js";

const FRAME_MS = 33;              // at most ~30 drawn frames/s, however fast packets come
const TEXT_MS = 250;              // figures in text update at 4 Hz
const POLL_MS = 1000;             // the session's state from control (pause, skipped, ...)
const $ = (id) => document.getElementById(id);

const code = decodeURIComponent(window.location.pathname.replace(/\/+$/, "").split("/").pop());
const store = new Store();
const view = { frames: 0, lastDraw: 0, scheduled: false, frameMs: FRAME_MS };   // frameMs: tunable from the console
let raster, reach, traces, controls, stream;

function showMessage(text) {
  const box = $("message");
  box.textContent = text;
  box.hidden = !text;
}

function onError(err) {
  showMessage(err instanceof ApiError ? `${err.status || ""} ${err.message}`.trim() : String(err));
}

function onBatch(packets) {
  for (const d of packets) store.push(d);
  schedule();
}

function onMetadata(meta) {
  store.setMeta(meta);
  if (meta.session) controls.onSession(meta.session);
  schedule();
}

function onStatus(status) {
  const badge = $("connection");
  badge.textContent = status.state;
  badge.dataset.state = status.state;
  badge.title = status.detail || status.url || "";
  if (status.state === "closed") showMessage(status.detail);
}

// Frames are requested only while there is something new to draw, so an idle or paused page
// costs no animation frames at all.
function schedule() {
  if (!view.scheduled) {
    view.scheduled = true;
    requestAnimationFrame(frame);
  }
}

function frame(now) {
  view.scheduled = false;
  // All views are drawn in the same frames, at most FRAME_MS apart: each drawn frame costs the
  // browser a paint and a commit whatever changed, so fewer, fuller frames cost less.
  if (now - view.lastDraw < view.frameMs - 2) {
    schedule();
    return;
  }
  view.lastDraw = now;
  const drew = [raster.draw(), reach.draw(), traces.draw(now)].some(Boolean);
  if (drew) view.frames += 1;
  if (store.total !== raster.drawn || store.total !== traces.drawn) schedule();   // traces lag
}

// Text changes only when its value does (no style or layout work for unchanged figures).
const shown = new Map();
function setText(id, value) {
  const text = String(value);
  if (shown.get(id) === text) return;
  shown.set(id, text);
  $(id).textContent = text;
}

function updateText() {
  const h = stream && stream.health;
  if (!h) return;
  const ms = (v) => (v == null ? "–" : `${v.toFixed(1)} ms`);
  setText("packets-count", String(h.packets));
  setText("h-rate", `${h.rate.toFixed(1)} packets/s`);
  setText("h-late", h.lateMean == null ? "–" : `${ms(h.lateMean)} mean, ${ms(h.lateMax)} max`);
  setText("h-delay", h.delayMean == null ? "–" : `${ms(h.delayMean)} mean, ${ms(h.delayMax)} max`);
  setText("h-gaps", String(h.gaps));
  setText("h-missing", String(h.missing));
  setText("h-repeats", String(h.repeats));
  setText("h-frames", String(view.frames));
  setText("h-reconnects", String(h.reconnects));
  const d = store.last;
  if (!d) return;
  setText("packet-id", String(d.packet_id));
  setText("trial-id", d.trial_id == null ? "between trials" : String(d.trial_id));
  setText("h-perturbations", Array.isArray(d.perturbations) && d.perturbations.length
    ? d.perturbations.join(", ") : "none");
  const i = d.intention;
  setText("target-text", i && i.target_x != null
    ? `target ${i.target_id} at (${i.target_x.toFixed(0)}, ${i.target_y.toFixed(0)}) mm, ` +
      `${i.distance_to_target.toFixed(0)} mm away` : "no target (between trials)");
  controls.onPacket(d.packet_id);
}

async function pollSession() {
  try {
    const s = await get(`/api/sessions/${encodeURIComponent(code)}`);
    controls.onSession(s);
    if (stream) stream.expect(s.state === "playing");
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) showMessage(`session ${code} no longer exists`);
  }
  setTimeout(pollSession, POLL_MS);
}

// The page of a session that does not exist offers to create it instead of creating it silently
// (connecting a WebSocket would).
async function ensureSession() {
  try {
    return await get(`/api/sessions/${encodeURIComponent(code)}`);
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 404) throw err;
  }
  $("missing").hidden = false;
  $("live").hidden = true;
  document.querySelector(".missing-code").textContent = code;
  await new Promise((resolve) => { $("create-missing").onclick = resolve; });
  const created = await post("/api/sessions/create", { custom_code: code });
  $("missing").hidden = true;
  $("live").hidden = false;
  return created.session;
}

async function main() {
  $("code").textContent = code;
  document.title = `PhantomLink · ${code}`;
  controls = new Controls(code, { onError, onInfo: showMessage });
  let session;
  try {
    session = await ensureSession();
  } catch (err) {
    onError(err);
    setTimeout(main, 2000);
    return;
  }
  controls.wire();
  controls.onSession(session);
  raster = new Raster($("raster"), $("regions"), store);
  $("sort").onchange = (e) => { raster.setSort(e.target.value); schedule(); };
  reach = new Reach($("reach"), store);
  traces = new Traces($("traces"), store);
  stream = new Stream(code, await streamBases(), { onMetadata, onBatch, onStatus });
  stream.start();
  new Evaluation($("evaluation"), code).start();
  window.phantomlink = { store, stream, view, raster, reach, traces };   // for the console, the benchmark
  setInterval(updateText, TEXT_MS);
  setTimeout(pollSession, POLL_MS);
}

main();
