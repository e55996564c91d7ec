// A listing page: sortable columns, a name filter (regex optional) and
// pages, all done by the API (?name=&use_regex=&sort=&sort_reverse=&page=&page_size=),
// so 10,000 queues cost the browser one page of rows.

import { get, query } from "./api.js";
import { h, fill, uid, fmtNum, every } from "./dom.js";

// Filter, sort and page of each listing, kept while the tab is open.
const states = new Map();

/**
 * Renders a listing into `root`.
 *  key: the listing's name (for its kept state);
 *  path: the API path; columns: [{key, label, sort?, render?(item)}];
 *  columnsParam: the API's `columns` (fields to fetch), optional;
 *  filterLabel: the filter's label, if not "Filter <label> by name".
 * Returns {refresh()}.
 */
export function listing(root, { key, path, columns, columnsParam, label, filterLabel }) {
  const st = states.get(key) || { name: "", regex: false, sort: "", reverse: false, page: 1, size: 100 };
  states.set(key, st);
  const filterId = uid("filter");
  const input = h("input", { id: filterId, type: "search", value: st.name, placeholder: "name", autocomplete: "off" });
  const regex = h("input", { type: "checkbox", id: uid("re"), checked: st.regex });
  const size = h("select", { id: uid("size"), "aria-label": "Rows per page" },
    [20, 50, 100, 500].map((n) => h("option", { value: n, selected: n === st.size }, String(n))));
  const status = h("p", { class: "count", role: "status" });
  const table = h("table", { class: "list", dataset: { state: "loading" } });
  const pager = h("nav", { class: "pager", "aria-label": `${label} pages` });
  let timer = 0;
  const apply = () => { clearTimeout(timer); st.name = input.value; st.regex = regex.checked; st.page = 1; refresh(); };
  input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(apply, 250); });
  input.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); apply(); } });
  regex.addEventListener("change", apply);
  size.addEventListener("change", () => { st.size = Number(size.value); st.page = 1; refresh(); });

  root.classList.add("listing");
  fill(root,
    h("form", { class: "filter", role: "search", onsubmit: (e) => { e.preventDefault(); apply(); } },
      h("label", { for: filterId }, filterLabel || `Filter ${label} by name`), input,
      h("span", { class: "check" }, regex, h("label", { for: regex.id }, "Regex")),
      h("label", { for: size.id }, "Rows"), size),
    status, h("div", { class: "table-wrap" }, table), pager);

  let seq = 0;
  let shown = "";
  async function refresh(background = false) {
    const mine = ++seq;
    const started = performance.now();
    if (!background) table.dataset.state = "loading";
    let v;
    try {
      v = await get(path + query({
        page: st.page, page_size: st.size, name: st.name, use_regex: st.regex ? "true" : "",
        sort: st.sort, sort_reverse: st.reverse ? "true" : "", columns: columnsParam,
      }));
    } catch (e) {
      if (mine !== seq) return;
      if (e.status === 400 && st.page > 1 && /page out of range/.test(e.message)) { st.page = 1; return refresh(); }
      table.dataset.state = "error";
      fill(status, h("span", { class: "msg error" }, `Cannot list ${label}: ${e.message}`));
      return;
    }
    if (mine !== seq) return;
    // A background refresh re-renders only what changed.
    const text = JSON.stringify(v);
    if (background && text === shown) return;
    shown = text;
    render(v);
    const ms = performance.now() - started;
    table.dataset.state = "ready";
    table.dataset.ms = ms.toFixed(1);
    table.dataset.rows = String(v.items.length);
    table.dataset.filtered = String(v.filtered_count);
  }

  function header() {
    return h("thead", {}, h("tr", {}, columns.map((c) => {
      if (c.sort === false) return h("th", { scope: "col" }, c.label);
      const k = c.sort || c.key;
      const on = st.sort === k;
      return h("th", { scope: "col", "aria-sort": on ? (st.reverse ? "descending" : "ascending") : null },
        h("button", {
          type: "button", class: "sort",
          onclick: () => { if (on) st.reverse = !st.reverse; else { st.sort = k; st.reverse = false; } refresh(); },
        }, c.label, h("span", { "aria-hidden": "true" }, on ? (st.reverse ? " ▼" : " ▲") : "")));
    })));
  }

  function render(v) {
    fill(status, `${fmtNum(v.filtered_count)} ${label}` +
      (v.filtered_count !== v.total_count ? ` match (of ${fmtNum(v.total_count)})` : "") +
      (v.page_count > 1 ? `, page ${v.page} of ${v.page_count}` : ""));
    const body = v.items.length
      ? v.items.map((it) => h("tr", {}, columns.map((c, i) => {
          const val = c.render ? c.render(it) : fmtCell(pick(it, c.key));
          return i === 0 ? h("th", { scope: "row" }, val) : h("td", {}, val);
        })))
      : [h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, `No ${label}.`))];
    fill(table, h("caption", { class: "sr-only" }, label), header(), h("tbody", {}, body));
    const btn = (text, page, disabled) => h("button", { type: "button", disabled, onclick: () => { st.page = page; refresh(); } }, text);
    fill(pager, v.page_count > 1 ? [
      btn("« First", 1, v.page <= 1), btn("‹ Previous", v.page - 1, v.page <= 1),
      h("span", {}, ` Page ${v.page} of ${v.page_count} `),
      btn("Next ›", v.page + 1, v.page >= v.page_count), btn("Last »", v.page_count, v.page >= v.page_count),
    ] : []);
  }

  refresh();
  // Kept current every 10 s, but not while the keyboard focus is in the
  // listing (re-rendering would take it away).
  every(10000, () => { if (!root.contains(document.activeElement)) refresh(true); }, true);
  return { refresh: () => refresh() };
}

function pick(o, dotted) {
  return dotted.split(".").reduce((v, k) => (v == null ? v : v[k]), o);
}

function fmtCell(v) {
  if (typeof v === "number") return fmtNum(v);
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (v && typeof v === "object") return JSON.stringify(v);
  return v ?? "";
}

export { pick };
