// Stream health as the page sees it: arrival rate, lateness, delivery delay, sequence gaps.
const RATE_WINDOW_MS = 2000;
const RING = 4096;                  // arrivals remembered (enough for 2 s at 2000 packets/s)

export class Health {
  constructor() {
    this.packets = 0;
    this.lastSeq = null;
    this.gaps = 0;                  // times the sequence jumped forward by more than one
    this.missing = 0;               // sequence numbers never received
    this.repeats = 0;               // sequence numbers received again or out of order
    this.undecodable = 0;           // messages that were not msgpack (or JSON)
    this.arrivals = new Float64Array(RING);
    this.lateness = new Float64Array(RING);  // ms, sent_at - scheduled_at
    this.delay = new Float64Array(RING);     // ms, arrival (page clock) - sent_at
  }

  // A new metadata message starts a new subscription: sequence numbers may jump legitimately.
  resetSequence() { this.lastSeq = null; }

  record(d) {
    const i = this.packets % RING;
    this.arrivals[i] = performance.now();
    this.lateness[i] = (d.sent_at - d.scheduled_at) * 1000;
    this.delay[i] = Date.now() - d.sent_at * 1000;
    this.packets += 1;
    const seq = d.sequence_number;
    if (this.lastSeq !== null) {
      if (seq > this.lastSeq + 1) {
        this.gaps += 1;
        this.missing += seq - this.lastSeq - 1;
      } else if (seq <= this.lastSeq) {
        this.repeats += 1;
      }
    }
    if (this.lastSeq === null || seq > this.lastSeq) this.lastSeq = seq;
  }

  // Figures over the last RATE_WINDOW_MS of arrivals.
  summary(now = performance.now()) {
    const n = Math.min(this.packets, RING);
    let count = 0, lateSum = 0, lateMax = -Infinity, delaySum = 0, delayMax = -Infinity;
    for (let k = 1; k <= n; k++) {
      const i = (this.packets - k) % RING;
      if (now - this.arrivals[i] > RATE_WINDOW_MS) break;
      count += 1;
      lateSum += this.lateness[i];
      lateMax = Math.max(lateMax, this.lateness[i]);
      delaySum += this.delay[i];
      delayMax = Math.max(delayMax, this.delay[i]);
    }
    return {
      rate: count / (RATE_WINDOW_MS / 1000),
      lateMean: count ? lateSum / count : null, lateMax: count ? lateMax : null,
      delayMean: count ? delaySum / count : null, delayMax: count ? delayMax : null,
      packets: this.packets, gaps: this.gaps, missing: this.missing, repeats: this.repeats,
      undecodable: this.undecodable, lastSeq: this.lastSeq,
    };
  }
}
