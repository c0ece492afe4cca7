// The playback controls of one session: each input becomes one control-API call, and the inputs
// follow the server's state (unless the user is editing them).
import { ApiError, get, hasFeature, post, trials } from "./api.js";

const $ = (id) => document.getElementById(id);

export class Controls {
  constructor(code, { onError, onInfo }) {
    this.code = code;
    this.base = `/api/control/${encodeURIComponent(code)}`;
    this.onError = onError;
    this.onInfo = onInfo;
    this.dragging = false;
  }

  send(action, body) {
    return post(`${this.base}/${action}`, body).catch((err) => { this.onError(err); throw err; });
  }

  wire() {
    $("pause").onclick = () => this.send("pause").then((r) => this.onSession(r.session)).catch(() => {});
    $("resume").onclick = () => this.send("resume").then((r) => this.onSession(r.session)).catch(() => {});
    $("loop").onchange = (e) => this.send("loop", { loop: e.target.checked }).catch(() => {});
    const seek = $("seek-packet");
    seek.oninput = () => { this.dragging = true; $("seek-label").textContent = seek.value; };
    seek.onchange = () => {
      this.dragging = false;
      this.send("seek", { packet_id: Number(seek.value) }).then((r) => this.onSession(r.session)).catch(() => {});
    };
    $("seek-trial").onchange = (e) => this.seekTrial(e.target);
    $("speed").onchange = (e) => this.setSpeed(Number(e.target.value));
    for (const b of document.querySelectorAll(".speed-preset")) b.onclick = () => this.setSpeed(Number(b.dataset.speed));
    $("filter-apply").onclick = () => this.setFilter();
    $("noise").onchange = (e) => this.send("noise", { noise: e.target.value === "off" ? null : e.target.value }).catch(() => {});
    $("perturbations-apply").onclick = () => this.setPerturbations();
    this.loadTrials();
    this.loadPerturbations();
  }

  async loadTrials() {
    try {
      const list = await trials();
      const select = $("seek-trial");
      for (const t of list) {
        const option = document.createElement("option");
        option.value = String(t.first_bin);
        option.textContent = `trial ${t.trial_id} (target ${t.target_id ?? "–"}, packet ${t.first_bin})`;
        select.append(option);
      }
    } catch (err) { this.onError(err); }
  }

  seekTrial(select) {
    if (select.value === "") return;
    this.send("seek", { packet_id: Number(select.value) }).then((r) => this.onSession(r.session)).catch(() => {});
    select.value = "";
  }

  setSpeed(speed) {
    $("speed").value = String(speed);
    this.send("speed", { speed }).catch(() => {});
  }

  setFilter() {
    const kind = $("filter-kind").value;
    const id = $("filter-id").value;
    const body = kind && id !== "" ? { [kind]: Number(id) } : {};
    this.send("filter", body).then((r) => this.onSession(r.session)).catch(() => {});
  }

  // Perturbations are optional on a server (their route may not exist): say so instead of failing.
  async loadPerturbations() {
    if (!(await hasFeature("perturbations"))) {
      this.perturbationsUnavailable();
      return;
    }
    try {
      const doc = await get(`${this.base}/perturbations`);
      const list = Array.isArray(doc) ? doc : doc.perturbations;
      if (Array.isArray(list)) $("perturbations").value = JSON.stringify(list);
    } catch (err) {
      if (routeMissing(err)) this.perturbationsUnavailable();
    }
  }

  perturbationsUnavailable() {
    $("perturbations").disabled = true;
    $("perturbations-apply").disabled = true;
    $("perturbations-status").textContent = "this server has no perturbation API";
  }

  setPerturbations() {
    let list;
    try {
      list = JSON.parse($("perturbations").value || "[]");
      if (!Array.isArray(list)) throw new Error("expected a JSON list");
    } catch (err) {
      $("perturbations-status").textContent = `not a JSON list: ${err.message}`;
      return;
    }
    post(`${this.base}/perturbations`, { perturbations: list })
      .then(() => { $("perturbations-status").textContent = `${list.length} set`; })
      .catch((err) => {
        if (routeMissing(err)) this.perturbationsUnavailable();
        else $("perturbations-status").textContent = err.message;
      });
  }

  // Inputs follow the server's session map (from REST answers, polls and metadata).
  onSession(s) {
    if (!s) return;
    const active = document.activeElement;
    const state = $("state");
    state.textContent = s.state;
    state.dataset.state = s.state;
    const seek = $("seek-packet");
    seek.max = String(Math.max(0, (s.total_packets ?? 1) - 1));
    if (!this.dragging && active !== seek) {
      seek.value = String(s.current_packet);
      $("seek-label").textContent = String(s.current_packet);
    }
    if (active !== $("speed")) $("speed").value = String(s.speed);
    $("loop").checked = Boolean(s.loop);
    if (active !== $("filter-kind") && active !== $("filter-id")) {
      const f = s.filter || {};
      const kind = "target_id" in f ? "target_id" : "trial_id" in f ? "trial_id" : "";
      $("filter-kind").value = kind;
      $("filter-id").value = kind ? String(f[kind]) : "";
    }
    if (active !== $("noise")) $("noise").value = noisePreset(s.noise);
    if (s.packets_skipped != null) $("h-skipped").textContent = String(s.packets_skipped);
  }

  // The packet slider follows the stream while playing.
  onPacket(packetId) {
    const seek = $("seek-packet");
    if (this.dragging || document.activeElement === seek) return;
    seek.value = String(packetId);
    $("seek-label").textContent = String(packetId);
  }
}

// A 404 or 405 for the route itself, not for an unknown session ("no session 'x'").
function routeMissing(err) {
  return err instanceof ApiError && (err.status === 405 || (err.status === 404 && !/session/i.test(err.message)));
}

function noisePreset(noise) {
  if (!noise) return "off";
  if (typeof noise === "string") return noise;
  return noise.preset || "off";
}
