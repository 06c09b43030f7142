// Lineside fleet dashboard: polls /api/v1 with the operator's bearer token and draws the fleet.
// No framework and nothing fetched from elsewhere: DOM built with createElement (never innerHTML,
// so device-supplied strings cannot inject markup), charts drawn as inline SVG.

const POLL_MS = 2000;
const TOKEN_KEY = "lineside.token";
const RECENT_WINDOWS = 120;
const EVENT_LIMIT = 200;
const SVG_NS = "http://www.w3.org/2000/svg";
const MARK_KINDS = {
  "update.installed": "release",
  "probation.passed": "release",
  rollback: "rollback",
};

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  role: null,
  devices: [],
  models: [],
  rollouts: [],
  details: new Map(),
  alerts: [],
  accuracy: [],
  labelling: { sample: null, labels: [], total: 0, imageFor: null },
  selected: null,
  timer: null,
  polling: null,
  rendered: new Map(), // section → JSON of what it last drew (skip identical redraws)
  eventsMissing: false,
};

const $ = (id) => document.getElementById(id);

// -- small helpers ------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  appendAll(el, children);
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  appendAll(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.setAttribute("class", v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
}

function appendAll(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
}

// Replace a container's children, keeping keyboard focus on the element with the same id.
function replaceKeepingFocus(container, ...children) {
  const active = document.activeElement;
  const focusedId = active && container.contains(active) ? active.id : null;
  container.replaceChildren(...children.flat());
  if (focusedId) {
    const again = document.getElementById(focusedId);
    if (again) again.focus();
  }
}

// True when `value` differs from what `section` last drew (and remembers it).
function changed(section, value) {
  const json = JSON.stringify(value);
  if (state.rendered.get(section) === json) return false;
  state.rendered.set(section, json);
  return true;
}

const ms = (iso) => (iso ? Date.parse(iso) : NaN);
const pct = (x) => `${(100 * x).toFixed(x > 0 && x < 0.1 ? 1 : 0)}%`;
const num = (x, d = 2) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(d));
const clock = (t) => new Date(t).toLocaleTimeString([], { hour12: false });
const safeId = (text) => String(text).replace(/[^A-Za-z0-9_-]/g, "_");

function ago(iso) {
  const t = ms(iso);
  if (Number.isNaN(t)) return "never";
  const secs = Math.max(0, Math.round((Date.now() - t) / 1000));
  if (secs < 60) return `${secs} s ago`;
  if (secs < 3600) return `${Math.round(secs / 60)} min ago`;
  if (secs < 86400) return `${Math.round(secs / 3600)} h ago`;
  return new Date(t).toLocaleDateString();
}

function announce(text) {
  $("announce").textContent = text;
}

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

const isAdmin = () => state.role === "admin";

// -- API ----------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, { method = "GET", body } = {}) {
  const headers = { Authorization: `Bearer ${state.token}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(`/api/v1${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  let data = null;
  try {
    data = await res.json();
  } catch {
    data = null;
  }
  if (!res.ok) {
    const message = (data && data.message) || `${res.status} ${res.statusText}`;
    throw new ApiError(res.status, message);
  }
  return data;
}

// -- sign in / out ------------------------------------------------------------------------------

async function signIn(token) {
  state.token = token;
  const who = await api("/whoami");
  state.role = who.role;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  const badge = $("role-badge");
  badge.hidden = false;
  badge.textContent = who.role;
  badge.className = `badge role-${who.role}`;
  $("readonly-note").hidden = isAdmin();
  for (const el of document.querySelectorAll(".admin-only")) el.hidden = !isAdmin();
  state.rendered.clear();
  await poll();
}

function signOut(message = "") {
  clearTimeout(state.timer);
  state.timer = null;
  sessionStorage.removeItem(TOKEN_KEY);
  Object.assign(state, { token: null, role: null, selected: null });
  state.details.clear();
  state.rendered.clear();
  $("app").hidden = true;
  $("login").hidden = false;
  $("logout").hidden = true;
  $("role-badge").hidden = true;
  $("login-error").textContent = message;
  setStatus("Not signed in");
  $("token").value = "";
  $("token").focus();
}

// -- polling ------------------------------------------------------------------------------------

async function poll() {
  clearTimeout(state.timer);
  if (state.polling) return state.polling; // one refresh at a time; an action waits for it
  state.polling = pollOnce().finally(() => {
    state.polling = null;
  });
  return state.polling;
}

async function pollOnce() {
  try {
    await refresh();
    setStatus(`Live · updated ${clock(Date.now())}`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      signOut("That token is not valid (any more). Sign in again.");
      return;
    }
    setStatus(`Cannot reach the server (${err.message}); retrying`, true);
  }
  if (state.token && !document.hidden) state.timer = setTimeout(poll, POLL_MS);
}

async function refresh() {
  const [devices, models, rollouts, alerts, accuracy] = await Promise.all([
    api("/dashboard/devices"),
    api("/models"),
    api("/rollouts"),
    api("/alerts"),
    api("/accuracy?by_device=true"),
  ]);
  Object.assign(state, { devices, models, rollouts, alerts, accuracy });
  // Details for the rollouts a person watches: the active ones and the latest few.
  const watch = rollouts.filter((r, i) => i < 3 || r.state === "running" || r.state === "paused");
  const details = await Promise.all(watch.map((r) => api(`/rollouts/${encodeURIComponent(r.id)}`)));
  state.details = new Map(details.map((d) => [d.id, d]));
  if (!state.selected || !devices.some((d) => d.device_id === state.selected)) {
    state.selected = devices.length ? devices[0].device_id : null;
  }
  renderDevices();
  renderModels();
  renderAccuracy();
  if (isAdmin()) await refreshLabelling();
  renderRollouts();
  renderAlerts();
  await refreshChart();
}

// -- devices ------------------------------------------------------------------------------------

function renderDevices() {
  const devices = state.devices;
  $("devices-count").textContent = `(${devices.filter((d) => d.online).length} of ${devices.length} online)`;
  $("devices-empty").hidden = devices.length > 0;
  const rows = devices.map((d) => {
    const health = d.health || { status: "unknown", reasons: [] };
    const why = health.reasons.join("; ");
    const selected = d.device_id === state.selected;
    return h(
      "tr",
      { "data-device": d.device_id, class: selected ? "selected" : null },
      h("th", { scope: "row", "data-label": "Device" }, d.device_id, d.group ? h("span", { class: "sub" }, ` ${d.group}`) : null),
      h(
        "td",
        { "data-label": "Online" },
        h("span", { class: `dot ${d.online ? "on" : "off"}`, "aria-hidden": "true" }),
        d.online ? "online" : "offline",
      ),
      h("td", { "data-label": "Model" }, d.active_model || "–", d.probation ? h("span", { class: "sub" }, " (probation)") : null),
      h("td", { "data-label": "Provider" }, (d.execution_provider || "–").replace("ExecutionProvider", "")),
      h("td", { "data-label": "Last seen", title: d.last_seen || "" }, ago(d.last_seen)),
      h(
        "td",
        { "data-label": "Health" },
        h("span", { class: `pill health-${health.status}` }, health.status),
        why ? h("span", { class: "sub reasons" }, ` ${why}`) : null,
      ),
      h(
        "td",
        { "data-label": "" },
        h(
          "button",
          {
            type: "button",
            class: "small",
            id: `chart-btn-${safeId(d.device_id)}`,
            "aria-pressed": selected ? "true" : "false",
            "aria-label": `Show the chart for ${d.device_id}`,
            onclick: () => selectDevice(d.device_id),
          },
          "Chart",
        ),
      ),
    );
  });
  // Last-seen times change every poll, so the table is always redrawn (focus kept by id).
  replaceKeepingFocus($("devices-body"), rows);

  const ids = devices.map((d) => d.device_id);
  const select = $("chart-device");
  if (changed("device-options", ids)) {
    select.replaceChildren(...ids.map((id) => h("option", { value: id }, id)));
  }
  if (state.selected) select.value = state.selected;
}

function selectDevice(id) {
  state.selected = id;
  state.rendered.delete("chart");
  renderDevices();
  refreshChart().catch((err) => setStatus(`Chart: ${err.message}`, true));
}

// -- chart --------------------------------------------------------------------------------------

async function refreshChart() {
  const id = state.selected;
  const box = $("chart-box");
  if (!id) {
    box.replaceChildren(h("p", { class: "hint" }, "No device selected."));
    $("chart-summary").textContent = "";
    return;
  }
  const path = `/devices/${encodeURIComponent(id)}`;
  const [device, events] = await Promise.all([
    api(`${path}?recent=${RECENT_WINDOWS}`),
    state.eventsMissing
      ? Promise.resolve([])
      : api(`${path}/events?limit=${EVENT_LIMIT}&kind=${encodeURIComponent(Object.keys(MARK_KINDS).join(","))}`).catch((err) => {
          // Servers before the events endpoint: draw without release/rollback marks.
          if (err instanceof ApiError && err.status === 404 && !/device/i.test(err.message)) state.eventsMissing = true;
          return [];
        }),
  ]);
  if (id !== state.selected) return; // the operator picked another device meanwhile
  const points = (device.recent_telemetry || [])
    .map((t) => ({
      t: ms(t.window_start) + 1000 * (t.window_s || 0),
      p50: t.confidence_p50,
      low: t.frames ? t.low_confidence / t.frames : 0,
      fps: t.fps || 0,
      model: t.model,
      seq: t.seq,
    }))
    .filter((p) => !Number.isNaN(p.t))
    .sort((a, b) => a.t - b.t);
  const marks = state.eventsMissing
    ? modelChanges(points)
    : (events || [])
        .filter((e) => e.kind in MARK_KINDS)
        .map((e) => ({ t: ms(e.at), kind: MARK_KINDS[e.kind], label: e.kind, model: modelRef(e.model) }))
        .filter((m) => !Number.isNaN(m.t));
  if (!changed("chart", { id, points, marks })) return;
  box.replaceChildren(drawChart(id, points, marks));
  $("chart-summary").textContent = summarize(points, marks);
}

// "name@version" from either that string or a {name, version} object.
function modelRef(m) {
  if (!m) return "";
  if (typeof m === "string") return m;
  return m.name && m.version ? `${m.name}@${m.version}` : "";
}

// Without the events endpoint: the moments the telemetry's model changed (up = release, down = rollback).
function modelChanges(points) {
  const out = [];
  for (let i = 1; i < points.length; i++) {
    const [a, b] = [points[i - 1].model, points[i].model];
    if (!a || !b || a === b) continue;
    const up = b.split("@")[1].localeCompare(a.split("@")[1], undefined, { numeric: true }) > 0;
    out.push({ t: points[i].t, kind: up ? "release" : "rollback", label: `${a} → `, model: b });
  }
  return out;
}

function summarize(points, marks) {
  if (!points.length) return "No telemetry from this device yet.";
  const last = points[points.length - 1];
  const releases = marks.filter((m) => m.kind === "release").length;
  const rollbacks = marks.filter((m) => m.kind === "rollback").length;
  return (
    `${points.length} windows from ${clock(points[0].t)} to ${clock(last.t)}; latest: confidence p50 ` +
    `${num(last.p50)}, low-confidence ${pct(last.low)}, ${num(last.fps, 1)} fps on ${last.model || "no model"}; ` +
    `${releases} release mark${releases === 1 ? "" : "s"}, ${rollbacks} rollback${rollbacks === 1 ? "" : "s"}.`
  );
}

function drawChart(id, points, marks) {
  const W = 640;
  const PANEL = 96;
  const GAP = 26;
  const LEFT = 44;
  const RIGHT = 10;
  const TOP = 8;
  const panels = [
    { key: "p50", label: "confidence p50", max: 1, fmt: (v) => v.toFixed(1) },
    { key: "low", label: "low-confidence rate", max: 1, fmt: (v) => `${Math.round(v * 100)}%` },
    { key: "fps", label: "fps", max: Math.max(1, ...points.map((p) => p.fps)) * 1.1, fmt: (v) => v.toFixed(0) },
  ];
  const H = TOP + panels.length * (PANEL + GAP) + 8;
  const svg = s("svg", {
    viewBox: `0 0 ${W} ${H}`,
    class: "chart",
    role: "img",
    "aria-label": `Chart for ${id}: ${summarize(points, marks)}`,
    "data-points": points.length,
    "data-marks": marks.length,
  });
  if (!points.length) {
    svg.append(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis" }, "no telemetry yet"));
    return svg;
  }
  const t0 = points[0].t;
  const t1 = Math.max(points[points.length - 1].t, t0 + 1000);
  const x = (t) => LEFT + ((t - t0) / (t1 - t0)) * (W - LEFT - RIGHT);

  panels.forEach((p, i) => {
    const y0 = TOP + i * (PANEL + GAP) + 12;
    const y = (v) => y0 + PANEL - (Math.min(Math.max(v, 0), p.max) / p.max) * PANEL;
    const g = s("g", { class: `panel panel-${p.key}` });
    g.append(
      s("text", { x: LEFT, y: y0 - 3, class: "panel-label" }, p.label),
      s("line", { x1: LEFT, x2: W - RIGHT, y1: y0 + PANEL, y2: y0 + PANEL, class: "axis-line" }),
      s("line", { x1: LEFT, x2: W - RIGHT, y1: y0, y2: y0, class: "grid-line" }),
      s("text", { x: LEFT - 4, y: y0 + 4, "text-anchor": "end", class: "axis" }, p.fmt(p.max)),
      s("text", { x: LEFT - 4, y: y0 + PANEL, "text-anchor": "end", class: "axis" }, p.fmt(0)),
    );
    for (const m of marks) {
      if (m.t < t0 || m.t > t1) continue;
      g.append(
        s(
          "line",
          { x1: x(m.t), x2: x(m.t), y1: y0, y2: y0 + PANEL, class: `mark mark-${m.kind}` },
          s("title", {}, `${m.label} ${m.model} at ${clock(m.t)}`),
        ),
      );
      if (i === 0) {
        const version = (m.model || "").split("@")[1] || m.kind;
        g.append(s("text", { x: x(m.t) + 3, y: y0 + PANEL - 4, class: `mark-label mark-label-${m.kind}` }, version));
      }
    }
    const coords = points.map((pt) => `${x(pt.t).toFixed(1)},${y(pt[p.key]).toFixed(1)}`);
    g.append(s("polyline", { points: coords.join(" "), class: `series series-${p.key}` }));
    for (const pt of points) {
      g.append(
        s(
          "circle",
          { cx: x(pt.t).toFixed(1), cy: y(pt[p.key]).toFixed(1), r: 2.2, class: `pt pt-${p.key}` },
          s("title", {}, `${clock(pt.t)} ${p.label} ${p.key === "fps" ? num(pt.fps, 1) : p.key === "low" ? pct(pt.low) : num(pt.p50)} (${pt.model || "no model"})`),
        ),
      );
    }
    svg.append(g);
  });
  const yb = H - 4;
  svg.append(
    s("text", { x: LEFT, y: yb, class: "axis" }, clock(t0)),
    s("text", { x: W - RIGHT, y: yb, "text-anchor": "end", class: "axis" }, clock(t1)),
  );
  return svg;
}

// -- models -------------------------------------------------------------------------------------

function renderModels() {
  const activeOn = new Map();
  for (const d of state.devices) {
    if (d.active_model) activeOn.set(d.active_model, (activeOn.get(d.active_model) || 0) + 1);
  }
  const models = [...state.models].sort((a, b) =>
    a.name === b.name ? b.version.localeCompare(a.version, undefined, { numeric: true }) : a.name.localeCompare(b.name),
  );
  $("models-empty").hidden = models.length > 0;
  const view = models.map((m) => [m.name, m.version, m.device_classes, m.created, activeOn.get(`${m.name}@${m.version}`) || 0]);
  if (changed("models", view)) {
    replaceKeepingFocus(
      $("models-body"),
      view.map(([name, version, classes, created, n]) =>
        h(
          "tr",
          {},
          h("th", { scope: "row", "data-label": "Model" }, name),
          h("td", { "data-label": "Version" }, version),
          h("td", { "data-label": "Device classes" }, (classes || []).join(", ") || "any"),
          h("td", { "data-label": "Released", title: created || "" }, created ? new Date(created).toLocaleString() : "–"),
          h("td", { "data-label": "Active on" }, `${n} device${n === 1 ? "" : "s"}`),
        ),
      ),
    );
  }
  const refs = models.map((m) => `${m.name}@${m.version}`);
  const select = $("rf-model");
  if (changed("model-options", refs)) {
    const keep = select.value;
    select.replaceChildren(...refs.map((r) => h("option", { value: r }, r)));
    if (refs.includes(keep)) select.value = keep;
  }
}

function renderAccuracy() {
  const rows = state.accuracy;
  $("accuracy-empty").hidden = rows.length > 0;
  const view = rows.map((a) => [a.model, a.device_id, a.n, a.correct, a.accuracy, a.dimension_mae_mm]);
  if (!changed("accuracy", view)) return;
  replaceKeepingFocus(
    $("accuracy-body"),
    view.map(([model, device, n, correct, accuracy, mae]) =>
      h(
        "tr",
        { "data-model": model, "data-device": device || "" },
        h("th", { scope: "row", "data-label": "Model" }, model),
        h("td", { "data-label": "Device" }, device || "all"),
        h("td", { "data-label": "Truth" }, String(n)),
        h("td", { "data-label": "Correct" }, String(correct)),
        h("td", { "data-label": "Accuracy", class: "accuracy" }, accuracy === null ? "–" : pct(accuracy)),
        h("td", { "data-label": "Dimension MAE (mm)" }, num(mae)),
      ),
    ),
  );
}

// -- labelling -----------------------------------------------------------------------------------

async function refreshLabelling() {
  const [page, labels] = await Promise.all([
    api("/samples?labelled=false&limit=1"),
    api("/samples/labels/known"),
  ]);
  const lab = state.labelling;
  lab.sample = page.samples.length ? page.samples[0] : null;
  lab.total = page.total;
  lab.labels = labels;
  renderLabelling();
}

function renderLabelling() {
  const lab = state.labelling;
  const sample = lab.sample;
  $("labelling-count").textContent = `(${lab.total} unlabelled)`;
  $("labelling-empty").hidden = sample !== null;
  $("labelling-box").hidden = sample === null;
  if (!sample) return;
  $("labelling-box").dataset.sample = String(sample.id);
  $("labelling-guess").textContent =
    `${sample.device_id} · model ${sample.model.name}@${sample.model.version} says ${sample.label} ` +
    `(confidence ${pct(sample.confidence)})`;
  if (lab.imageFor !== sample.id) {
    lab.imageFor = sample.id;
    fetch(`/api/v1/samples/${sample.id}/image`, { headers: { Authorization: `Bearer ${state.token}` } })
      .then((r) => (r.ok ? r.blob() : null))
      .then((blob) => {
        if (blob && state.labelling.imageFor === sample.id) $("labelling-image").src = URL.createObjectURL(blob);
      });
  }
  if (changed("labelling-buttons", [sample.id, lab.labels])) {
    replaceKeepingFocus(
      $("labelling-buttons"),
      lab.labels.map((name, i) =>
        h(
          "button",
          { type: "button", class: "small", "data-label": name, onclick: () => label(name, false) },
          i < 9 ? `${i + 1} · ${name}` : name,
        ),
      ),
    );
  }
}

async function label(name, isNew) {
  const sample = state.labelling.sample;
  if (!sample) return;
  try {
    await api("/samples/labels", { method: "POST", body: { labels: [{ id: sample.id, label: name }], new_labels: isNew } });
    $("labelling-msg").className = "msg ok";
    $("labelling-msg").textContent = `Sample ${sample.id} labelled ${name}.`;
    announce(`Sample ${sample.id} labelled ${name}`);
    await refreshLabelling();
  } catch (err) {
    $("labelling-msg").className = "msg error";
    $("labelling-msg").textContent = `Not labelled: ${err.message}`;
  }
}

function labellingKey(event) {
  if (!isAdmin() || !state.labelling.sample) return;
  const target = event.target;
  if (target instanceof HTMLInputElement || target instanceof HTMLSelectElement || target instanceof HTMLTextAreaElement) return;
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const n = Number(event.key);
  if (Number.isInteger(n) && n >= 1 && n <= 9 && n <= state.labelling.labels.length) {
    event.preventDefault();
    label(state.labelling.labels[n - 1], false);
  }
}

async function startRollout(event) {
  event.preventDefault();
  const msg = $("rollout-form-msg");
  const model = $("rf-model").value;
  if (!model) {
    msg.textContent = "Choose a release first.";
    return;
  }
  const typed = $("rf-devices")
    .value.split(/[\s,]+/)
    .filter(Boolean);
  const body = {
    model,
    devices: typed.length ? typed : state.devices.map((d) => d.device_id),
    stages: $("rf-stages").value.trim() || undefined,
    soak: $("rf-soak").value.trim() || undefined,
  };
  const minFrames = $("rf-min-frames").value.trim();
  if (minFrames) body.min_gate_frames = Number(minFrames);
  const button = $("rf-submit");
  button.disabled = true;
  try {
    const r = await api("/rollouts", { method: "POST", body });
    msg.textContent = `Started rollout ${r.id} of ${r.ref}.`;
    msg.className = "msg ok";
    announce(msg.textContent);
    await poll();
  } catch (err) {
    msg.textContent = `Not started: ${err.message}`;
    msg.className = "msg error";
  } finally {
    button.disabled = false;
  }
}

// -- rollouts -----------------------------------------------------------------------------------

function renderRollouts() {
  const list = state.rollouts;
  $("rollouts-empty").hidden = list.length > 0;
  const view = list.map((r) => state.details.get(r.id) || r);
  if (!changed("rollouts", { view, role: state.role })) return;
  replaceKeepingFocus($("rollouts-list"), view.map((r) => (state.details.has(r.id) ? rolloutCard(r) : rolloutLine(r))));
}

function rolloutLine(r) {
  return h(
    "article",
    { class: `rollout compact state-${r.state}`, "data-rollout": r.id },
    h(
      "h3",
      {},
      r.ref,
      " ",
      h("span", { class: `pill state-${r.state}`, "data-role": "state" }, r.state),
    ),
    h("p", { class: "sub" }, `${r.id} · ${r.devices} devices · created ${new Date(r.created_at).toLocaleString()}`, r.reason ? ` · ${r.reason}` : ""),
  );
}

function stageBar(stage, index, current) {
  const c = stage.counts || {};
  const passed = c.passed || 0;
  const failed = (c.failed || 0) + (c.rolled_back || 0);
  const inflight = (c.sent || 0) + (c.installing || 0) + (c.probation || 0) + (c.deferred || 0);
  const deferred = c.deferred || 0;
  const n = stage.devices || 1;
  const W = 200;
  const w = (k) => ((k / n) * W).toFixed(1);
  const label = `Stage ${index + 1} (${stage.size}): ${passed} of ${stage.devices} passed, ${inflight} in progress (${deferred} deferred), ${failed} failed`;
  return h(
    "li",
    { class: index === current ? "current" : null, "data-stage": index },
    h("span", { class: "stage-name" }, `Stage ${index + 1} · ${stage.size}`),
    s(
      "svg",
      { viewBox: `0 0 ${W} 10`, class: "bar", role: "img", "aria-label": label, preserveAspectRatio: "none" },
      s("rect", { x: 0, y: 0, width: W, height: 10, class: "bar-bg" }),
      s("rect", { x: 0, y: 0, width: w(passed), height: 10, class: "bar-passed" }),
      s("rect", { x: w(passed), y: 0, width: w(inflight), height: 10, class: "bar-inflight" }),
      s("rect", { x: w(passed + inflight), y: 0, width: w(failed), height: 10, class: "bar-failed" }),
    ),
    h("span", { class: "stage-counts" }, `${passed}/${stage.devices} passed`, inflight ? `, ${inflight} in progress` : "", deferred ? h("span", { "data-role": "deferred" }, ` (${deferred} deferred: waiting for the line)`) : "", failed ? `, ${failed} failed` : ""),
  );
}

function gateRows(r) {
  const q = r.last_quality;
  const p = r.policy || {};
  if (!q) return h("p", { class: "sub" }, "Quality gates: not measured yet (they run after each stage's soak).");
  const drop = q.baseline.confidence_p50 - q.current.confidence_p50;
  const rise = q.current.low_confidence_rate - q.baseline.low_confidence_rate;
  const okDrop = drop <= p.max_confidence_p50_drop;
  const okRise = rise <= p.max_low_confidence_rate_rise;
  const verdict = (ok) => h("span", { class: `pill ${ok ? "health-ok" : "health-failing"}` }, ok ? "pass" : "fail");
  return h(
    "table",
    { class: "gates" },
    h("caption", {}, "Quality gates (same devices, before → on the new version)"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Gate"), h("th", { scope: "col" }, "Before"), h("th", { scope: "col" }, "Now"), h("th", { scope: "col" }, "Allowed"), h("th", { scope: "col" }, "Result"))),
    h(
      "tbody",
      {},
      h("tr", {}, h("th", { scope: "row" }, "Confidence p50"), h("td", {}, num(q.baseline.confidence_p50)), h("td", {}, num(q.current.confidence_p50)), h("td", {}, `drop ≤ ${num(p.max_confidence_p50_drop)}`), h("td", {}, verdict(okDrop))),
      h("tr", {}, h("th", { scope: "row" }, "Low-confidence rate"), h("td", {}, pct(q.baseline.low_confidence_rate)), h("td", {}, pct(q.current.low_confidence_rate)), h("td", {}, `rise ≤ ${pct(p.max_low_confidence_rate_rise || 0)}`), h("td", {}, verdict(okRise))),
    ),
  );
}

function rolloutCard(r) {
  const active = r.state === "running" || r.state === "paused";
  const sid = safeId(r.id);
  const actions = [];
  if (isAdmin() && active) {
    if (r.state === "running") actions.push(h("button", { type: "button", id: `pause-${sid}`, "data-action": "pause", onclick: () => act(r, "pause") }, "Pause"));
    if (r.state === "paused") actions.push(h("button", { type: "button", id: `resume-${sid}`, "data-action": "resume", onclick: () => act(r, "resume") }, "Resume"));
    actions.push(h("button", { type: "button", class: "danger", id: `abort-${sid}`, "data-action": "abort", onclick: () => act(r, "abort") }, "Abort"));
    actions.push(h("button", { type: "button", class: "danger", id: `abort-rb-${sid}`, "data-action": "abort-rollback", onclick: () => act(r, "abort", true) }, "Abort and roll back"));
  }
  const devices = Object.values(r.devices || {}).sort((a, b) => a.stage - b.stage || a.device_id.localeCompare(b.device_id));
  const stageText = r.stages && r.stages.length ? `stage ${Math.min(r.stage + 1, r.stages.length)} of ${r.stages.length}` : "";
  return h(
    "article",
    { class: `rollout state-${r.state}`, "data-rollout": r.id, "aria-labelledby": `ro-h-${sid}` },
    h("h3", { id: `ro-h-${sid}` }, r.ref, " ", h("span", { class: `pill state-${r.state}`, "data-role": "state" }, r.state)),
    h(
      "p",
      { class: "sub" },
      `${r.id} · ${Object.keys(r.devices || {}).length} devices · ${stageText} · started ${clock(r.started_at * 1000)}`,
      ` · soak ${r.policy ? r.policy.soak_s : "?"} s`,
    ),
    r.reason ? h("p", { class: r.state === "halted" ? "reason error" : "reason" }, r.reason) : null,
    h("ol", { class: "stages", "aria-label": "Stages" }, (r.stages || []).map((st, i) => stageBar(st, i, r.stage))),
    gateRows(r),
    verdictRows(r),
    h(
      "details",
      {},
      h("summary", {}, "Devices and history"),
      h(
        "ul",
        { class: "device-progress" },
        devices.map((d) => h("li", { "data-device": d.device_id }, h("strong", {}, d.device_id), ` stage ${d.stage + 1}: `, h("span", { class: `pill dev-${d.status}` }, d.status), d.reason ? ` ${d.reason}` : "")),
      ),
      h(
        "ol",
        { class: "history" },
        (r.history || []).slice(-12).map((e) => h("li", {}, h("time", {}, clock(e.at * 1000)), ` ${e.text}`)),
      ),
    ),
    actions.length ? h("div", { class: "actions" }, actions) : null,
  );
}

// Each gate's verdict (pass / inconclusive / fail, the test, the sample), the shadow phase and overrides.
function verdictRows(r) {
  const rows = (r.verdicts || []).map((v) =>
    h("li", { "data-gate": v.gate, "data-metric": v.metric }, h("span", { class: `pill verdict-${v.verdict.replace(/ /g, "-")}` }, v.verdict), ` ${v.gate} · ${v.metric} (${v.test}, n=${v.n}): ${v.reason}`),
  );
  const sh = r.shadow;
  if (sh) rows.unshift(h("li", { "data-gate": "shadow-phase" }, `shadow phase on ${Object.keys(sh.devices || {}).length} devices (${sh.size}, soak ${sh.soak_s} s): ${sh.state}`));
  (r.overrides || []).forEach((o) => rows.push(h("li", { "data-override": o.gate }, `override of ${o.gate} by ${o.by}: ${o.why}`)));
  return rows.length ? h("ul", { class: "verdicts", "aria-label": "Verdicts" }, rows) : null;
}

async function act(r, op, rollback = false) {
  if (op === "abort" && !window.confirm(`Abort rollout ${r.id} (${r.ref})${rollback ? " and roll its devices back" : ""}?`)) return;
  let why = "";
  if (op === "resume" && r.awaiting_override) {
    why = window.prompt(`Resuming overrides the inconclusive ${r.awaiting_override} verdict. Why?`) || "";
    if (!why.trim()) return;
  }
  try {
    const body = op === "abort" ? { rollback } : why ? { why, by: state.role || "" } : undefined;
    const out = await api(`/rollouts/${encodeURIComponent(r.id)}/${op}`, { method: "POST", body });
    announce(`Rollout ${r.id} is now ${out.state}.`);
  } catch (err) {
    announce(`Could not ${op} ${r.id}: ${err.message}`);
    setStatus(`Could not ${op} ${r.id}: ${err.message}`, true);
  }
  await poll();
}

// -- alerts -------------------------------------------------------------------------------------

function renderAlerts() {
  const openOnly = $("alerts-open-only").checked;
  const open = state.alerts.filter((a) => !a.acknowledged);
  $("alerts-count").textContent = `(${open.length} open)`;
  const shown = openOnly ? open : state.alerts;
  $("alerts-empty").hidden = shown.length > 0;
  if (!changed("alerts", { shown, role: state.role })) return;
  replaceKeepingFocus(
    $("alerts-list"),
    shown.map((a) =>
      h(
        "li",
        { class: `alert sev-${a.severity} ${a.acknowledged ? "acked" : ""}`, "data-alert": a.id },
        h("span", { class: `pill sev-${a.severity}` }, a.severity),
        " ",
        h("strong", {}, a.kind),
        h("span", { class: "sub" }, ` ${new Date(a.created_at).toLocaleString()}`, a.device_id ? ` · ${a.device_id}` : "", a.rollout_id ? ` · ${a.rollout_id}` : ""),
        h("p", {}, a.message),
        a.acknowledged
          ? h("span", { class: "sub" }, `acknowledged ${a.acknowledged_at ? new Date(a.acknowledged_at).toLocaleString() : ""}`)
          : isAdmin()
            ? h("button", { type: "button", class: "small", id: `ack-${a.id}`, onclick: () => ack(a) }, "Acknowledge")
            : null,
      ),
    ),
  );
}

async function ack(a) {
  try {
    await api(`/alerts/${a.id}/ack`, { method: "POST" });
    announce(`Alert ${a.id} acknowledged.`);
  } catch (err) {
    setStatus(`Could not acknowledge alert ${a.id}: ${err.message}`, true);
  }
  await poll();
}

// -- start --------------------------------------------------------------------------------------

function init() {
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) {
      $("login-error").textContent = "Enter a token.";
      return;
    }
    $("login-error").textContent = "";
    try {
      await signIn(token);
    } catch (err) {
      signOut(err instanceof ApiError && err.status === 401 ? "Unknown token." : `Cannot sign in: ${err.message}`);
    }
  });
  $("logout").addEventListener("click", () => signOut());
  $("rollout-form").addEventListener("submit", startRollout);
  $("chart-device").addEventListener("change", (e) => selectDevice(e.target.value));
  $("alerts-open-only").addEventListener("change", renderAlerts);
  document.addEventListener("keydown", labellingKey);
  $("labelling-new").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("labelling-new-label").value.trim();
    if (!name) return;
    $("labelling-new-label").value = "";
    label(name, true);
  });
  // Hidden tabs stop polling; coming back refreshes at once.
  document.addEventListener("visibilitychange", () => {
    if (state.token && !document.hidden) poll();
  });
  if (state.token) {
    signIn(state.token).catch(() => signOut("Your saved token was refused. Sign in again."));
  } else {
    $("token").focus();
  }
}

init();
