// One WebSocket to a session that reconnects by itself, with backoff (runs in the stream worker).

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
// No message for this long while the session should be playing: the connection is dead.
const SILENCE_MS = 15000;

// urls: the same stream on each candidate origin, best first. onData(data) gets every message
// (ArrayBuffer or string); onStatus({state, detail, url, reconnects}) every change.
export class Connection {
  constructor(urls, { onData, onStatus }) {
    this.urls = urls;
    this.index = 0;
    this.found = false;             // a connection on urls[index] has opened once
    this.onData = onData;
    this.onStatus = onStatus;
    this.ws = null;
    this.attempts = 0;              // failed attempts since the last good connection
    this.reconnects = 0;
    this.expectData = true;
    this.stopped = false;
    this.lastMessage = 0;
    this.timer = null;
    this.watchdog = setInterval(() => this.checkSilence(), 1000);
  }

  status(state, detail = "") {
    this.onStatus({ state, detail, url: this.urls[this.index], reconnects: this.reconnects });
  }

  start() {
    if (this.stopped) return;
    const ws = new WebSocket(this.urls[this.index]);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.opened = false;
    this.status("connecting");
    ws.onopen = () => {
      this.opened = this.found = true;
      this.attempts = 0;
      this.lastMessage = performance.now();
      this.status("open");
    };
    ws.onmessage = (event) => {
      this.lastMessage = performance.now();
      this.onData(event.data);
    };
    ws.onclose = (event) => this.closed(ws, event);
  }

  closed(ws, event) {
    if (ws !== this.ws || this.stopped) return;
    this.ws = null;
    const final = FINAL_CODES.get(event.code);
    if (final) {
      this.status("closed", `${final} (${event.code} ${event.reason})`);
      return;
    }
    // No origin has worked yet: perhaps the wrong one for /stream, try the next. Once one has
    // worked, stick to it (a restarting bridge is no reason to change).
    if (!this.found) this.index = (this.index + 1) % this.urls.length;
    this.attempts += 1;
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(this.attempts - 1, 5));
    const jittered = delay * (0.75 + Math.random() * 0.5);
    this.reconnects += 1;
    this.status("reconnecting", `closed ${event.code}${event.reason ? ` ${event.reason}` : ""}; ` +
                `retry in ${(jittered / 1000).toFixed(1)} s`);
    this.timer = setTimeout(() => this.start(), jittered);
  }

  checkSilence() {
    if (this.ws && this.opened && this.expectData && performance.now() - this.lastMessage > SILENCE_MS) {
      this.ws.close(4000, "no data");    // onclose schedules the reconnect
    }
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.watchdog);
    if (this.ws) this.ws.close(1000, "page closed");
  }
}
