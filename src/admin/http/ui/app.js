// The management UI's entry: login, navigation and the hash router
// (#/queues, #/queues/<vhost>/<name>, ...). Each page is a function
// (main element, route parameters) in its own module.

import { login, logout, whoami, can, whenLoggedOut, chosenVhost } from "./api.js";
import { h, fill, field, select, clearTimers } from "./dom.js";
import { vhostNames } from "./forms.js";
import { overviewPage, refreshAlarms } from "./overview.js";
import { connectionsPage, connectionPage, channelsPage, consumersPage, exchangesPage, exchangePage } from "./pages.js";
import { queuesPage, queuePage } from "./queue.js";
import { usersPage, vhostsPage, policiesPage, definitionsPage } from "./admin.js";

const routes = [
  [/^$/, overviewPage, "Overview"],
  [/^connections$/, connectionsPage, "Connections"],
  [/^connections\/(.+)$/, connectionPage, "Connection"],
  [/^channels$/, channelsPage, "Channels"],
  [/^exchanges$/, exchangesPage, "Exchanges"],
  [/^exchanges\/([^/]+)\/([^/]*)$/, exchangePage, "Exchange"],
  [/^queues$/, queuesPage, "Queues"],
  [/^queues\/([^/]+)\/([^/]+)$/, queuePage, "Queue"],
  [/^consumers$/, consumersPage, "Consumers"],
  [/^users$/, usersPage, "Users"],
  [/^vhosts$/, vhostsPage, "Virtual hosts"],
  [/^policies$/, policiesPage, "Policies"],
  [/^definitions$/, definitionsPage, "Definitions"],
];

const nav = () => [
  ["#/", "Overview"], ["#/connections", "Connections"], ["#/channels", "Channels"],
  ["#/exchanges", "Exchanges"], ["#/queues", "Queues"], ["#/consumers", "Consumers"],
  can.admin && ["#/users", "Users"], ["#/vhosts", "Virtual hosts"],
  ["#/policies", "Policies"], can.admin && ["#/definitions", "Definitions"],
].filter(Boolean);

/** The header's choice of virtual host, narrowing the lists. */
async function vhostChooser() {
  const names = await vhostNames();
  if (chosenVhost.get() && !names.includes(chosenVhost.get())) chosenVhost.set("");
  const s = select("vhost", [["", "All"], ...names.map((n) => [n, n])], chosenVhost.get());
  s.id = "vhost-choice";
  s.addEventListener("change", () => { chosenVhost.set(s.value); show(); });
  return h("div", { class: "vhost-choice" }, h("label", { for: s.id }, "Virtual host"), s);
}

function header(me) {
  const top = document.getElementById("top");
  if (!me) { fill(top, h("div", { class: "brand" }, "warren")); return; }
  const here = location.hash.replace(/^#\/?/, "").split(/[/?]/)[0];
  fill(top,
    h("div", { class: "brand" }, h("a", { href: "#/" }, "warren"), h("span", { class: "muted" }, " management")),
    h("nav", { "aria-label": "Main" }, h("ul", {}, nav().map(([href, text]) => {
      const cur = href.slice(2) === here;
      return h("li", {}, h("a", { href, "aria-current": cur ? "page" : null }, text));
    }))),
    h("div", { class: "vhost-slot" }),
    h("div", { class: "who" }, h("span", {}, `${me.name} (${[].concat(me.tags).join(", ") || "no tags"})`),
      h("button", { type: "button", id: "logout", onclick: () => { logout(); location.hash = "#/"; show(); } }, "Log out")));
}

function loginPage(main, message) {
  document.title = "Log in · warren";
  const user = h("input", { name: "username", autocomplete: "username", required: true, autofocus: true });
  const pass = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const err = h("p", { class: "msg error", role: "alert", hidden: !message }, message || "");
  fill(main, h("form", {
    class: "login", id: "login",
    onsubmit: async (e) => {
      e.preventDefault();
      try {
        await login(user.value, pass.value);
        show();
      } catch (x) {
        err.hidden = false;
        err.textContent = x.status === 401 ? `Login failed: ${x.message}` : `Cannot log in: ${x.message}`;
      }
    },
  }, h("h1", {}, "Log in to warren"), field("Username", user), field("Password", pass),
  err, h("button", { type: "submit" }, "Log in")));
  user.focus();
}

async function show() {
  clearTimers();
  const main = document.getElementById("main");
  const me = await whoami();
  header(me);
  if (!me) return loginPage(main);
  vhostChooser().then((c) => { const slot = document.querySelector(".vhost-slot"); if (slot) fill(slot, c); });
  refreshAlarms();
  const raw = location.hash.replace(/^#\/?/, "").split("?")[0];
  for (const [re, page, title] of routes) {
    const m = raw.match(re);
    let params;
    try { params = m && m.slice(1).map(decodeURIComponent); } catch { break; }
    if (params) {
      document.title = `${title} · warren`;
      fill(main);
      await page(main, params);
      return;
    }
  }
  document.title = "Not found · warren";
  fill(main, h("h1", {}, "Not found"), h("p", {}, `No page ${raw}.`), h("p", {}, h("a", { href: "#/" }, "Overview")));
}

whenLoggedOut(() => show().then(() => loginPage(document.getElementById("main"), "Your login is no longer accepted; log in again.")));
window.addEventListener("hashchange", () => {
  window.scrollTo(0, 0);
  show().then(() => document.getElementById("main").focus({ preventScroll: true }));
});
document.getElementById("skip").addEventListener("click", (e) => {
  e.preventDefault();
  document.getElementById("main").focus();
});
// Alarms are shown on every page, checked every 10 s.
setInterval(() => { if (!document.hidden && sessionStorage.length) refreshAlarms(); }, 10000);
show();
