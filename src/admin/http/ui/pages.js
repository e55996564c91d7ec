// Connections, channels, consumers and exchanges: lists and details.

import { get, del, api, seg, can, inVhost } from "./api.js";
import { h, fill, field, facts, kvTable, act, confirmDialog, section, every, update, fmtNum, fmtRate, fmtBytes, link } from "./dom.js";
import { listing } from "./list.js";
import { declareExchangeForm, publishForm, bindingForm } from "./forms.js";
import { bindingTable } from "./queue.js";

const connHref = (name) => `#/connections/${seg(name)}`;
const rate = (o, k) => fmtRate(o.message_stats?.[`${k}_details`]?.rate ?? 0);

export async function connectionsPage(main) {
  const list = h("div");
  fill(main, h("h1", {}, "Connections"), list);
  listing(list, {
    key: "connections", label: "connections", path: inVhost("/api/connections", (v) => `/api/vhosts/${v}/connections`),
    columns: [
      { key: "name", label: "Name", render: (c) => link(connHref(c.name), c.user_provided_name ? `${c.name} (${c.user_provided_name})` : c.name) },
      { key: "vhost", label: "Virtual host" }, { key: "user", label: "User" }, { key: "state", label: "State" },
      { key: "ssl", label: "TLS" }, { key: "channels", label: "Channels" },
      { key: "message_stats.publish_details.rate", label: "Publish", render: (c) => rate(c, "publish") },
      { key: "send_oct", label: "Sent", render: (c) => fmtBytes(c.send_oct) },
    ],
  });
}

export async function connectionPage(main, [name]) {
  const info = h("div");
  const chans = h("div");
  const props = h("div");
  fill(main, h("h1", {}, "Connection ", h("q", {}, name)), section("Details", info), section("Channels", chans), section("Client properties", props));
  let c;
  every(5000, async () => {
    try { c = await get(`/api/connections/${seg(name)}`); } catch (e) {
      fill(info, h("p", { class: "msg error" }, e.status === 404 ? "This connection is closed." : e.message));
      return;
    }
    fill(info, facts([["User", c.user], ["Virtual host", c.vhost], ["State", c.state], ["Protocol", c.protocol],
      ["Peer", `${c.peer_host}:${c.peer_port}`], ["TLS", c.ssl ? `${c.ssl_protocol} ${c.ssl_cipher}` : "no"],
      ["Auth mechanism", c.auth_mechanism], ["Heartbeat", `${c.timeout} s`], ["Frame max", fmtNum(c.frame_max)],
      ["Channel max", fmtNum(c.channel_max)], ["Connected at", new Date(c.connected_at).toLocaleString()],
      ["Publish rate", rate(c, "publish")]]));
    update(props, c.client_properties, (p) => kvTable(p, "Sent by the client when it connected"));
    try {
      const cs = await get(`/api/connections/${seg(name)}/channels`);
      update(chans, cs, channelTable);
    } catch (e) { update(chans, { error: e.message }, (x) => h("p", { class: "msg error" }, x.error)); }
  });
  // Administrators close any connection, others their own (the API checks).
  if (can.change) {
    const reason = h("input", { name: "reason", value: "Closed via management UI" });
    main.append(section("Close this connection", h("form", {
      class: "stack", id: "close-connection",
      onsubmit: async (e) => {
        e.preventDefault();
        if (!(await confirmDialog(`Close connection ${name}?`, "Close"))) return;
        const ok = await act("Connection closed", () => api("DELETE", `/api/connections/${seg(name)}`, undefined, undefined, { "X-Reason": reason.value }), { leaves: true });
        if (ok) location.hash = "#/connections";
      },
    }, field("Reason", reason), h("button", { type: "submit", class: "danger" }, "Force close"))));
  }
}

function channelTable(cs) {
  if (!cs.length) return h("p", { class: "muted" }, "No channels.");
  return h("table", { class: "list" },
    h("thead", {}, h("tr", {}, ["Channel", "User", "Mode", "Prefetch", "Unacked", "Consumers", "Publish"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, cs.map((c) => h("tr", {}, h("td", {}, c.name), h("td", {}, c.user), h("td", {}, c.confirm ? "confirm" : c.transactional ? "transactional" : ""),
      h("td", {}, fmtNum(c.prefetch_count)), h("td", {}, fmtNum(c.messages_unacknowledged)), h("td", {}, fmtNum(c.consumer_count)), h("td", {}, rate(c, "publish"))))));
}

export async function channelsPage(main) {
  const list = h("div");
  fill(main, h("h1", {}, "Channels"), list);
  listing(list, {
    key: "channels", label: "channels", path: inVhost("/api/channels", (v) => `/api/vhosts/${v}/channels`),
    columns: [
      { key: "name", label: "Channel", render: (c) => link(connHref(c.connection_details?.name ?? ""), c.name) },
      { key: "vhost", label: "Virtual host" }, { key: "user", label: "User" },
      { key: "prefetch_count", label: "Prefetch" }, { key: "messages_unacknowledged", label: "Unacked" },
      { key: "consumer_count", label: "Consumers" },
      { key: "message_stats.publish_details.rate", label: "Publish", render: (c) => rate(c, "publish") },
    ],
  });
}

export async function consumersPage(main) {
  const list = h("div");
  fill(main, h("h1", {}, "Consumers"), list);
  listing(list, {
    key: "consumers", label: "consumers", filterLabel: "Filter consumers by queue name", path: inVhost("/api/consumers", (v) => `/api/consumers/${v}`),
    columns: [
      { key: "queue.name", label: "Queue", render: (c) => link(`#/queues/${seg(c.queue.vhost)}/${seg(c.queue.name)}`, c.queue.name) },
      { key: "queue.vhost", label: "Virtual host" }, { key: "consumer_tag", label: "Consumer tag" },
      { key: "channel_details.name", label: "Channel", render: (c) => c.channel_details?.connection_name ? link(connHref(c.channel_details.connection_name), c.channel_details.name) : "" },
      { key: "ack_required", label: "Ack required" }, { key: "prefetch_count", label: "Prefetch" }, { key: "activity_status", label: "Status" },
    ],
  });
}

const exHref = (x) => `#/exchanges/${seg(x.vhost)}/${seg(x.name || "amq.default")}`;

export async function exchangesPage(main) {
  const list = h("div");
  fill(main, h("h1", {}, "Exchanges"), list);
  const l = listing(list, {
    key: "exchanges", label: "exchanges", path: inVhost("/api/exchanges", (v) => `/api/exchanges/${v}`),
    columns: [
      { key: "name", label: "Name", render: (x) => link(exHref(x), x.name || "(AMQP default)") },
      { key: "vhost", label: "Virtual host" }, { key: "type", label: "Type" },
      { key: "durable", label: "Durable" }, { key: "auto_delete", label: "Auto delete" }, { key: "internal", label: "Internal" },
      { key: "policy", label: "Policy" },
    ],
  });
  if (can.change) main.append(await declareExchangeForm(() => l.refresh()));
}

export async function exchangePage(main, [vhost, name]) {
  const path = `/api/exchanges/${seg(vhost)}/${seg(name || "amq.default")}`;
  const shown = name === "amq.default" ? "" : name;
  const info = h("div");
  const out = h("div");
  const into = h("div");
  fill(main, h("h1", {}, "Exchange ", h("q", {}, shown || "(AMQP default)"), h("span", { class: "muted" }, ` in ${vhost}`)),
    section("Details", info), section("Bindings from this exchange", out), section("Bindings to this exchange", into));
  const refresh = async () => {
    try {
      const x = await get(path);
      fill(info, facts([["Type", x.type], ["Durable", x.durable ? "yes" : "no"], ["Auto delete", x.auto_delete ? "yes" : "no"],
        ["Internal", x.internal ? "yes" : "no"], ["Policy", x.policy || "none"]]), kvTable(x.arguments, "Arguments"));
    } catch (e) { fill(info, h("p", { class: "msg error" }, e.status === 404 ? "This exchange does not exist (any more)." : e.message)); return; }
    if (!shown) { fill(out, h("p", { class: "muted" }, "The default exchange routes to the queue named by the routing key.")); return; }
    try {
      update(out, await get(`${path}/bindings/source`), (bs) => bindingTable(vhost, bs, refresh));
      update(into, await get(`${path}/bindings/destination`), (bs) => bindingTable(vhost, bs, refresh));
    } catch (e) { update(out, { error: e.message }, (x) => h("p", { class: "msg error" }, x.error)); }
  };
  every(5000, refresh);
  if (!can.change) return;
  if (shown) main.append(section("Add binding from this exchange", bindingForm(vhost, "exchange", name, refresh)));
  main.append(section("Publish message", publishForm(vhost, name || "amq.default")));
  if (shown && !shown.startsWith("amq.")) {
    main.append(section("Delete", h("button", {
      type: "button", class: "danger", id: "delete-exchange",
      onclick: async () => {
        if (await confirmDialog(`Delete exchange ${shown}?`)) {
          if (await act(`Exchange ${shown} deleted`, () => del(path), { leaves: true })) location.hash = "#/exchanges";
        }
      },
    }, "Delete exchange")));
  }
}
