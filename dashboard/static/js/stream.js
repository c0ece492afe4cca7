// The session's WebSocket: where to connect, msgpack decoding, and reconnecting with backoff.
import { decode } from "../vendor/msgpack/index.mjs";
import { serverConfig, token } from "./api.js";

// Close codes after which connecting again cannot help (docs/ws.md): a bad request, an unknown
// filter target, a filter conflict, and a deleted session (reconnecting would re-create it).
const FINAL_CODES = new Map([
  [4400, "refused: bad request"],
  [4404, "refused: unknown target or trial"],
  [4409, "refused: the session is in use with another filter"],
  [4410, "the session was deleted"],
]);
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10000;
// No message for this long while connected: treat the connection as dead and reconnect.
const SILENCE_MS = 15000;

// Stream base URLs to try, best first. Behind the front door (control saw X-Forwarded-* headers)
// the page's own origin serves /stream; on control's direct port the WS bridge's port does. The
// other one is kept as a fallback in case the guess is wrong.
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

// Keeps one WebSocket open to a session; calls onMessage(msg) per decoded message and
// onStatus({state, detail, url, attempts}) when the connection changes.
export class Stream {
  constructor(code, bases, { onMessage, onStatus }) {
    this.code = code;
    this.bases = bases;
    this.baseIndex = 0;
    this.onMessage = onMessage;
    this.onStatus = onStatus;
    this.ws = null;
    this.attempts = 0;
    this.reconnects = 0;
    this.stopped = false;
    this.found = false;             // a connection on bases[baseIndex] has opened
    this.lastMessage = 0;
    this.timer = null;
    this.watchdog = setInterval(() => this.checkSilence(), 1000);
  }

  start() {
    if (this.stopped) return;
    const url = streamUrl(this.bases[this.baseIndex], this.code);
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.opened = false;
    this.attempts += 1;
    this.onStatus({ state: "connecting", url, attempts: this.attempts });
    ws.onopen = () => {
      this.opened = true;
      this.found = true;
      this.lastMessage = performance.now();
      this.onStatus({ state: "open", url, attempts: this.attempts });
    };
    ws.onmessage = (event) => this.receive(event.data);
    ws.onclose = (event) => this.closed(ws, event);
  }

  receive(data) {
    this.lastMessage = performance.now();
    let msg;
    try {
      msg = typeof data === "string" ? JSON.parse(data) : decode(new Uint8Array(data));
    } catch (err) {
      console.warn("undecodable stream message", err);
      return;
    }
    if (this.attempts !== 0 && msg.type === "metadata") this.attempts = 0;   // healthy again
    this.onMessage(msg);
  }

  closed(ws, event) {
    if (ws !== this.ws || this.stopped) return;
    this.ws = null;
    const final = FINAL_CODES.get(event.code);
    if (final) {
      this.onStatus({ state: "closed", detail: `${final} (${event.code} ${event.reason})` });
      return;
    }
    // No base has worked yet: perhaps the wrong origin for /stream; try the next one. Once one
    // has worked, stick to it (a restarting bridge is not a reason to change).
    if (!this.found) this.baseIndex = (this.baseIndex + 1) % this.bases.length;
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(this.attempts, 5));
    const jittered = delay * (0.75 + Math.random() * 0.5);
    this.reconnects += 1;
    this.onStatus({ state: "reconnecting", detail: `closed ${event.code}${event.reason ? ` ${event.reason}` : ""}; ` +
                    `retry in ${(jittered / 1000).toFixed(1)} s`, attempts: this.attempts });
    this.timer = setTimeout(() => this.start(), jittered);
  }

  checkSilence() {
    if (this.ws && this.opened && this.expectData && performance.now() - this.lastMessage > SILENCE_MS) {
      this.ws.close(4000, "no data");    // onclose schedules the reconnect
    }
  }

  // Restart after a final close (e.g. the user re-created a deleted session).
  restart() {
    this.stopped = false;
    this.attempts = 0;
    if (!this.ws) this.start();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.watchdog);
    if (this.ws) this.ws.close(1000, "page closed");
  }
}
