// Users, permissions, virtual hosts, policies and definitions.

import { get, put, post, del, seg, can, inVhost, chosenVhost } from "./api.js";
import { h, fill, field, select, act, confirmDialog, section, link } from "./dom.js";
import { listing } from "./list.js";
import { vhostNames } from "./forms.js";

function deleteButton(what, path, refresh) {
  return h("button", {
    type: "button", class: "small danger",
    onclick: async () => {
      if (await confirmDialog(`Delete ${what}?`)) {
        await act(`Deleted ${what}`, () => del(path));
        refresh();
      }
    },
  }, "Delete");
}

export async function usersPage(main) {
  const list = h("div");
  fill(main, h("h1", {}, "Users"), list);
  const l = listing(list, {
    key: "users", label: "users", path: "/api/users",
    columns: [
      { key: "name", label: "Name" },
      { key: "tags", label: "Tags", render: (u) => [].concat(u.tags).join(", ") },
      { key: "actions", label: "", sort: false, render: (u) => deleteButton(`user ${u.name}`, `/api/users/${seg(u.name)}`, () => l.refresh()) },
    ],
  });
  const name = h("input", { name: "username", required: true, autocomplete: "off" });
  const pass = h("input", { name: "password", type: "password", autocomplete: "new-password" });
  const tags = h("input", { name: "tags", placeholder: "administrator, monitoring, policymaker, management" });
  const tagButtons = ["administrator", "monitoring", "policymaker", "management"].map((t) => h("button", {
    type: "button", class: "small link",
    onclick: () => { const cur = tags.value.split(",").map((s) => s.trim()).filter(Boolean); if (!cur.includes(t)) cur.push(t); tags.value = cur.join(", "); },
  }, t));
  main.append(section("Add or update a user", h("form", {
    class: "stack", id: "add-user",
    onsubmit: async (e) => {
      e.preventDefault();
      const body = { tags: tags.value };
      if (pass.value) body.password = pass.value;
      if (await act(`User ${name.value} saved`, () => put(`/api/users/${seg(name.value)}`, body))) l.refresh();
    },
  }, field("Username", name), field("Password", pass, "Empty: an existing user keeps its password; a new one has none (no password login)"),
  field("Tags", tags), h("p", {}, "Set: ", tagButtons), h("button", { type: "submit" }, "Save user"))));
  main.append(await permissionsSection());
}

async function permissionsSection() {
  const table = h("div");
  const refresh = async () => {
    const ps = await get("/api/permissions");
    fill(table, h("table", { class: "list" },
      h("thead", {}, h("tr", {}, ["User", "Virtual host", "Configure", "Write", "Read", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, ps.map((p) => h("tr", {}, h("td", {}, p.user), h("td", {}, p.vhost), h("td", {}, p.configure), h("td", {}, p.write), h("td", {}, p.read),
        h("td", {}, deleteButton(`permissions of ${p.user} in ${p.vhost}`, `/api/permissions/${seg(p.vhost)}/${seg(p.user)}`, refresh)))))));
  };
  await refresh();
  const user = h("input", { name: "user", required: true });
  const vhost = select("vhost", await vhostNames(), chosenVhost.get() || "/");
  const [c, w, r] = ["configure", "write", "read"].map((n) => h("input", { name: n, value: ".*" }));
  return section("Permissions", table, h("form", {
    class: "stack", id: "set-permission",
    onsubmit: async (e) => {
      e.preventDefault();
      if (await act(`Permissions of ${user.value} set`, () => put(`/api/permissions/${seg(vhost.value)}/${seg(user.value)}`, { configure: c.value, write: w.value, read: r.value }))) refresh();
    },
  }, h("h3", {}, "Set permissions"), field("User", user), field("Virtual host", vhost), field("Configure regex", c), field("Write regex", w), field("Read regex", r),
  h("button", { type: "submit" }, "Set permissions")));
}

export async function vhostsPage(main) {
  const list = h("div");
  fill(main, h("h1", {}, "Virtual hosts"), list);
  const l = listing(list, {
    key: "vhosts", label: "virtual hosts", path: "/api/vhosts",
    columns: [
      { key: "name", label: "Name" },
      { key: "messages_ready", label: "Ready" }, { key: "messages_unacknowledged", label: "Unacked" },
      can.admin && { key: "actions", label: "", sort: false, render: (v) => deleteButton(`virtual host ${v.name}`, `/api/vhosts/${seg(v.name)}`, () => l.refresh()) },
    ].filter(Boolean),
  });
  if (!can.admin) return;
  const name = h("input", { name: "name", required: true });
  main.append(section("Add a virtual host", h("form", {
    class: "stack", id: "add-vhost",
    onsubmit: async (e) => {
      e.preventDefault();
      if (await act(`Virtual host ${name.value} added`, () => put(`/api/vhosts/${seg(name.value)}`, {}))) l.refresh();
    },
  }, field("Name", name), h("button", { type: "submit" }, "Add virtual host"))));
}

export async function policiesPage(main) {
  const list = h("div");
  fill(main, h("h1", {}, "Policies"), list);
  const l = listing(list, {
    key: "policies", label: "policies", path: inVhost("/api/policies", (v) => `/api/policies/${v}`),
    columns: [
      { key: "name", label: "Name" }, { key: "vhost", label: "Virtual host" }, { key: "pattern", label: "Pattern" },
      { key: "apply-to", label: "Apply to" }, { key: "definition", label: "Definition" }, { key: "priority", label: "Priority" },
      can.policies && { key: "actions", label: "", sort: false, render: (p) => deleteButton(`policy ${p.name}`, `/api/policies/${seg(p.vhost)}/${seg(p.name)}`, () => l.refresh()) },
    ].filter(Boolean),
  });
  if (!can.policies) return;
  const vhost = select("vhost", await vhostNames(), chosenVhost.get() || "/");
  const name = h("input", { name: "name", required: true });
  const pattern = h("input", { name: "pattern", required: true, placeholder: "^orders\\." });
  const apply = select("apply-to", [["queues", "Queues"], ["exchanges", "Exchanges"], ["all", "Exchanges and queues"]], "queues");
  const prio = h("input", { name: "priority", type: "number", value: 0 });
  const def = h("textarea", { name: "definition", rows: 3, required: true, placeholder: '{"max-length": 1000}' });
  const keys = ["max-length", "max-length-bytes", "message-ttl", "expires", "overflow", "dead-letter-exchange", "dead-letter-routing-key", "delivery-limit", "max-age", "alternate-exchange"];
  main.append(section("Add or update a policy", h("form", {
    class: "stack", id: "add-policy",
    onsubmit: async (e) => {
      e.preventDefault();
      const saved = await act(`Policy ${name.value} saved`, () => {
        let d;
        try { d = JSON.parse(def.value); } catch { throw new Error("The definition is not JSON."); }
        return put(`/api/policies/${seg(vhost.value)}/${seg(name.value)}`,
          { pattern: pattern.value, "apply-to": apply.value, priority: Number(prio.value), definition: d });
      });
      if (saved) l.refresh();
    },
  }, field("Virtual host", vhost), field("Name", name), field("Pattern (regex)", pattern), field("Apply to", apply), field("Priority", prio),
  field("Definition (JSON)", def), h("p", {}, "Add key: ", keys.map((k) => h("button", {
    type: "button", class: "small link",
    onclick: () => { let o = {}; try { o = def.value.trim() ? JSON.parse(def.value) : {}; } catch { /* keep text */ } o[k] = o[k] ?? ""; def.value = JSON.stringify(o); def.focus(); },
  }, k))), h("button", { type: "submit" }, "Save policy"))));
}

export async function definitionsPage(main) {
  const file = h("input", { type: "file", name: "file", accept: "application/json,.json", required: true });
  const vhost = select("vhost", [["", "All (whole broker)"], ...(await vhostNames()).map((v) => [v, v])], "");
  fill(main, h("h1", {}, "Definitions"),
    section("Export", h("p", {}, "Users, virtual hosts, permissions, policies, exchanges, queues and bindings, as RabbitMQ exports them."),
      h("button", {
        type: "button", id: "export",
        onclick: async () => {
          const v = await act("Definitions exported", () => get("/api/definitions"));
          if (!v) return;
          const a = h("a", { href: URL.createObjectURL(new Blob([JSON.stringify(v, null, 2)], { type: "application/json" })), download: `warren-definitions-${new Date().toISOString().slice(0, 10)}.json` });
          document.body.append(a);
          a.click();
          a.remove();
        },
      }, "Download definitions")),
    section("Import", h("form", {
      class: "stack", id: "import",
      onsubmit: async (e) => {
        e.preventDefault();
        const f = file.files[0];
        if (!f) return;
        const text = await f.text();
        await act(`Imported ${f.name}: see the queues page for its queues.`, () => post(vhost.value ? `/api/definitions/${seg(vhost.value)}` : "/api/definitions", text));
      },
    }, field("Definitions file (JSON)", file), field("Into", vhost), h("button", { type: "submit" }, "Upload and import"))));
}

export { link };
