// The stream's worker: holds the WebSocket, decodes every message (msgpack), keeps the health
// figures, and hands the page at most one batch per frame period, so that 4,000 packets/s never
// reach the page's main thread one by one.
import { Decoder } from "../vendor/msgpack/index.mjs";
import { Connection } from "./connection.js";
import { Health } from "./health.js";

const BATCH_MS = 33;               // one batch per ~frame
const HEALTH_MS = 250;             // figures also go out while nothing arrives
const KEEP = 400;                  // packets per batch at most: the page shows no more (store.WINDOW)

const decoder = new Decoder();
const health = new Health();
let pending = [];
let connection = null;
let lastHealth = 0;

function onData(data) {
  let msg;
  try {
    msg = typeof data === "string" ? JSON.parse(data) : decoder.decode(new Uint8Array(data));
  } catch {
    health.undecodable += 1;
    return;
  }
  if (msg.type === "data") {
    const d = msg.data;
    health.record(d);
    d.spikes.spike_counts = Uint8Array.from(d.spikes.spike_counts, (c) => (c > 255 ? 255 : c));
    pending.push(d);
    if (pending.length >= 2 * KEEP) pending = pending.slice(-KEEP);
  } else if (msg.type === "metadata") {
    flush(performance.now());      // packets before it stay before it
    self.postMessage({ kind: "metadata", data: msg.data });
  }
}

function flush(now) {
  if (!pending.length && now - lastHealth < HEALTH_MS) return;
  lastHealth = now;
  const packets = pending.length > KEEP ? pending.slice(-KEEP) : pending;
  pending = [];
  self.postMessage({ kind: "batch", packets, health: { ...health.summary(now), reconnects: connection.reconnects } });
}

function onStatus(status) {
  if (status.state === "open") health.resetSequence();
  self.postMessage({ kind: "status", ...status });
}

self.onmessage = (event) => {
  const m = event.data;
  if (m.kind === "start") {
    connection = new Connection(m.urls, { onData, onStatus });
    connection.start();
    setInterval(() => flush(performance.now()), BATCH_MS);
  } else if (m.kind === "expect" && connection) {
    connection.expectData = m.value;
  } else if (m.kind === "stop" && connection) {
    connection.stop();
  }
};
