// Forms shared by pages: typed arguments (offered by name as RabbitMQ's UI
// offers them), publishing a message, declaring exchanges, queues and
// bindings.

import { put, post, get, seg, can, chosenVhost } from "./api.js";
import { h, field, select, act, notify, uid, section } from "./dom.js";

/** Queue arguments RabbitMQ's UI offers by name: [name, type, hint]. */
export const QUEUE_ARGS = [
  ["x-message-ttl", "number", "How long a message may stay, in ms"],
  ["x-expires", "number", "Delete the queue after this many ms unused"],
  ["x-max-length", "number", "Most messages ready"],
  ["x-max-length-bytes", "number", "Most bytes of ready message bodies"],
  ["x-overflow", "string", "drop-head, reject-publish or reject-publish-dlx"],
  ["x-dead-letter-exchange", "string", "Exchange for rejected and expired messages"],
  ["x-dead-letter-routing-key", "string", "Routing key for dead letters"],
  ["x-single-active-consumer", "boolean", "Deliver to one consumer at a time"],
  ["x-max-priority", "number", "Highest message priority (classic queues)"],
  ["x-queue-mode", "string", "lazy (classic queues)"],
  ["x-delivery-limit", "number", "Quorum queues: deliveries before dead-lettering"],
  ["x-dead-letter-strategy", "string", "Quorum queues: at-most-once or at-least-once"],
  ["x-max-age", "string", "Streams: e.g. 7D, 12h"],
  ["x-stream-max-segment-size-bytes", "number", "Streams: segment size"],
];
export const EXCHANGE_ARGS = [["alternate-exchange", "string", "Exchange for messages this one cannot route"]];

/**
 * An editor of AMQP arguments: rows of name, value and type, and buttons
 * adding the known names. value() gives the arguments object.
 */
export function argumentsEditor(known, legend = "Arguments") {
  const rows = h("div", { class: "arg-rows" });
  const add = (name = "", type = "string", value = "") => {
    const n = h("input", { value: name, "aria-label": "Argument name", class: "arg-name" });
    const v = h("input", { value, "aria-label": `Value of ${name || "argument"}`, class: "arg-value" });
    const t = select("type", [["string", "String"], ["number", "Number"], ["boolean", "Boolean"], ["list", "List (JSON)"]], type);
    t.setAttribute("aria-label", "Type");
    n.addEventListener("input", () => v.setAttribute("aria-label", `Value of ${n.value || "argument"}`));
    const row = h("div", { class: "arg-row" }, n, h("span", { "aria-hidden": "true" }, "="), v, t,
      h("button", { type: "button", class: "small", onclick: () => row.remove(), "aria-label": "Remove argument" }, "✕"));
    rows.append(row);
    (name ? v : n).focus();
  };
  const fs = h("fieldset", { class: "args" }, h("legend", {}, legend), rows,
    h("div", { class: "arg-add" }, h("span", { class: "muted" }, "Add: "),
      known.map(([name, type, hint]) => h("button", { type: "button", class: "small link", title: hint, onclick: () => add(name, type) }, name)),
      h("button", { type: "button", class: "small", onclick: () => add() }, "Other…")));
  fs.value = () => {
    const out = {};
    for (const r of rows.querySelectorAll(".arg-row")) {
      const [n, v] = r.querySelectorAll("input");
      const t = r.querySelector("select").value;
      if (!n.value) continue;
      let val = v.value;
      if (t === "number") {
        val = Number(val);
        if (v.value.trim() === "" || Number.isNaN(val)) throw new Error(`${n.value} must be a number`);
      }
      else if (t === "boolean") val = val === "true" || val === "1" || val === "yes";
      else if (t === "list") val = JSON.parse(val || "[]");
      out[n.value] = val;
    }
    return out;
  };
  return fs;
}

/** A publish form for an exchange (routing key, properties, headers, payload). */
export function publishForm(vhost, exchange, defaultKey = "", done) {
  const key = h("input", { name: "routing_key", value: defaultKey });
  const mode = select("delivery_mode", [["1", "1 – non-persistent"], ["2", "2 – persistent"]], "2");
  const headers = argumentsEditor([], "Headers");
  const props = h("textarea", { name: "properties", rows: 2, placeholder: '{"content_type": "text/plain"}' });
  const payload = h("textarea", { name: "payload", rows: 4, required: true });
  return h("form", {
    class: "stack", "aria-label": "Publish message",
    onsubmit: async (e) => {
      e.preventDefault();
      const form = e.currentTarget;
      const r = await act("Message published", () => {
        let properties;
        try { properties = props.value.trim() ? JSON.parse(props.value) : {}; } catch { throw new Error("The properties are not JSON."); }
        properties.delivery_mode = Number(mode.value);
        const hd = headers.value();
        if (Object.keys(hd).length) properties.headers = hd;
        return post(`/api/exchanges/${seg(vhost)}/${seg(exchange)}/publish`,
          { routing_key: key.value, payload: payload.value, payload_encoding: "string", properties });
      });
      if (!r) return;
      notify(r.routed ? "Message published and routed." : "Message published, but not routed to any queue.", "ok", form);
      if (done) done();
    },
  }, field("Routing key", key), field("Delivery mode", mode), headers,
  field("Other properties (JSON)", props), field("Payload", payload),
  h("button", { type: "submit" }, "Publish message"));
}

/** Vhost names the user may see, for selects. */
export async function vhostNames() {
  try { return (await get("/api/vhosts?columns=name")).map((v) => v.name); } catch { return ["/"]; }
}

/** The form declaring a queue. */
export async function declareQueueForm(done) {
  const vhost = select("vhost", await vhostNames(), chosenVhost.get() || "/");
  const type = select("type", [["classic", "Classic"], ["quorum", "Quorum"], ["stream", "Stream"]], "classic");
  const name = h("input", { name: "name", required: true, autocomplete: "off" });
  const durable = select("durable", [["true", "Durable"], ["false", "Transient"]], "true");
  const autoDel = select("auto_delete", [["false", "No"], ["true", "Yes"]], "false");
  const args = argumentsEditor(QUEUE_ARGS);
  return section("Add a queue", h("form", {
    class: "stack", id: "declare-queue",
    onsubmit: async (e) => {
      e.preventDefault();
      const ok = await act(`Queue ${name.value} declared`, () => {
        const a = args.value();
        if (type.value !== "classic") a["x-queue-type"] = type.value;
        return put(`/api/queues/${seg(vhost.value)}/${seg(name.value)}`,
          { durable: durable.value === "true", auto_delete: autoDel.value === "true", arguments: a });
      });
      if (ok && done) done();
    },
  }, field("Virtual host", vhost), field("Type", type), field("Name", name), field("Durability", durable),
  field("Auto delete", autoDel), args, h("button", { type: "submit" }, "Add queue")));
}

/** The form declaring an exchange. */
export async function declareExchangeForm(done) {
  const vhost = select("vhost", await vhostNames(), chosenVhost.get() || "/");
  const name = h("input", { name: "name", required: true, autocomplete: "off" });
  const type = select("type", ["direct", "fanout", "topic", "headers"], "direct");
  const durable = select("durable", [["true", "Durable"], ["false", "Transient"]], "true");
  const autoDel = select("auto_delete", [["false", "No"], ["true", "Yes"]], "false");
  const internal = select("internal", [["false", "No"], ["true", "Yes"]], "false");
  const args = argumentsEditor(EXCHANGE_ARGS);
  return section("Add an exchange", h("form", {
    class: "stack", id: "declare-exchange",
    onsubmit: async (e) => {
      e.preventDefault();
      const ok = await act(`Exchange ${name.value} declared`, () => put(`/api/exchanges/${seg(vhost.value)}/${seg(name.value)}`,
        { type: type.value, durable: durable.value === "true", auto_delete: autoDel.value === "true", internal: internal.value === "true", arguments: args.value() }));
      if (ok && done) done();
    },
  }, field("Virtual host", vhost), field("Name", name), field("Type", type), field("Durability", durable),
  field("Auto delete", autoDel), field("Internal", internal), args, h("button", { type: "submit" }, "Add exchange")));
}

/**
 * A form adding a binding. side "queue": binds this queue from an exchange
 * named in the form; side "exchange": binds a queue or exchange to this one.
 */
export function bindingForm(vhost, side, name, done) {
  const other = h("input", { name: side === "queue" ? "source" : "destination", required: true, autocomplete: "off" });
  const destType = select("destination_type", [["q", "Queue"], ["e", "Exchange"]], "q");
  const key = h("input", { name: "routing_key" });
  const args = argumentsEditor([["x-match", "string", "headers exchanges: all or any"]]);
  return h("form", {
    class: "stack", "aria-label": "Add binding",
    onsubmit: async (e) => {
      e.preventDefault();
      const [src, dkind, dest] = side === "queue" ? [other.value, "q", name] : [name, destType.value, other.value];
      const ok = await act("Binding added", () => post(`/api/bindings/${seg(vhost)}/e/${seg(src)}/${dkind}/${seg(dest)}`,
        { routing_key: key.value, arguments: args.value() }));
      if (ok && done) done();
    },
  }, side === "exchange" ? field("To", destType) : null,
  field(side === "queue" ? "From exchange" : "Name", other), field("Routing key", key), args,
  h("button", { type: "submit" }, "Bind"));
}

export { can, uid };
