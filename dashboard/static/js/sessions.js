// The session list (/dashboard): create, open and delete sessions; the table refreshes every 2 s.
import { ApiError, del, get, hasFeature, post } from "./api.js";

const REFRESH_MS = 2000;
const $ = (id) => document.getElementById(id);

function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
}

const describe = (v) => (v == null ? "–" : typeof v === "object" ? (v.preset || JSON.stringify(v)) : String(v));

function row(code, s) {
  const tr = document.createElement("tr");
  tr.dataset.code = code;
  const link = document.createElement("a");
  link.href = `/dashboard/${encodeURIComponent(code)}`;
  link.textContent = code;
  const cells = [link, s.state, `${s.current_packet} / ${s.total_packets}`, `${s.speed}×`,
                 s.loop ? "on" : "off", describe(s.filter), describe(s.noise), String(s.active_connections)];
  for (const c of cells) {
    const td = document.createElement("td");
    td.append(c);
    tr.append(td);
  }
  const button = document.createElement("button");
  button.textContent = "Delete";
  button.className = "danger";
  button.onclick = () => remove(code);
  const td = document.createElement("td");
  td.append(button);
  tr.append(td);
  return tr;
}

async function refresh() {
  try {
    const doc = await get("/api/sessions");
    const entries = Object.entries(doc.sessions);
    $("sessions").tBodies[0].replaceChildren(...entries.map(([code, s]) => row(code, s)));
    $("empty").hidden = entries.length > 0;
    $("broker").textContent = `${doc.total_sessions} sessions`;
    if ($("message").dataset.source === "refresh") showMessage("");
  } catch (err) {
    showMessage(`cannot list sessions: ${err.message}`);
    $("message").dataset.source = "refresh";
  }
}

async function remove(code) {
  try {
    await del(`/api/sessions/${encodeURIComponent(code)}`);
  } catch (err) {
    showMessage(err.message);
  }
  refresh();
}

function createBody(form) {
  const f = new FormData(form);
  const body = { speed: Number(f.get("speed")), loop: f.get("loop") === "on", paused: f.get("paused") === "on" };
  if (f.get("code")) body.custom_code = f.get("code");
  if (f.get("filter_kind") && f.get("filter_id") !== "") body.filter = { [f.get("filter_kind")]: Number(f.get("filter_id")) };
  if (f.get("noise") !== "off") body.noise = f.get("noise");
  return body;
}

function perturbationList(form) {
  const text = new FormData(form).get("perturbations").trim();
  if (!text) return [];
  const list = JSON.parse(text);
  if (!Array.isArray(list)) throw new Error("perturbations: expected a JSON list");
  return list;
}

// Perturbations go through their own route after create; a server without it says 404 and the
// session is still created.
async function create(event) {
  event.preventDefault();
  const form = event.target;
  let perturbations;
  try {
    perturbations = perturbationList(form);
  } catch (err) {
    showMessage(`perturbations: ${err.message}`);
    return;
  }
  try {
    const created = await post("/api/sessions/create", createBody(form));
    const code = created.session_code;
    if (perturbations.length) await setPerturbations(code, perturbations);
    else showMessage(`created ${code}`);
    refresh();
  } catch (err) {
    showMessage(err instanceof ApiError ? `${err.status} ${err.message}` : String(err));
  }
}

async function setPerturbations(code, list) {
  if (!(await hasFeature("perturbations"))) {
    showMessage(`created ${code}; this server has no perturbation API, so none were set`);
    return;
  }
  try {
    await post(`/api/control/${encodeURIComponent(code)}/perturbations`, { perturbations: list });
    showMessage(`created ${code} with ${list.length} perturbations`);
  } catch (err) {
    const missing = err.status === 404 || err.status === 405;
    showMessage(missing ? `created ${code}; this server has no perturbation API, so none were set`
                        : `created ${code}; perturbations refused: ${err.message}`);
  }
}

$("create").addEventListener("submit", create);
refresh();
setInterval(refresh, REFRESH_MS);
