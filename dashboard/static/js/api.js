// The REST client of the dashboard: the access token (contract 7) and JSON requests to control.
const TOKEN_KEY = "phantomlink-token";    // shared with /docs (Swagger UI) in the same tab

// The token comes from the page's own URL (?token=...), is kept for the tab in sessionStorage and
// then removed from the address bar, so that it is not left in screenshots or shared links.
export function token() {
  const url = new URL(window.location.href);
  const fromUrl = url.searchParams.get("token");
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    url.searchParams.delete("token");
    window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// One request; resolves to the parsed JSON body, rejects with ApiError (status 0: no answer).
export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const tok = token();
  if (tok) headers.Authorization = `Bearer ${tok}`;
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let reply;
  try {
    reply = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "unreachable", `control did not answer: ${err.message}`);
  }
  const text = await reply.text();
  let doc = null;
  try { doc = text ? JSON.parse(text) : null; } catch { doc = null; }
  if (!reply.ok) {
    const error = (doc && doc.error) || {};
    throw new ApiError(reply.status, error.code || String(reply.status),
                       error.message || `${method} ${path}: HTTP ${reply.status}`);
  }
  return doc;
}

export const get = (path) => api("GET", path);
export const post = (path, body = {}) => api("POST", path, body);
export const del = (path) => api("DELETE", path);

// The trials of the recording, fetched once per page.
let trialsPromise = null;
export function trials() {
  trialsPromise ??= get("/api/trials").then((doc) => doc.trials)
    .catch((err) => { trialsPromise = null; throw err; });
  return trialsPromise;
}

// What control says about itself (/dashboard/config.json): the WS bridge's port, whether this
// page came through the front door, and which optional routes exist. Fetched once per page.
let configPromise = null;
export function serverConfig() {
  configPromise ??= get("/dashboard/config.json").catch((err) => { configPromise = null; throw err; });
  return configPromise;
}

export async function hasFeature(name) {
  try {
    return Boolean((await serverConfig()).features?.[name]);
  } catch {
    return false;
  }
}
