// The live page of one session (/dashboard/{code}): wires the stream to the views and draws them
// on requestAnimationFrame, so packets only update typed arrays and never touch the DOM.
import { ApiError, get, post } from "./api.js";
import { Controls } from "./controls.js";
import { Evaluation } from "./evaluation.js";
import { Health } from "./health.js";
import { Raster } from "./raster.js";
import { Reach } from "./reach.js";
import { Store } from "./store.js";
import { Stream, streamBases } from "./stream.js";
import { Traces } from "./traces.js";

const TEXT_MS = 250;              // figures in text update at 4 Hz
const POLL_MS = 1000;             // the session's state from control (pause, skipped, ...)
const $ = (id) => document.getElementById(id);

const code = decodeURIComponent(window.location.pathname.replace(/\/+$/, "").split("/").pop());
const store = new Store();
const health = new Health();
const view = { frames: 0, lastText: 0 };
let raster, reach, traces, controls, stream;

function showMessage(text) {
  const box = $("message");
  box.textContent = text;
  box.hidden = !text;
}

function onError(err) {
  showMessage(err instanceof ApiError ? `${err.status || ""} ${err.message}`.trim() : String(err));
}

function onMessage(msg) {
  if (msg.type === "data") {
    store.push(msg.data);
    health.record(msg.data);
  } else if (msg.type === "metadata") {
    store.setMeta(msg.data);
    if (msg.data.session) controls.onSession(msg.data.session);
  }
}

function onStatus(status) {
  const badge = $("connection");
  badge.textContent = status.state;
  badge.dataset.state = status.state;
  badge.title = status.detail || status.url || "";
  if (status.state === "open") health.resetSequence();
  if (status.state === "closed") showMessage(status.detail);
}

function frame(now) {
  const drew = [raster.draw(), reach.draw(), traces.draw(now)].some(Boolean);
  if (drew) view.frames += 1;
  if (now - view.lastText > TEXT_MS) {
    view.lastText = now;
    updateText(now);
  }
  requestAnimationFrame(frame);
}

function updateText(now) {
  const h = health.summary(now);
  const ms = (v) => (v == null ? "–" : `${v.toFixed(1)} ms`);
  $("packets-count").textContent = String(h.packets);
  $("h-rate").textContent = `${h.rate.toFixed(1)} packets/s`;
  $("h-late").textContent = h.lateMean == null ? "–" : `${ms(h.lateMean)} mean, ${ms(h.lateMax)} max`;
  $("h-delay").textContent = h.delayMean == null ? "–" : `${ms(h.delayMean)} mean, ${ms(h.delayMax)} max`;
  $("h-gaps").textContent = String(h.gaps);
  $("h-missing").textContent = String(h.missing);
  $("h-repeats").textContent = String(h.repeats);
  $("h-frames").textContent = String(view.frames);
  $("h-reconnects").textContent = String(stream ? stream.reconnects : 0);
  const d = store.last;
  if (!d) return;
  $("packet-id").textContent = String(d.packet_id);
  $("trial-id").textContent = d.trial_id == null ? "between trials" : String(d.trial_id);
  $("h-perturbations").textContent = Array.isArray(d.perturbations) && d.perturbations.length
    ? d.perturbations.join(", ") : "none";
  const i = d.intention;
  $("target-text").textContent = i && i.target_x != null
    ? `target ${i.target_id} at (${i.target_x.toFixed(0)}, ${i.target_y.toFixed(0)}) mm, ` +
      `${i.distance_to_target.toFixed(0)} mm away` : "no target (between trials)";
  controls.onPacket(d.packet_id);
}

async function pollSession() {
  try {
    const s = await get(`/api/sessions/${encodeURIComponent(code)}`);
    controls.onSession(s);
    if (stream) stream.expectData = s.state === "playing";
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
  $("sort").onchange = (e) => raster.setSort(e.target.value);
  reach = new Reach($("reach"), store);
  traces = new Traces($("traces"), store);
  stream = new Stream(code, await streamBases(), { onMessage, onStatus });
  stream.start();
  new Evaluation($("evaluation"), code).start();
  window.phantomlink = { store, health, stream, view };   // for the console and the benchmark
  requestAnimationFrame(frame);
  setTimeout(pollSession, POLL_MS);
}

main();
