// The JSON API under /api, with HTTP basic auth as RabbitMQ's UI uses it.
// Credentials are kept in sessionStorage (gone when the tab closes).

const KEY = "warren.auth";

/** An error answer of the API: its status and RabbitMQ's error/reason. */
export class ApiError extends Error {
  constructor(status, error, reason) {
    super(reason || error || `HTTP ${status}`);
    this.status = status;
    this.error = error;
  }
}

function b64(text) {
  const bytes = new TextEncoder().encode(text);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

let onLoggedOut = () => {};
/** Called when the API refuses the stored login (it changed or was deleted). */
export function whenLoggedOut(f) { onLoggedOut = f; }

/** Calls the API; resolves to the parsed JSON (null when empty). */
export async function api(method, path, body, auth = sessionStorage.getItem(KEY), extra = {}) {
  const headers = { ...extra, "X-Requested-With": "XMLHttpRequest" };
  if (auth) headers.Authorization = `Basic ${auth}`;
  const init = { method, headers, credentials: "omit", cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let v = null;
  if (text) {
    try { v = JSON.parse(text); } catch { v = text; }
  }
  if (!r.ok) {
    const e = new ApiError(r.status, v && v.error, v && v.reason);
    e.body = v;
    if (r.status === 401 && v && v.reason === "Login failed" && auth === sessionStorage.getItem(KEY)) {
      logout();
      onLoggedOut();
    }
    throw e;
  }
  return v;
}

export const get = (p) => api("GET", p);
export const put = (p, b) => api("PUT", p, b ?? {});
export const post = (p, b) => api("POST", p, b ?? {});
export const del = (p) => api("DELETE", p);

/** A path segment, escaped as the API expects (vhost "/" is "%2F"). */
export const seg = (s) => encodeURIComponent(s);

/** A query string from an object, leaving out empty values. */
export function query(o) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(o)) if (v !== undefined && v !== null && v !== "") p.set(k, String(v));
  const s = p.toString();
  return s ? `?${s}` : "";
}

let me = null;

/** The virtual host the lists are narrowed to ("" for all), kept per tab. */
export const chosenVhost = {
  get: () => sessionStorage.getItem("warren.vhost") || "",
  set: (v) => (v ? sessionStorage.setItem("warren.vhost", v) : sessionStorage.removeItem("warren.vhost")),
};

/** A listing's path: `all` for every vhost, else `one(vhost)`. */
export function inVhost(all, one) {
  const v = chosenVhost.get();
  return v ? one(seg(v)) : all;
}

/** Logs in: checks the credentials with /api/whoami and keeps them. */
export async function login(user, password) {
  const auth = b64(`${user}:${password}`);
  const who = await api("GET", "/api/whoami", undefined, auth);
  sessionStorage.setItem(KEY, auth);
  me = who;
  return who;
}

/** Forgets the credentials. */
export function logout() {
  sessionStorage.removeItem(KEY);
  me = null;
}

/** The logged-in user ({name, tags}), or null; asks the API once per load. */
export async function whoami() {
  if (me) return me;
  if (!sessionStorage.getItem(KEY)) return null;
  try {
    me = await api("GET", "/api/whoami");
  } catch {
    logout();
  }
  return me;
}

function tags() {
  const t = me ? me.tags : [];
  return Array.isArray(t) ? t : String(t).split(",").map((s) => s.trim());
}

/** What the user's tags let the UI offer, as RabbitMQ's management tags do. */
export const can = {
  /** Users, vhosts, permissions, definitions, other users' connections. */
  get admin() { return tags().includes("administrator"); },
  /** Policies. */
  get policies() { return tags().some((t) => t === "administrator" || t === "policymaker"); },
  /** Node figures and everything in every vhost. */
  get monitor() { return tags().some((t) => t === "administrator" || t === "monitoring"); },
  /** Changes in vhosts (declare, delete, purge, publish, get): not for a
   * read-only user, whose only tag is monitoring. The API still checks the
   * user's vhost permissions on every change. */
  get change() { return tags().some((t) => t === "administrator" || t === "management" || t === "policymaker"); },
};
