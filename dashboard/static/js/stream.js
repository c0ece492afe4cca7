// The page's side of the session's stream: where to connect, and the worker that does it.
import { serverConfig, token } from "./api.js";

// Stream base URLs to try, best first. Behind the front door the page's own origin serves /stream;
// on control's direct port the WS bridge's port does (control says which, /dashboard/config.json).
// The other one is kept as a fallback in case the guess is wrong.
export async function streamBases() {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  const same = `${scheme}//${window.location.host}`;
  let config = {};
  try { config = await serverConfig(); } catch { config = {}; }
  const direct = config.ws_port ? `${scheme}//${window.location.hostname}:${config.ws_port}` : null;
  const bases = config.front_door || !direct ? [same, direct] : [direct, same];
  return bases.filter((b, i) => b && bases.indexOf(b) === i);
}

export function streamUrl(base, code) {
  const url = new URL(`${base}/stream/${encodeURIComponent(code)}`);
  // msgpack: the bridge forwards the broker's bytes without re-encoding them (docs/dashboard.md).
  url.searchParams.set("format", "msgpack");
  const tok = token();
  if (tok) url.searchParams.set("token", tok);
  return url.toString();
}

// Runs the connection in a worker; calls onMetadata(meta), onBatch(packets) and onStatus(status).
export class Stream {
  constructor(code, bases, { onMetadata, onBatch, onStatus }) {
    this.health = null;            // the worker's latest figures (health.js summary + reconnects)
    this.worker = new Worker(new URL("./stream-worker.js", import.meta.url), { type: "module" });
    this.worker.onmessage = (event) => {
      const m = event.data;
      if (m.kind === "batch") {
        this.health = m.health;
        if (m.packets.length) onBatch(m.packets);
      } else if (m.kind === "metadata") {
        onMetadata(m.data);
      } else if (m.kind === "status") {
        onStatus(m);
      }
    };
    this.worker.onerror = (event) => console.error("stream worker failed:", event.message);
    this.urls = bases.map((base) => streamUrl(base, code));
  }

  start() { this.worker.postMessage({ kind: "start", urls: this.urls }); }
  expect(playing) { this.worker.postMessage({ kind: "expect", value: playing }); }
  stop() { this.worker.postMessage({ kind: "stop" }); }
}
