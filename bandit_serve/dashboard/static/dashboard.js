// bandit-serve dashboard: polls the HTTP API and renders it. No build step, no framework.
//
// Every string that comes from the API reaches the page as a text node (textContent,
// createTextNode) or, inside charts, escaped for plotly's small HTML subset. An API key,
// when the service asks for one (401), is kept in sessionStorage and sent only as an
// Authorization header.
"use strict";

(() => {
  const POLL_MS = 3000;
  const KEY_STORE = "bandit-serve.api-key";
  const EVENTS_KEPT = 500;
  const EVENTS_SHOWN = 200;
  // The API lives where the page does: /dashboard -> /, /prefix/dashboard -> /prefix/.
  const ROOT = window.location.pathname.replace(/dashboard\/?$/, "");
  const PALETTE = [
    "#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626",
    "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d",
  ];

  const $ = (id) => document.getElementById(id);

  // ---- formatting ---------------------------------------------------------------------
  const isNum = (x) => typeof x === "number" && Number.isFinite(x);
  const dash = "–";
  const fmtInt = (x) => (isNum(x) ? Math.round(x).toLocaleString("en-US") : dash);
  const fmtPct = (x, d = 1) => (isNum(x) ? `${(100 * x).toFixed(d)}%` : dash);
  const fmtNum = (x, d = 3) => (isNum(x) ? x.toFixed(d) : dash);
  const fmtSig = (x) => (isNum(x) ? Number(x.toPrecision(4)).toString() : dash);
  const fmtP = (x) => (isNum(x) ? (x < 0.001 ? "<0.001" : x.toFixed(3)) : dash);
  const fmtInterval = (lo, hi, d = 3) =>
    isNum(lo) && isNum(hi) ? `[${lo.toFixed(d)}, ${hi.toFixed(d)}]` : dash;
  function fmtSec(s) {
    if (!isNum(s)) return dash;
    if (s < 0.001) return `${(s * 1e6).toFixed(0)} µs`;
    if (s < 1) return `${(s * 1e3).toFixed(s < 0.01 ? 2 : 1)} ms`;
    return `${s.toFixed(2)} s`;
  }
  function fmtTime(t) {
    if (!isNum(t)) return dash;
    const d = new Date(t * 1000);
    const p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
      `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }
  function fmtValue(key, v) {
    if (v === null || v === undefined) return dash;
    if (typeof v === "number") {
      if (/since|time|_at$/.test(key) && v > 1e9) return fmtTime(v);
      if (/weight|share|rate|agreement/.test(key) && v >= 0 && v <= 1) return fmtPct(v);
      if (/latency|seconds/.test(key)) return fmtSec(v);
      return Number.isInteger(v) ? fmtInt(v) : fmtSig(v);
    }
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }
  // plotly renders a subset of HTML in names: escape what it would interpret.
  const plotlyText = (s) =>
    String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

  // ---- DOM helpers: text only ---------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === "class") node.className = v;
      else if (k === "data") for (const [dk, dv] of Object.entries(v)) node.dataset[dk] = dv;
      else node.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  const badge = (text, kind) => el("span", { class: `badge ${kind || text}` }, text);
  const cell = (field, text, cls) => el("td", { class: cls, data: { field } }, text);
  const num = (field, text) => cell(field, text, "n");
  function fillBody(table, rows, emptyText, columns) {
    const body = $(table).tBodies[0];
    if (rows.length === 0) {
      rows = [el("tr", {}, el("td", { class: "muted", colspan: String(columns) }, emptyText))];
    }
    body.replaceChildren(...rows);
  }
  function fillMeta(dl, pairs) {
    $(dl).replaceChildren(
      ...pairs.map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", { data: { key: k } }, v))),
    );
  }
  function setStatus(text, error) {
    const s = $("status");
    s.textContent = text;
    s.classList.toggle("error", Boolean(error));
  }

  // ---- the API, with a key when the service asks for one -------------------------------
  class ApiError extends Error {
    constructor(status, detail) {
      super(`HTTP ${status}${detail ? `: ${detail}` : ""}`);
      this.status = status;
    }
  }
  let keyPrompt = null; // a promise while the key form is open: one form for all requests

  function askForKey(message) {
    if (keyPrompt) return keyPrompt;
    keyPrompt = new Promise((resolve) => {
      const dialog = $("auth");
      const form = $("auth-form");
      const input = $("auth-key");
      const error = $("auth-error");
      error.textContent = message || "";
      error.hidden = !message;
      input.value = "";
      const onSubmit = (event) => {
        event.preventDefault();
        const key = input.value.trim();
        if (!key) return;
        sessionStorage.setItem(KEY_STORE, key);
        input.value = "";
        form.removeEventListener("submit", onSubmit);
        dialog.close();
        keyPrompt = null;
        resolve();
      };
      form.addEventListener("submit", onSubmit);
      dialog.showModal();
      input.focus();
    });
    return keyPrompt;
  }

  async function api(path) {
    for (;;) {
      const key = sessionStorage.getItem(KEY_STORE);
      const headers = { Accept: "application/json" };
      if (key) headers.Authorization = `Bearer ${key}`;
      const r = await fetch(ROOT + path, { headers, cache: "no-store", credentials: "omit" });
      if (r.status === 401 || r.status === 403) {
        if (key !== null && sessionStorage.getItem(KEY_STORE) !== key) continue; // a new key came
        if (key !== null) sessionStorage.removeItem(KEY_STORE);
        await askForKey(
          r.status === 403
            ? "That key may not read this service: it needs the read scope."
            : key !== null ? "That key was refused." : "",
        );
        continue;
      }
      if (!r.ok) {
        let detail = "";
        try {
          const body = await r.json();
          detail = typeof body.detail === "string" ? body.detail : "";
        } catch (_) { /* not JSON */ }
        throw new ApiError(r.status, detail);
      }
      return r.json();
    }
  }
  const exp = (name, tail) => `v1/experiments/${encodeURIComponent(name)}${tail || ""}`;

  // ---- state -----------------------------------------------------------------------------
  let current = null; // the experiment shown
  let events = { name: null, last: null, list: [] };
  let polling = false;
  let again = false; // asked to poll while a poll ran: poll once more right after it
  let timer = null;

  function selected(names) {
    const hash = decodeURIComponent(window.location.hash.replace(/^#\/?/, ""));
    if (names.includes(hash)) return hash;
    return names.length ? names[0] : null;
  }

  // ---- rendering ---------------------------------------------------------------------------
  function renderList(experiments, name) {
    const nav = $("experiments");
    nav.replaceChildren(
      ...experiments.map((e) => {
        const a = el(
          "a",
          { href: `#/${encodeURIComponent(e.name)}`, data: { experiment: e.name } },
          e.name,
          badge(e.state),
        );
        if (e.name === name) a.setAttribute("aria-current", "page");
        return a;
      }),
    );
    const empty = $("empty");
    empty.hidden = experiments.length > 0;
    empty.textContent = "No experiments are configured.";
    $("experiment").hidden = experiments.length === 0;
  }

  function colours(arms) {
    const out = {};
    arms.forEach((a, i) => { out[a] = PALETTE[i % PALETTE.length]; });
    return out;
  }

  function renderExperiment(e, colour) {
    $("exp-name").textContent = e.name;
    const state = $("exp-state");
    state.textContent = e.state;
    state.className = `badge ${e.state}`;
    fillMeta("exp-meta", [
      ["baseline", e.baseline ?? dash],
      ["policy", e.policy ? e.policy.kind : dash],
      ["reward", e.reward ? e.reward.kind : dash],
      ["epoch", fmtInt(e.epoch)],
    ]);
    const rows = e.arms.map((a) => {
      const lat = a.latency || {};
      const post = a.posterior || {};
      return el(
        "tr",
        { data: { arm: a.name } },
        cell("name", el("span", { class: "swatch", style: `background:${colour[a.name]}` })),
        cell("status", badge(a.status)),
        num("traffic_share", fmtPct(a.traffic_share)),
        num("pulls", fmtInt(a.pulls)),
        num("rewards", fmtInt(a.rewards)),
        num("pending", fmtInt(a.pending)),
        num("errors", fmtInt(a.errors)),
        num("error_rate", fmtPct(a.error_rate, 2)),
        num("mean", fmtNum(a.mean)),
        num("posterior", `${fmtNum(post.mean)} ${fmtInterval(post.low, post.high)}`),
        num("p50", fmtSec(lat.p50)),
        num("p95", fmtSec(lat.p95)),
        num("p99", fmtSec(lat.p99)),
      );
    });
    rows.forEach((row, i) => row.firstChild.append(e.arms[i].name));
    fillBody("arms", rows, "No arms.", 13);
    renderCanary(e.canary);
    renderGuardrails(e.guardrails);
    renderShadow(e.shadow);
  }

  function renderCanary(canary) {
    const box = $("canary");
    box.hidden = !canary || typeof canary !== "object";
    if (box.hidden) return;
    const known = ["phase", "step", "weight", "since", "calls"];
    const keys = [...known.filter((k) => k in canary),
      ...Object.keys(canary).filter((k) => !known.includes(k))];
    fillMeta("canary-body", keys.map((k) => [k, fmtValue(k, canary[k])]));
  }

  function renderGuardrails(g) {
    if (!g) {
      $("guardrails-meta").textContent = "No guardrails are configured for this experiment.";
      fillBody("guardrails", [], "No guardrails.", 8);
      $("violations").replaceChildren();
      return;
    }
    $("guardrails-meta").textContent =
      `On violation: ${g.on_violation}. Last checked: ${fmtTime(g.checked_at)}.`;
    const rows = (g.results || []).map((r) =>
      el(
        "tr",
        { data: { arm: r.arm, rule: r.rule } },
        cell("arm", r.arm),
        cell("rule", r.rule),
        cell("violated", r.violated ? badge("violated") : badge("ok")),
        num("value", fmtSig(r.value)),
        num("reference", fmtSig(r.reference)),
        num("n", fmtInt(r.n)),
        num("p_value", fmtP(r.p_value)),
        cell("reason", r.reason ?? "", "wrap"),
      ));
    fillBody("guardrails", rows, "Not checked yet.", 8);
    $("violations").replaceChildren(
      ...(g.violations || []).map((v) =>
        el("li", { data: { arm: v.arm } },
          `${v.arm}: ${v.rule} violated (acted upon ${fmtInt(v.count)}×)`)),
    );
  }

  function renderShadow(shadow) {
    const box = $("shadow");
    box.hidden = !Array.isArray(shadow);
    if (box.hidden) return;
    const latency = (l) => {
      if (l && typeof l === "object") {
        return ["p50", "p95", "p99"].filter((q) => q in l).map((q) => `${q} ${fmtSec(l[q])}`)
          .join(" · ") || dash;
      }
      return fmtSec(l);
    };
    fillBody("shadow-table", shadow.map((s) =>
      el(
        "tr",
        { data: { arm: s.name } },
        cell("name", s.name),
        num("calls", fmtInt(s.calls)),
        num("errors", fmtInt(s.errors)),
        num("latency", latency(s.latency)),
        num("agreement", fmtPct(s.agreement)),
      )), "No shadow arms.", 5);
  }

  function renderAnalysis(a) {
    const srm = $("srm");
    srm.replaceChildren();
    if (a.srm_warning) srm.append(el("span", { class: "warning" }, a.srm_warning), " ");
    srm.append(
      `${a.test}, against the baseline ${a.baseline}, alpha ${a.alpha}. ` +
      `Sample ratio mismatch check: p = ${fmtP(a.srm_p_value)}.`,
    );
    const rows = (a.arms || []).map((r) =>
      el(
        "tr",
        { data: { arm: r.name } },
        cell("name", r.name),
        num("samples", fmtInt(r.samples)),
        num("mean", fmtNum(r.mean)),
        num("ipw_mean", fmtNum(r.ipw_mean)),
        num("effect", isNum(r.effect) ? (r.effect >= 0 ? "+" : "") + r.effect.toFixed(3) : dash),
        num("interval", fmtInterval(r.ci_low, r.ci_high)),
        num("p_value", fmtP(r.p_value)),
        num("p_value_sequential", fmtP(r.p_value_sequential)),
        num("p_best", fmtPct(r.p_best)),
        num("expected_loss", fmtNum(r.expected_loss, 4)),
        cell("note", r.note ?? ""),
      ));
    fillBody("analysis", rows, "No arms.", 11);
    $("analysis-notes").replaceChildren(...(a.notes || []).map((n) => el("li", {}, n)));
  }

  function renderEvents(list) {
    const rows = list.slice(-EVENTS_SHOWN).reverse().map((e) =>
      el(
        "tr",
        { data: { kind: e.kind, arm: e.arm ?? "" } },
        cell("time", fmtTime(e.time)),
        cell("kind", badge(e.kind, e.kind === "rollback" ? "rolled_back" : e.kind)),
        cell("arm", e.arm ?? dash),
        cell("actor", e.actor ?? dash),
        cell("reason", e.reason ?? "", "wrap"),
      ));
    fillBody("events", rows, "No events yet.", 5);
  }

  // ---- charts (plotly.js, served from the plotly Python package) ----------------------------
  const CHART_CONFIG = { displayModeBar: false, responsive: true };
  const LEGEND = { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" };
  function layout(yaxis) {
    return {
      margin: { l: 52, r: 12, t: 6, b: 28 },
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      font: { family: "system-ui, sans-serif", size: 11, color: "#1d2430" },
      showlegend: true,
      legend: LEGEND,
      hovermode: "x unified",
      xaxis: { type: "date", gridcolor: "#eceef1" },
      yaxis: { gridcolor: "#eceef1", zeroline: false, ...yaxis },
    };
  }
  const rgba = (hex, alpha) => {
    const n = parseInt(hex.slice(1), 16);
    return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${alpha})`;
  };

  function renderCharts(ts, colour) {
    if (!window.Plotly) {
      $("charts-missing").hidden = false;
      return;
    }
    const x = ts.buckets.map((b) => new Date(b.start * 1000));
    const series = (arm, f) => ts.buckets.map((b) => {
      const v = b.arms[arm] ? f(b.arms[arm]) : null;
      return isNum(v) ? v : null;
    });
    const share = ts.arms.map((arm) => ({
      type: "scatter", mode: "lines", stackgroup: "share", name: plotlyText(arm),
      x, y: series(arm, (a) => a.share),
      line: { color: colour[arm], width: 1 }, fillcolor: rgba(colour[arm], 0.55),
      hovertemplate: "%{y:.1%}",
    }));
    window.Plotly.react("chart-share", share,
      { ...layout({ tickformat: ".0%", range: [0, 1] }), legend: { ...LEGEND, traceorder: "normal" } },
      CHART_CONFIG);

    const reward = [];
    for (const arm of ts.arms) {
      const name = plotlyText(arm);
      reward.push(
        { type: "scatter", mode: "lines", x, y: series(arm, (a) => a.posterior.high),
          line: { width: 0, color: colour[arm] }, legendgroup: name, showlegend: false,
          hoverinfo: "skip" },
        { type: "scatter", mode: "lines", x, y: series(arm, (a) => a.posterior.low),
          line: { width: 0, color: colour[arm] }, fill: "tonexty",
          fillcolor: rgba(colour[arm], 0.15), legendgroup: name, showlegend: false,
          hoverinfo: "skip" },
        { type: "scatter", mode: "lines", x, y: series(arm, (a) => a.posterior.mean),
          name, legendgroup: name, line: { color: colour[arm], width: 2 },
          hovertemplate: "%{y:.3f}" },
      );
    }
    window.Plotly.react("chart-reward", reward, layout({}), CHART_CONFIG);

    const errors = ts.arms.map((arm) => ({
      type: "scatter", mode: "lines+markers", name: plotlyText(arm), x,
      y: series(arm, (a) => a.error_rate), line: { color: colour[arm], width: 2 },
      marker: { size: 4 }, hovertemplate: "%{y:.2%}",
    }));
    window.Plotly.react("chart-errors", errors,
      layout({ tickformat: ".1%", rangemode: "tozero" }), CHART_CONFIG);

    const latency = [];
    for (const arm of ts.arms) {
      const name = plotlyText(arm);
      latency.push(
        { type: "scatter", mode: "lines", name, legendgroup: name, x,
          y: series(arm, (a) => (isNum(a.latency.p99) ? a.latency.p99 * 1e3 : null)),
          line: { color: colour[arm], width: 2 }, hovertemplate: "p99 %{y:.3g} ms" },
        { type: "scatter", mode: "lines", name, legendgroup: name, showlegend: false, x,
          y: series(arm, (a) => (isNum(a.latency.p50) ? a.latency.p50 * 1e3 : null)),
          line: { color: colour[arm], width: 1.5, dash: "dot" },
          hovertemplate: "p50 %{y:.3g} ms" },
      );
    }
    window.Plotly.react("chart-latency", latency,
      layout({ rangemode: "tozero", ticksuffix: " ms" }), CHART_CONFIG);
  }

  // ---- polling ---------------------------------------------------------------------------
  async function pollEvents(name) {
    if (events.name !== name) events = { name, last: null, list: [] };
    for (let page = 0; page < 20; page++) {
      const since = events.last ? `&since=${encodeURIComponent(events.last)}` : "";
      const got = (await api(exp(name, `/events?limit=1000${since}`))).events || [];
      if (got.length) {
        events.list = events.list.concat(got).slice(-EVENTS_KEPT);
        events.last = got[got.length - 1].id;
      }
      if (got.length < 1000) break;
    }
    return events.list;
  }

  function section(result, render, what) {
    if (result.status === "fulfilled") return render(result.value);
    console.warn(`could not load ${what}: ${result.reason}`);
    return null;
  }

  async function poll() {
    try {
      const list = (await api("v1/experiments")).experiments || [];
      const name = selected(list.map((e) => e.name));
      renderList(list, name);
      if (name !== null) {
        if (name !== current) {
          current = name;
          document.title = `${name} · bandit-serve`;
        }
        const window_ = $("window").value;
        const [view, ts, analysis, log] = await Promise.allSettled([
          api(exp(name)),
          api(exp(name, `/timeseries?window_seconds=${encodeURIComponent(window_)}`)),
          api(exp(name, "/analysis")),
          pollEvents(name),
        ]);
        if (view.status === "rejected") throw view.reason;
        const colour = colours(view.value.arms.map((a) => a.name));
        renderExperiment(view.value, colour);
        section(ts, (t) => renderCharts(t, colour), "the time series");
        section(analysis, renderAnalysis, "the analysis");
        section(log, renderEvents, "the audit log");
        const failed = [ts, analysis, log].filter((r) => r.status === "rejected").length;
        if (failed) {
          setStatus(`updated ${new Date().toLocaleTimeString()} (${failed} part(s) failed)`, true);
          return;
        }
      }
      setStatus(`updated ${new Date().toLocaleTimeString()}`);
    } catch (err) {
      setStatus(`cannot reach the API (${err.message}); retrying`, true);
    }
  }

  // One poll at a time; asked again while one runs (a new experiment chosen), poll once
  // more as soon as it ends.
  async function schedule() {
    clearTimeout(timer);
    if (polling) {
      again = true;
      return;
    }
    polling = true;
    try {
      await poll();
    } finally {
      polling = false;
    }
    clearTimeout(timer);
    if (again) {
      again = false;
      schedule();
      return;
    }
    timer = setTimeout(schedule, POLL_MS);
  }

  $("auth").addEventListener("cancel", (event) => event.preventDefault()); // a key is needed
  window.addEventListener("hashchange", schedule);
  $("window").addEventListener("change", schedule);
  schedule();
})();
