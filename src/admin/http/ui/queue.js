// Queues: the list (with the declare form) and a queue's page: figures,
// charts, consumers, bindings, arguments and policy, and its actions
// (publish, get, move, purge, delete).

import { get, post, put, del, seg, query, can, inVhost } from "./api.js";
import { h, fill, field, select, facts, kvTable, act, confirmDialog, section, every, update, fmtNum, fmtRate, fmtBytes, link } from "./dom.js";
import { listing } from "./list.js";
import { messageCharts } from "./chart.js";
import { declareQueueForm, publishForm, bindingForm } from "./forms.js";

export const queueHref = (q) => `#/queues/${seg(q.vhost)}/${seg(q.name)}`;

export async function queuesPage(main) {
  const list = h("div");
  fill(main, h("h1", {}, "Queues"), list);
  const l = listing(list, {
    key: "queues", label: "queues", path: inVhost("/api/queues", (v) => `/api/queues/${v}`),
    columnsParam: "name,vhost,type,durable,auto_delete,exclusive,policy,state,consumers,messages_ready,messages_unacknowledged,messages,message_stats.publish_details.rate,message_stats.deliver_get_details.rate,message_stats.ack_details.rate",
    columns: [
      { key: "name", label: "Name", render: (q) => link(queueHref(q), q.name) },
      { key: "vhost", label: "Virtual host" },
      { key: "type", label: "Type" },
      { key: "policy", label: "Policy" },
      { key: "consumers", label: "Consumers" },
      { key: "messages_ready", label: "Ready" },
      { key: "messages_unacknowledged", label: "Unacked" },
      { key: "messages", label: "Total" },
      { key: "message_stats.publish_details.rate", label: "Incoming", render: (q) => fmtRate(q.message_stats?.publish_details?.rate ?? 0) },
      { key: "message_stats.deliver_get_details.rate", label: "Deliver/get", render: (q) => fmtRate(q.message_stats?.deliver_get_details?.rate ?? 0) },
      { key: "message_stats.ack_details.rate", label: "Ack", render: (q) => fmtRate(q.message_stats?.ack_details?.rate ?? 0) },
    ],
  });
  if (can.change) main.append(await declareQueueForm(() => l.refresh()));
}

const SAMPLES = { lengths_age: 600, lengths_incr: 5, msg_rates_age: 600, msg_rates_incr: 5 };

export async function queuePage(main, [vhost, name]) {
  const base = `/api/queues/${seg(vhost)}/${seg(name)}`;
  const info = h("div");
  const charts = h("div", { class: "charts" });
  const consumers = h("div");
  const bindings = h("div");
  const args = h("div");
  fill(main, h("h1", {}, "Queue ", h("q", {}, name), h("span", { class: "muted" }, ` in ${vhost}`)),
    section("Details", info), section("Messages", charts), section("Consumers", consumers),
    section("Bindings", bindings), section("Arguments and policy", args));
  let gone = false;
  const refresh = async () => {
    if (gone) return;
    let q;
    try { q = await get(base + query(SAMPLES)); } catch (e) {
      if (e.status === 404) { gone = true; fill(info, h("p", { class: "msg error" }, "This queue does not exist (any more).")); }
      else fill(info, h("p", { class: "msg error" }, e.message));
      return;
    }
    fill(info, facts([
      ["Type", q.type], ["Node", q.node], ["State", q.state],
      ["Durable", q.durable ? "yes" : "no"], ["Auto delete", q.auto_delete ? "yes" : "no"], ["Exclusive", q.exclusive ? "yes" : "no"],
      ["Ready", h("span", { id: "q-ready" }, fmtNum(q.messages_ready))],
      ["Unacked", h("span", { id: "q-unacked" }, fmtNum(q.messages_unacknowledged))],
      ["Total", h("span", { id: "q-total" }, fmtNum(q.messages))],
      ["Consumers", fmtNum(q.consumers)],
      ["Policy", q.policy ? link("#/policies", q.policy) : "none"],
      q.oldest_stored_message_age_seconds !== undefined && ["Oldest stored message", q.oldest_stored_message_age_seconds === null ? "–" : `${fmtNum(q.oldest_stored_message_age_seconds)} s`],
    ]));
    fill(charts, messageCharts(q.message_stats, q));
    update(consumers, q.consumer_details || [], consumerTable);
    update(args, [q.arguments, q.effective_policy_definition], ([a, p]) => [kvTable(a, "Arguments"), kvTable(p, "Effective policy definition")]);
    try {
      const bs = await get(`${base}/bindings`);
      update(bindings, bs, (x) => bindingTable(vhost, x, refresh));
    } catch (e) { update(bindings, { error: e.message }, (x) => h("p", { class: "msg error" }, x.error)); }
  };
  every(5000, refresh);
  if (!can.change) {
    main.append(section("Actions", h("p", { class: "muted" }, "Your tags (monitoring only) allow reading; changes are not offered.")));
    return;
  }
  main.append(
    section("Add binding", bindingForm(vhost, "queue", name, refresh)),
    section("Publish message", h("p", { class: "muted" }, "Published to the default exchange with the queue's name as routing key."),
      publishForm(vhost, "amq.default", name, refresh)),
    section("Get messages", getForm(base, refresh)),
    section("Move messages", moveForm(vhost, name, refresh)),
    section("Purge", h("button", {
      type: "button", id: "purge", class: "danger",
      onclick: async () => {
        if (await confirmDialog(`Purge every ready message of queue ${name}?`, "Purge")) {
          await act(`Queue ${name} purged`, () => del(`${base}/contents`));
          refresh();
        }
      },
    }, "Purge messages")),
    section("Delete", h("button", {
      type: "button", id: "delete-queue", class: "danger",
      onclick: async () => {
        if (await confirmDialog(`Delete queue ${name} and its messages?`)) {
          if (await act(`Queue ${name} deleted`, () => del(base), { leaves: true })) location.hash = "#/queues";
        }
      },
    }, "Delete queue")));
}

function consumerTable(cs) {
  if (!cs.length) return h("p", { class: "muted" }, "No consumers.");
  return h("table", { class: "list" }, h("thead", {}, h("tr", {}, ["Channel", "Consumer tag", "Ack required", "Exclusive", "Prefetch", "Active"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, cs.map((c) => h("tr", {},
      h("td", {}, c.channel_details?.connection_name ? link(`#/connections/${seg(c.channel_details.connection_name)}`, c.channel_details.name) : String(c.channel_details?.number ?? "")),
      h("td", {}, c.consumer_tag), h("td", {}, c.ack_required ? "yes" : "no"), h("td", {}, c.exclusive ? "yes" : "no"),
      h("td", {}, String(c.prefetch_count)), h("td", {}, c.activity_status)))));
}

/** A bindings table with Unbind buttons (for users who may change). */
export function bindingTable(vhost, bs, refresh) {
  if (!bs.length) return h("p", { class: "muted" }, "No bindings.");
  return h("table", { class: "list bindings" },
    h("thead", {}, h("tr", {}, ["From", "To", "Routing key", "Arguments", ""].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, bs.map((b) => h("tr", {},
      h("td", {}, b.source ? link(`#/exchanges/${seg(vhost)}/${seg(b.source)}`, b.source) : "(default exchange)"),
      h("td", {}, link(`#/${b.destination_type === "queue" ? "queues" : "exchanges"}/${seg(vhost)}/${seg(b.destination)}`, b.destination)),
      h("td", {}, b.routing_key), h("td", {}, Object.keys(b.arguments || {}).length ? JSON.stringify(b.arguments) : ""),
      h("td", {}, can.change && b.source ? h("button", {
        type: "button", class: "small",
        onclick: async () => {
          await act("Binding removed", () => del(`/api/bindings/${seg(vhost)}/e/${seg(b.source)}/${b.destination_type === "queue" ? "q" : "e"}/${seg(b.destination)}/${seg(b.properties_key)}`));
          refresh();
        },
      }, "Unbind") : "")))));
}

function getForm(base, refresh) {
  const mode = select("ackmode", [
    ["ack_requeue_true", "Nack message, requeue true"], ["ack_requeue_false", "Automatic ack"],
    ["reject_requeue_true", "Reject, requeue true"], ["reject_requeue_false", "Reject, requeue false"]], "ack_requeue_true");
  const enc = select("encoding", [["auto", "Automatic string/base64"], ["base64", "Base64"]], "auto");
  const count = h("input", { name: "count", type: "number", min: 1, value: 1 });
  const truncate = h("input", { name: "truncate", type: "number", min: 1, value: 50000 });
  const out = h("div", { id: "got-messages", "aria-live": "polite" });
  return h("div", {}, h("form", {
    class: "stack", id: "get-messages",
    onsubmit: async (e) => {
      e.preventDefault();
      const ms = await act("Fetched", () => post(`${base}/get`, { count: Number(count.value), ackmode: mode.value, encoding: enc.value, truncate: Number(truncate.value) }));
      if (!ms) return;
      fill(out, ms.length ? ms.map((m, i) => h("article", { class: "message" },
        h("h3", {}, `Message ${i + 1}`),
        facts([["Exchange", m.exchange || "(default)"], ["Routing key", m.routing_key], ["Redelivered", m.redelivered ? "yes" : "no"],
          ["Remaining", fmtNum(m.message_count)], ["Properties", m.properties], ["Payload", `${fmtNum(m.payload_bytes)} bytes, ${m.payload_encoding}`]]),
        h("pre", { class: "payload" }, m.payload))) : h("p", {}, "Queue is empty."));
      refresh();
    },
  }, field("Ack mode", mode), field("Encoding", enc), field("Messages", count), field("Truncate payloads at (bytes)", truncate),
  h("button", { type: "submit" }, "Get messages")), out);
}

function moveForm(vhost, name, refresh) {
  const dest = h("input", { name: "dest-queue", required: true, autocomplete: "off" });
  return h("form", {
    class: "stack", id: "move-messages",
    onsubmit: async (e) => {
      e.preventDefault();
      // As RabbitMQ's UI: a one-off dynamic shovel of the queue's length.
      const uri = `amqp:///${seg(vhost)}`;
      await act(`Messages moved to ${dest.value}`, () => put(`/api/parameters/shovel/${seg(vhost)}/${seg(`Move from ${name}`)}`, {
        component: "shovel", vhost, name: `Move from ${name}`,
        value: { "src-uri": uri, "src-queue": name, "src-protocol": "amqp091", "src-prefetch-count": 1000, "src-delete-after": "queue-length",
          "dest-protocol": "amqp091", "dest-uri": uri, "dest-add-forward-headers": false, "ack-mode": "on-confirm", "dest-queue": dest.value },
      }));
      refresh();
    },
  }, h("p", { class: "muted" }, "Moves the messages ready now to another queue of this virtual host."),
  field("Destination queue", dest), h("button", { type: "submit" }, "Move messages"));
}

export { fmtBytes };
