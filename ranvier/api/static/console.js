// The ranvier console: plain JavaScript over /api/v1 (no build step, nothing fetched from
// elsewhere). Pages are chosen by the URL's hash; live data comes as server-sent events read
// with fetch (so that the bearer token can be sent when the API asks for one).
"use strict";

const API = "/api/v1";
const main = document.getElementById("main");
const statusLine = document.getElementById("status");
let stopLive = () => {};

// -- small helpers -----------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function token() {
  return sessionStorage.getItem("ranvier-token") || "";
}

function headers(extra) {
  const out = Object.assign({}, extra || {});
  if (token()) out.Authorization = "Bearer " + token();
  return out;
}

async function getJSON(path) {
  const response = await fetch(path, { headers: headers() });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

function show(...nodes) {
  main.replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false));
}

function say(text) {
  statusLine.textContent = text;
}

function badge(phase) {
  return el("span", { class: "badge phase-" + String(phase || "unknown").toLowerCase(), text: phase || "-" });
}

function when(stamp) {
  if (!stamp) return "-";
  const date = typeof stamp === "number" ? new Date(stamp * 1000) : new Date(stamp);
  return date.toLocaleString();
}

function num(value) {
  return typeof value === "number" && !Number.isInteger(value) ? String(Number(value.toPrecision(4))) : String(value);
}

function short(id) {
  const text = String(id || "-");
  return text.length > 12 ? text.slice(-8) : text;
}

function enc(text) {
  return encodeURIComponent(text);
}

// Reads a text/event-stream with fetch; calls onEvent(name, data) per event until stopped.
function liveStream(path, onEvent) {
  const controller = new AbortController();
  (async () => {
    while (!controller.signal.aborted) {
      try {
        const response = await fetch(path, { headers: headers(), signal: controller.signal });
        if (!response.ok) throw new Error(response.statusText);
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            let name = "message";
            const data = [];
            for (const line of block.split("\n")) {
              if (line.startsWith("event:")) name = line.slice(6).trim();
              else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
            }
            if (data.length) onEvent(name, JSON.parse(data.join("\n")));
          }
        }
      } catch (error) {
        if (controller.signal.aborted) return;
        say("live updates interrupted, retrying: " + error.message);
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  })();
  return () => controller.abort();
}

// -- Axons list --------------------------------------------------------------------------------

async function axonsPage() {
  let shown = null;
  let timer = null;
  const refresh = async () => {
    const rows = await getJSON(API + "/axons");
    const text = JSON.stringify(rows);
    if (text !== shown) { // re-drawn only when it changed, so keyboard focus stays put
      shown = text;
      show(el("h1", { text: "Axons" }), rows.length ? axonsTable(rows) : el("p", { text: "No Axon is submitted yet." }));
    }
  };
  await refresh();
  let stopped = false;
  const again = () => {
    if (!stopped) timer = setTimeout(() => refresh().catch((e) => say(e.message)).finally(again), 2000);
  };
  again();
  return () => { stopped = true; clearTimeout(timer); };
}

function axonsTable(rows) {
  return el("table", { class: "axons" },
    el("caption", { text: "Submitted Axons" }),
    el("thead", {}, el("tr", {}, ["Namespace", "Axon", "Phase", "Last run", "Endpoint"].map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, rows.map((row) => el("tr", { "data-axon": row.name },
      el("td", { text: row.namespace }),
      el("td", {}, el("a", { href: `#/axons/${enc(row.namespace)}/${enc(row.name)}`, text: row.name })),
      el("td", {}, badge(row.phase)),
      el("td", {}, row.lastRun ? [row.lastRun.sensor + " ", badge(row.lastRun.phase), " " + when(row.lastRun.started)] : "none yet"),
      el("td", {}, row.endpoint ? el("a", { href: row.endpoint, text: row.endpoint }) : "-"),
    ))),
  );
}

// -- one Axon ----------------------------------------------------------------------------------

function sensorDiagram(sensor) {
  const triggers = sensor.triggers.length
    ? sensor.triggers.map((t) => el("li", { class: "trigger" }, el("strong", { text: t.type }), " " + t.name + (t.task ? ` (${t.task} ${t.condition})` : t.condition ? `: ${t.condition}` : "")))
    : [el("li", { class: "trigger", text: "on submit" })];
  const steps = sensor.steps.map((step, i) => el("li", { class: "step" },
    el("span", { class: "step-index", text: `step ${i}` }),
    step.map((a) => el("span", { class: "action" }, el("em", { text: a.kind }), " " + a.task))));
  return el("div", { class: "diagram", role: "group", "aria-label": `sensor ${sensor.name}: triggers then steps` },
    el("ul", { class: "triggers", "aria-label": "triggers" }, triggers),
    el("span", { class: "arrow", "aria-hidden": "true", text: "→" }),
    el("ol", { class: "steps", "aria-label": "steps" }, steps));
}

function runsTimeline(doc, ns, name) {
  const runs = doc.sensors.flatMap((s) => s.children.map((r) => Object.assign({ sensor: s.name }, r)));
  runs.sort((a, b) => (a.startedAtTs || 0) - (b.startedAtTs || 0));
  if (!runs.length) return el("p", { text: "No run yet." });
  return el("ol", { class: "runs", "aria-label": "sensor runs, oldest first" }, runs.map((run) => el("li", { class: "run", "data-run": run.id, "data-phase": run.status },
    el("div", { class: "run-head" },
      badge(run.status), " ",
      el("strong", { text: run.sensor }), ` run ${short(run.id)} `,
      el("span", { class: "muted", text: `${run.trigger || ""} ${when(run.startedAtTs)}` }), " ",
      el("a", { href: `#/trace/${enc(ns)}/${enc(name)}/${enc(run.id)}`, id: `trace-${run.id}`, text: "trace" }),
      run.status === "Failed" && run.reason ? el("div", { class: "reason", text: run.reason }) : null),
    el("ul", { class: "task-runs" }, run.children.map((task) => el("li", { class: "task-run", "data-task": task.taskName, "data-phase": task.status },
      badge(task.status), ` ${task.taskName} `,
      task.version != null ? el("span", { class: "version", text: `v${task.version}` }) : null, " ",
      el("button", { type: "button", class: "link", id: `log-${task.id}`, "aria-expanded": "false", onclick: (e) => toggleLog(e.currentTarget, ns, name, task) }, "log"),
    ))),
  )));
}

async function toggleLog(button, ns, name, task) {
  const item = button.closest("li");
  const open = item.querySelector("pre.log");
  if (open) {
    open.remove();
    button.setAttribute("aria-expanded", "false");
    return;
  }
  button.setAttribute("aria-expanded", "true");
  const pre = el("pre", { class: "log", tabindex: "0", "aria-label": `log of ${task.taskName}` });
  item.append(pre);
  const url = `${API}/axons/${enc(ns)}/${enc(name)}/tasks/${enc(task.taskName)}/runs/${enc(task.id)}/log?follow=true`;
  const response = await fetch(url, { headers: headers() });
  if (!response.ok) {
    pre.textContent = (await response.json().catch(() => ({}))).detail || response.statusText;
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    pre.textContent += decoder.decode(value, { stream: true });
  }
}

function linePlot(label, points, opts) {
  // points: [{x: number, y: number, label}], opts: {threshold, marks: [x], xLabel, yLabel}
  const W = 560, H = 220, L = 56, R = 16, T = 16, B = 36;
  const ys = points.map((p) => p.y).concat(opts.threshold != null ? [opts.threshold] : []);
  const xs = points.map((p) => p.x).concat(opts.marks || []);
  if (!points.length) return el("p", { class: "muted", text: "No values yet." });
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (y0 === y1) { const d = Math.abs(y0) * 0.2 || 1; y0 -= d; y1 += d; }
  const pad = (y1 - y0) * 0.1; y0 -= pad; y1 += pad;
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const path = points.map((p, i) => `${i ? "L" : "M"}${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join(" ");
  const parts = [
    svg("title", {}, label),
    svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }),
    svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }),
    svg("text", { x: 4, y: sy(y1 - pad) + 4, class: "tick" }, num(y1 - pad)),
    svg("text", { x: 4, y: sy(y0 + pad) + 4, class: "tick" }, num(y0 + pad)),
    svg("text", { x: L, y: H - 8, class: "tick" }, opts.xLabel || ""),
    svg("path", { d: path, class: "series" }),
    points.map((p) => svg("circle", { cx: sx(p.x), cy: sy(p.y), r: 3, class: "point" }, svg("title", {}, p.label || String(p.y)))),
  ];
  if (opts.threshold != null) {
    parts.push(svg("line", { x1: L, x2: W - R, y1: sy(opts.threshold), y2: sy(opts.threshold), class: "threshold" }));
    parts.push(svg("text", { x: W - R - 4, y: sy(opts.threshold) - 4, class: "tick end" }, `threshold ${opts.threshold}`));
  }
  for (const x of opts.marks || []) {
    parts.push(svg("line", { x1: sx(x), x2: sx(x), y1: T, y2: H - B, class: "fired" }));
    parts.push(svg("text", { x: sx(x) + 3, y: T + 10, class: "tick" }, "fired"));
  }
  return svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label, class: "plot" }, parts);
}

function modelsSection(doc, models) {
  if (!models.length) return el("p", { text: "No model version yet." });
  return models.map((m) => {
    const names = [...new Set(m.versions.flatMap((v) => Object.keys(v.metrics || {})))].sort();
    const loss = m.lossMetric || names[0];
    const points = m.versions.filter((v) => v.metrics && loss in v.metrics).map((v) => ({ x: v.version, y: v.metrics[loss], label: `v${v.version}: ${loss} ${num(v.metrics[loss])}` }));
    return el("section", { class: "model", "data-task": m.task, "aria-label": `model ${m.task}` },
      el("h3", { text: `${m.task}` }),
      el("table", {},
        el("caption", { text: `Versions of ${m.task}` }),
        el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Version" }), el("th", { scope: "col", text: "Phase" }), names.map((n) => el("th", { scope: "col", text: n })), el("th", { scope: "col", text: "Created" }))),
        el("tbody", {}, m.versions.map((v) => el("tr", { class: "version-row", "data-version": v.version },
          el("th", { scope: "row", text: `v${v.version}` }), el("td", {}, badge(v.phase)),
          names.map((n) => el("td", { text: v.metrics && n in v.metrics ? num(v.metrics[n]) : "-" })),
          el("td", { text: when(v.created) }))))),
      loss ? linePlot(`${loss} across versions of ${m.task}`, points, { xLabel: `version (${loss})` }) : null);
  });
}

function deploymentsSection(doc) {
  if (!doc.deployments.length) return el("p", { text: "Nothing deployed yet." });
  return doc.deployments.map((d) => el("div", { class: "deployment", "data-deployer": d.deployer },
    el("p", {}, el("strong", { text: d.deployer }), " at ", d.url ? el("a", { class: "endpoint", href: d.url, text: d.url }) : "-"),
    (d.models || []).map((model) => el("div", { class: "split", role: "group", "aria-label": `traffic split of ${model.name}` },
      el("span", { text: model.name }),
      (model.backends || []).map((b) => el("span", { class: "share", style: `flex-grow:${Math.max(b.weight || 0, 1)}`, title: `${b.name} v${b.version}: ${b.weight}%` },
        `${b.name} v${b.version} ${b.weight}%`))))));
}

function alertsSection(alerts) {
  if (!alerts.length) return el("p", { text: "No Alert trigger." });
  return alerts.map((a) => {
    const points = a.points.filter((p) => p.value != null).map((p) => ({ x: Date.parse(p.time) / 1000, y: p.value, label: `${p.value} at ${when(p.time)}` }));
    const marks = a.fired.map((f) => Date.parse(f.time) / 1000);
    return el("section", { class: "alert", "data-sensor": a.sensor, "aria-label": `alert ${a.sensor} ${a.trigger}` },
      el("h3", {}, `${a.sensor} / ${a.trigger}: `, el("code", { text: a.condition })),
      el("p", { class: "muted", text: `${points.length} values, fired ${a.fired.length} time(s)` }),
      linePlot(`${a.condition} over time`, points, { threshold: a.threshold ? a.threshold.value : null, marks, xLabel: "time" }));
  });
}

function triggerForms(doc, ns, name) {
  const rest = doc.sensors.filter((s) => s.triggers.some((t) => t.type === "Rest"));
  if (!rest.length) return null;
  return el("section", { "aria-labelledby": "trigger-h" }, el("h2", { id: "trigger-h", text: "Fire a Rest trigger" }),
    rest.map((s) => {
      const id = "payload-" + s.name;
      return el("form", { class: "trigger-form", "data-sensor": s.name, onsubmit: async (e) => {
        e.preventDefault();
        const response = await fetch(`${API}/axons/${enc(ns)}/${enc(name)}/sensors/${enc(s.name)}/trigger`, {
          method: "POST", headers: headers({ "Content-Type": "application/json" }), body: e.target.payload.value || "{}" });
        const body = await response.json().catch(() => ({}));
        say(response.ok ? `triggered ${s.name} (event ${body.event_id})` : `not triggered: ${body.detail}`);
      } },
      el("label", { for: id, text: `Payload for ${s.name} (JSON)` }),
      el("input", { id, name: "payload", value: "{}" }),
      el("button", { type: "submit", text: `Trigger ${s.name}` }));
    }));
}

async function axonPage(ns, name) {
  const base = `${API}/axons/${enc(ns)}/${enc(name)}`;
  let extras = { models: [], alerts: [], at: 0 };
  const render = async (doc) => {
    if (Date.now() - extras.at > 2000) {
      const [models, alerts] = await Promise.all([getJSON(base + "/models"), getJSON(base + "/alerts")]);
      extras = { models, alerts, at: Date.now() };
    }
    const focused = document.activeElement && document.activeElement.id;
    const openLogs = [...main.querySelectorAll("pre.log")].length;
    if (openLogs) { // keep an open log streaming: update only the parts around it
      main.querySelector("#summary").replaceWith(summary(doc));
      return;
    }
    show(
      el("h1", {}, `Axon ${doc.namespace}/${doc.name} `, badge(doc.phase)),
      summary(doc),
      el("section", { "aria-labelledby": "sensors-h" }, el("h2", { id: "sensors-h", text: "Sensors" }),
        doc.sensors.map((s) => el("div", { class: "sensor", "data-sensor": s.name }, el("h3", { text: s.name }), sensorDiagram(s)))),
      el("section", { "aria-labelledby": "runs-h" }, el("h2", { id: "runs-h", text: "Runs" }), runsTimeline(doc, ns, name)),
      el("section", { "aria-labelledby": "models-h", id: "models" }, el("h2", { id: "models-h", text: "Models" }), modelsSection(doc, extras.models)),
      el("section", { "aria-labelledby": "deploy-h", id: "deployments" }, el("h2", { id: "deploy-h", text: "Deployment" }), deploymentsSection(doc)),
      el("section", { "aria-labelledby": "alerts-h", id: "alerts" }, el("h2", { id: "alerts-h", text: "Alerts" }), alertsSection(extras.alerts)),
      triggerForms(doc, ns, name),
    );
    if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
  };
  const summary = (doc) => el("dl", { id: "summary", class: "summary" },
    el("dt", { text: "Phase" }), el("dd", { class: "phase" }, badge(doc.phase)),
    el("dt", { text: "Generation" }), el("dd", { text: doc.generation }),
    el("dt", { text: "Endpoint" }), el("dd", {}, doc.endpoint ? el("a", { class: "endpoint", href: doc.endpoint, text: doc.endpoint }) : "-"));
  await render(await getJSON(base));
  const stopStream = liveStream(base + "/stream", (name_, doc) => { render(doc).catch((e) => say(e.message)); });
  // an Alert's values arrive without the Axon changing: its plot is refreshed on its own
  let shownAlerts = JSON.stringify(extras.alerts);
  const timer = setInterval(async () => {
    try {
      const alerts = await getJSON(base + "/alerts");
      const text = JSON.stringify(alerts);
      const section = main.querySelector("#alerts");
      if (text !== shownAlerts && section) {
        shownAlerts = text;
        extras.alerts = alerts;
        section.replaceChildren(...[el("h2", { id: "alerts-h", text: "Alerts" }), alertsSection(alerts)].flat());
      }
    } catch (error) {
      say(error.message);
    }
  }, 2000);
  return () => { stopStream(); clearInterval(timer); };
}

// -- events, explain, trace --------------------------------------------------------------------

function eventRow(e) {
  return el("tr", { "data-type": e.type },
    el("td", { text: e.seq }), el("td", { text: when(e.time) }), el("td", { text: e.type.replace("ranvier.", "") }),
    el("td", { text: e.data.axon || "-" }), el("td", {}, el("code", { text: JSON.stringify(e.data).slice(0, 160) })),
    el("td", {}, el("a", { href: `#/explain/${enc(e.id)}`, text: "why?" })));
}

async function eventsPage(params) {
  const axon = params.get("axon") || "", type = params.get("type") || "";
  const query = new URLSearchParams();
  if (axon) query.set("axon", axon);
  if (type) query.set("type", type);
  const form = el("form", { class: "filters", onsubmit: (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    if (e.target.axon.value) q.set("axon", e.target.axon.value);
    if (e.target.type.value) q.set("type", e.target.type.value);
    location.hash = "#/events?" + q.toString();
  } },
    el("label", { for: "f-axon", text: "Axon" }), el("input", { id: "f-axon", name: "axon", value: axon }),
    el("label", { for: "f-type", text: "Type" }),
    el("select", { id: "f-type", name: "type" }, ["", "lifecycle", "metric", "rest", "calendar", "axon", "tick"].map((t) => el("option", { value: t, selected: t === type, text: t || "any" }))),
    el("button", { type: "submit", text: "Filter" }));
  const body = el("tbody", {});
  const found = await getJSON(`${API}/events?limit=100&${query}`);
  for (const e of found) body.prepend(eventRow(e));
  show(el("h1", { text: "Events" }), form,
    el("table", { class: "events" }, el("caption", { text: "Newest first, live" }),
      el("thead", {}, el("tr", {}, ["Seq", "Time", "Type", "Axon", "Data", ""].map((h) => el("th", { scope: "col", text: h })))), body));
  return liveStream(`${API}/events/stream?${query}`, (name_, e) => body.prepend(eventRow(e)));
}

async function explainPage(id) {
  const found = await getJSON(`${API}/events/${enc(id)}/decisions`);
  show(el("h1", { text: `Why: event ${id}` }),
    found.decisions.length ? el("ul", { class: "decisions" }, found.decisions.map((d) => el("li", { class: d.fired ? "fired" : "" },
      el("strong", { text: d.fired ? "FIRED" : d.matched ? "matched" : "not matched" }), ` ${d.axon} ${d.sensor} [${d.trigger || "-"}]: ${d.reason}`,
      d.sensor_run_id ? [" ", el("a", { href: `#/trace/${enc(d.namespace || "default")}/${enc(d.axon)}/${enc(d.sensor_run_id)}`, text: "trace" })] : null)))
      : el("p", { text: "No decision recorded for this event (it concerned no sensor, or the engine has not seen it yet)." }));
  return () => {};
}

async function tracePage(ns, name, run) {
  const found = await getJSON(`${API}/axons/${enc(ns)}/${enc(name)}/runs/${enc(run)}/trace`);
  const items = [];
  for (const link of found.links) {
    if (link.event) items.push(el("li", { class: "link-event", "data-type": link.event.type }, el("strong", { text: "event " }), `${link.event.type} `, el("code", { text: JSON.stringify(link.event.data).slice(0, 200) })));
    if (link.metric) items.push(el("li", { class: "link-metric" }, el("strong", { text: "metric " }), `${link.metric.data.name} = ${num(link.metric.data.value)} at ${when(link.metric.time)}`));
    if (link.decision) items.push(el("li", { class: "link-decision" }, el("strong", { text: "decision " }), `${link.sensor}: ${link.decision.reason}`));
    items.push(el("li", { class: "link-run" }, el("strong", { text: "sensor run " }), `${link.sensor} ${short(link.run.id)} `, badge(link.run.phase)));
    for (const t of link.tasks) {
      items.push(el("li", { class: "link-task", "data-kind": t.kind }, el("strong", { text: `${t.kind} ` }), `${t.task} `, badge(t.phase)));
      if (t.model) items.push(el("li", { class: "link-model" }, el("strong", { text: "model " }), `${t.model.task} v${t.model.version} `, el("code", { text: JSON.stringify(t.model.metrics) })));
      if (t.deployment) items.push(el("li", { class: "link-deployment" }, el("strong", { text: "deployment " }), `${t.deployment.deployer} at ${t.deployment.url}`));
    }
  }
  show(el("h1", { text: `Trace of run ${short(run)}` }), el("p", {}, el("a", { href: `#/axons/${enc(ns)}/${enc(name)}`, text: `back to ${name}` })),
    el("ol", { class: "trace", "aria-label": "cause to effect" }, items));
  return () => {};
}

// -- routing -----------------------------------------------------------------------------------

async function route() {
  stopLive();
  stopLive = () => {};
  const [path, query] = (location.hash.slice(1) || "/").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query || "");
  try {
    if (parts[0] === "axons" && parts.length === 3) stopLive = await axonPage(parts[1], parts[2]);
    else if (parts[0] === "events") stopLive = await eventsPage(params);
    else if (parts[0] === "explain" && parts[1]) stopLive = await explainPage(parts[1]);
    else if (parts[0] === "trace" && parts.length === 4) stopLive = await tracePage(parts[1], parts[2], parts[3]);
    else stopLive = await axonsPage();
  } catch (error) {
    show(el("h1", { text: "Error" }), el("p", { class: "error", text: error.message }));
  }
}

document.getElementById("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("ranvier-token", e.target.token.value.trim());
  e.target.token.value = "";
  say("token set for this tab");
  route();
});
window.addEventListener("hashchange", () => { route(); main.focus(); });
route();
