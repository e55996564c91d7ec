// Small DOM helpers: element building, formatting, messages, dialogs.

/** Builds an element: h("a", {href: "#/"}, "text", child, ...). Attributes
 * starting with "on" are listeners; false/null attributes are left out. */
export function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith("on") && typeof v === "function") e.addEventListener(k.slice(2), v);
    else if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k in e && typeof v !== "string") e[k] = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  append(e, children);
  return e;
}

function append(e, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : String(c));
  }
}

/** Replaces an element's children. */
export function fill(e, ...children) {
  e.replaceChildren();
  append(e, children);
  return e;
}

/** Fills `el` with make(data), unless it already shows this data: a
 * periodic refresh then leaves its buttons and links (and the keyboard
 * focus on them) alone. */
export function update(el, data, make) {
  const sig = JSON.stringify(data);
  if (el.dataset.sig === sig) return;
  el.dataset.sig = sig;
  fill(el, make(data));
}

let ids = 0;
/** A unique element id. */
export const uid = (p = "f") => `${p}-${++ids}`;

/** A labelled form field: label + input (or select/textarea). */
export function field(label, input, hint) {
  if (!input.id) input.id = uid();
  const hintEl = hint ? h("span", { class: "hint", id: uid("hint") }, hint) : null;
  if (hintEl) input.setAttribute("aria-describedby", hintEl.id);
  return h("div", { class: "field" }, h("label", { for: input.id }, label), input, hintEl);
}

/** A select with options [[value, label]] or [value]. */
export function select(name, options, value) {
  return h("select", { name },
    options.map((o) => {
      const [v, l] = Array.isArray(o) ? o : [o, o];
      return h("option", { value: v, selected: v === value }, l);
    }));
}

export function fmtNum(n) {
  if (n === undefined || n === null || n === "") return "–";
  if (typeof n !== "number") return String(n);
  return n.toLocaleString("en", { maximumFractionDigits: 1 });
}

export function fmtRate(r) {
  return r === undefined || r === null ? "–" : `${fmtNum(r)}/s`;
}

export function fmtBytes(n) {
  if (typeof n !== "number") return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/** A value of arbitrary JSON, readable. */
export function fmtValue(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

/** A definition list of key/value pairs. */
export function facts(pairs) {
  return h("dl", { class: "facts" },
    pairs.filter(Boolean).map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v instanceof Node ? v : fmtValue(v)))));
}

/** A key/value table of an object (arguments, client properties...). */
export function kvTable(obj, caption) {
  const entries = Object.entries(obj || {});
  if (!entries.length) return h("p", { class: "muted" }, `No ${caption.toLowerCase()}.`);
  return h("table", { class: "kv" }, h("caption", {}, caption),
    h("tbody", {}, entries.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, fmtValue(v))))));
}

/**
 * Shows the result of an action (kind: "ok" or "error"): at the end of
 * `near` (the form, panel or listing the action was started from), where
 * the person is looking and where it covers nothing; else in the status
 * area at the top of the page (after an action that left its page).
 */
export function notify(text, kind = "ok", near = null) {
  if (near && near.isConnected) {
    const old = near.querySelector(":scope > .inline-msg");
    const m = h("p", { class: `msg ${kind} inline-msg`, role: kind === "error" ? "alert" : "status" }, text);
    if (old) old.replaceWith(m); else near.append(m);
    m.scrollIntoView({ block: "nearest" });
    return;
  }
  const n = document.getElementById("notice");
  fill(n, h("p", { class: `msg ${kind}`, role: kind === "error" ? "alert" : null }, h("span", {}, text),
    h("button", { type: "button", class: "small link", "aria-label": "Dismiss", onclick: () => fill(n) }, "✕")));
  clearTimeout(notify.timer);
  if (kind === "ok") notify.timer = setTimeout(() => fill(n), 8000);
}

// What the person last clicked or submitted (outside confirmation
// dialogs): where an action's result is shown. (Not every browser focuses
// a clicked button.)
let lastAction = null;
document.addEventListener("click", (e) => { if (!e.target.closest("dialog")) lastAction = e.target; }, true);
document.addEventListener("submit", (e) => { lastAction = e.target; }, true);

/**
 * Runs an action, reporting success or the API's refusal next to the form,
 * panel or listing it was started from. With
 * `leaves`, success is reported in the window's status area instead, as
 * the action leaves the page (a deletion).
 */
export async function act(what, f, { leaves = false } = {}) {
  const from = lastAction && lastAction.isConnected ? lastAction : document.activeElement;
  const near = from && from.closest("form, .panel, .listing");
  try {
    const r = await f();
    notify(what, "ok", leaves ? null : near);
    return r ?? true;
  } catch (e) {
    notify(`${e.status ? `Refused (${e.status}): ` : ""}${e.message}`, "error", near);
    return false;
  }
}

/** Asks to confirm in a modal dialog; resolves to true or false. */
export function confirmDialog(text, yes = "Delete") {
  return new Promise((resolve) => {
    const d = h("dialog", { class: "confirm", "aria-labelledby": "confirm-text" },
      h("p", { id: "confirm-text" }, text),
      h("div", { class: "buttons" },
        h("button", { type: "button", class: "danger", onclick: () => { d.close(); resolve(true); } }, yes),
        h("button", { type: "button", onclick: () => { d.close(); resolve(false); } }, "Cancel")));
    d.addEventListener("close", () => { d.remove(); resolve(false); });
    document.body.append(d);
    d.showModal();
  });
}

/** A collapsible section. */
export function section(title, ...content) {
  return h("section", { class: "panel" }, h("h2", {}, title), ...content);
}

/** A link to a hash route. */
export const link = (href, text) => h("a", { href }, text);

// Timers of the page shown; cleared when another is shown.
let timers = [];
/** Runs f now (unless later is set) and every ms while the page is shown
 * (not while the tab is hidden). */
export function every(ms, f, later = false) {
  if (!later) f();
  timers.push(setInterval(() => { if (!document.hidden) f(); }, ms));
}
/** Stops the shown page's timers. */
export function clearTimers() {
  timers.forEach(clearInterval);
  timers = [];
}
