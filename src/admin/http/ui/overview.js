// Overview: live message rate and queued message charts (the API's kept
// samples of the last ten minutes), object totals, node figures and alarms.

import { get, can } from "./api.js";
import { h, fill, fmtNum, fmtBytes, every, section } from "./dom.js";
import { messageCharts } from "./chart.js";

const SAMPLES = "?lengths_age=600&lengths_incr=5&msg_rates_age=600&msg_rates_incr=5";

/** Shows active alarms in the banner under the header, on every page. */
export async function refreshAlarms() {
  const box = document.getElementById("alarms");
  try {
    await get("/api/health/checks/alarms");
    fill(box);
  } catch (e) {
    if (e.status === 503) {
      const list = ((e.body && e.body.alarms) || []).map((a) => `${a.resource} alarm on ${a.node}`);
      fill(box, h("p", { class: "alarm" }, h("strong", {}, "Alarm: "), list.join("; ") || e.message,
        " — publishers are blocked until it clears."));
    }
  }
}

function meter(label, used, limit, fmt, invert) {
  // invert: for disk, the figure is what is free and the limit a floor.
  const ratio = limit ? Math.min(1, invert ? limit / Math.max(used, 1) : used / limit) : 0;
  return h("div", { class: "meter-box" },
    h("span", { class: "meter-label" }, label),
    h("meter", { min: 0, max: 1, low: 0.7, high: 0.9, optimum: 0, value: ratio, "aria-label": label }),
    h("span", {}, invert ? `${fmt(used)} free (limit ${fmt(limit)})` : `${fmt(used)} of ${fmt(limit)}`));
}

export async function overviewPage(main) {
  const charts = h("div", { class: "charts" });
  const totals = h("div", { class: "totals" });
  const node = h("div", { class: "node" });
  fill(main, h("h1", {}, "Overview"),
    section("Messages", charts),
    section("Totals", totals),
    section("Node", node));
  every(5000, async () => {
    refreshAlarms();
    let o;
    try { o = await get(`/api/overview${SAMPLES}`); } catch (e) { fill(charts, h("p", { class: "msg error" }, e.message)); return; }
    fill(charts, messageCharts(o.message_stats, o.queue_totals || {}));
    charts.dataset.updated = String(Date.now());
    const t = o.object_totals || {};
    const q = o.queue_totals || {};
    fill(totals, h("ul", { class: "cards" },
      [["Connections", t.connections, "#/connections"], ["Channels", t.channels, "#/channels"],
        ["Exchanges", t.exchanges, "#/exchanges"], ["Queues", t.queues, "#/queues"],
        ["Consumers", t.consumers, "#/consumers"], ["Ready", q.messages_ready], ["Unacked", q.messages_unacknowledged]]
        .map(([k, v, href]) => h("li", { class: "card" }, href ? h("a", { href }, k) : h("span", {}, k), h("strong", {}, fmtNum(v))))),
      h("p", { class: "muted" }, `${o.product_name} ${o.product_version} (RabbitMQ ${o.rabbitmq_version} compatible) on ${o.node}`));
    if (!can.monitor) {
      fill(node, h("p", { class: "muted" }, "Node figures are shown to users tagged monitoring or administrator."));
      return;
    }
    try {
      const nodes = await get("/api/nodes");
      fill(node, nodes.map((n) => h("div", { class: "node-figs" },
        h("h3", {}, n.name, n.running === false ? " (not running)" : ""),
        n.mem_used !== undefined && h("div", { class: "meters" },
          meter(n.mem_alarm ? "Memory (ALARM)" : "Memory", n.mem_used, n.mem_limit, fmtBytes),
          meter(n.disk_free_alarm ? "Disk (ALARM)" : "Disk", n.disk_free, n.disk_free_limit, fmtBytes, true),
          meter("File descriptors", n.fd_used, n.fd_total, fmtNum)),
        n.uptime !== undefined && h("p", { class: "muted" }, `Up ${Math.round(n.uptime / 60000)} min, ${n.processors} processors, ${fmtNum(n.sockets_used)} sockets`))));
    } catch (e) {
      fill(node, h("p", { class: "msg error" }, e.message));
    }
  });
}
