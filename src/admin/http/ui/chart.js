// Line charts in SVG, from RabbitMQ-style samples ({sample, timestamp},
// newest first). Scales with its container (no fixed width); each series
// has its own colour and dash, and its latest value is written in the
// legend, so the chart is not the only way to read the figures.

import { h, fmtNum } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";
const W = 600, H = 180, PAD = 4;

function s(tag, attrs) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

/** Per-second rates from counter samples (newest first): [[t, rate]] oldest first. */
export function ratesOf(details) {
  const sm = (details && details.samples) || [];
  const out = [];
  for (let i = sm.length - 2; i >= 0; i--) {
    const dt = (sm[i].timestamp - sm[i + 1].timestamp) / 1000;
    if (dt > 0) out.push([sm[i].timestamp, Math.max(0, (sm[i].sample - sm[i + 1].sample) / dt)]);
  }
  return out;
}

/** Values from length samples: [[t, value]] oldest first. */
export function valuesOf(details) {
  return ((details && details.samples) || []).map((x) => [x.timestamp, x.sample]).reverse();
}

/**
 * A chart: series is [{key, label, points: [[t, v]]}], unit is appended to
 * values ("/s" or ""). The figure carries data-latest-<key> attributes.
 */
/** The time frame of some points: the newest time and the span shown,
 * which grows with the history kept (one minute at first, up to ten). */
export function frameOf(points, maxSpanMs = 600000) {
  const tMax = points.length ? Math.max(...points.map((p) => p[0])) : Date.now();
  const tFirst = points.length ? Math.min(...points.map((p) => p[0])) : tMax;
  return { tMax, spanMs: Math.min(maxSpanMs, Math.max(60000, tMax - tFirst)) };
}

export function lineChart(title, series, unit, frame = frameOf(series.flatMap((x) => x.points))) {
  const all = series.flatMap((x) => x.points);
  const { tMax, spanMs } = frame;
  const tMin = tMax - spanMs;
  const vMax = Math.max(1, ...all.map((p) => p[1]));
  const x = (t) => PAD + ((t - tMin) / spanMs) * (W - 2 * PAD);
  const y = (v) => H - PAD - (v / vMax) * (H - 2 * PAD);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", class: "chart", role: "img", "aria-label": `${title} chart` });
  for (let i = 1; i < 4; i++) svg.append(s("line", { x1: 0, x2: W, y1: (H * i) / 4, y2: (H * i) / 4, class: "grid" }));
  series.forEach((se, i) => {
    const pts = se.points.filter((p) => p[0] >= tMin);
    if (pts.length) {
      svg.append(s("polyline", { points: pts.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "), class: `line s${i}`, "vector-effect": "non-scaling-stroke" }));
      const [lt, lv] = pts[pts.length - 1];
      svg.append(s("rect", { x: (x(lt) - 4).toFixed(1), y: (y(lv) - 3).toFixed(1), width: 5, height: 6, class: `dot f${i}` }));
    }
  });
  const fig = h("figure", { class: "chart-box" },
    h("figcaption", {}, title, h("span", { class: "scale" }, ` (top ${fmtNum(vMax)}${unit}, last ${spanMs < 120000 ? `${Math.round(spanMs / 1000)} s` : `${Math.round(spanMs / 60000)} min`})`)));
  fig.append(svg);
  fig.append(h("ul", { class: "legend" }, series.map((se, i) => {
    const last = se.points.length ? se.points[se.points.length - 1][1] : 0;
    fig.dataset[`latest${se.key[0].toUpperCase()}${se.key.slice(1)}`] = String(last);
    fig.dataset[`samples${se.key[0].toUpperCase()}${se.key.slice(1)}`] = String(se.points.length);
    return h("li", {}, h("span", { class: `swatch s${i}`, "aria-hidden": "true" }), `${se.label}: `, h("strong", {}, `${fmtNum(last)}${unit}`));
  })));
  return fig;
}

/** The message rate and queued message charts of an object with samples. */
export function messageCharts(stats, lengths) {
  const st = stats || {};
  const rates = [
    { key: "publish", label: "Published", points: ratesOf(st.publish_details) },
    { key: "deliver", label: "Delivered", points: ratesOf(st.deliver_get_details) },
    { key: "ack", label: "Acknowledged", points: ratesOf(st.ack_details) },
    { key: "redeliver", label: "Redelivered", points: ratesOf(st.redeliver_details) },
  ];
  const queued = [
    { key: "ready", label: "Ready", points: valuesOf(lengths.messages_ready_details) },
    { key: "unacked", label: "Unacknowledged", points: valuesOf(lengths.messages_unacknowledged_details) },
  ];
  // One time frame for both, so that they line up.
  const frame = frameOf([...rates, ...queued].flatMap((x) => x.points));
  return [lineChart("Message rates", rates, "/s", frame), lineChart("Queued messages", queued, "", frame)];
}
