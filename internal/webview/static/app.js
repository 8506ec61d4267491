// migrator's run page: the live timeline and the budget chart. Data is
// written with textContent and canvas text only (never as HTML): app names,
// errors and event details come from Fly and the agents.
"use strict";
(function () {
  const root = document.getElementById("run");
  if (!root) return;
  const runID = root.dataset.run;

  // Phases the page knows; any other state gets a neutral colour and its name.
  const PHASES = {
    pending: ["waiting for idle / slot", "#f2c14e"],
    ready: ["preparing", "#b8c2cc"],
    decided: ["preparing", "#b8c2cc"],
    draining: ["draining", "#4a90d9"],
    updating: ["updating", "#8e6bd1"],
    verifying: ["verifying", "#2bb3a3"],
    baking: ["baking (canary watched)", "#7fb800"],
    rolling_back: ["rolling back", "#e8833a"],
  };
  const OUTCOMES = {
    migrated: "#2e9e4f", rolled_back: "#e8833a", failed: "#c0392b", deferred: "#b7950b",
    cancelled: "#7f8c8d", skipped_up_to_date: "#aab4be",
  };
  const OTHER = "#95a5a6";
  const phaseColor = (s) => (PHASES[s] ? PHASES[s][1] : OTHER);
  const phaseName = (s) => (PHASES[s] ? PHASES[s][0] : s.replace(/_/g, " "));
  // Slot-holding phases count against the budget; waiting does not.
  const holdsSlot = (s) => s !== "pending";

  const machines = new Map(); // id -> machine row + phases, cur, end
  let run = null, lastEvent = 0, serverSkew = 0, rows = [], dirty = true, earliest = Infinity;

  function machine(id) {
    let m = machines.get(id);
    if (!m) { m = { id, app: "?", machine_id: String(id), seq: 0, state: "pending", phases: [], cur: null, end: null }; machines.set(id, m); }
    return m;
  }

  function applyMachine(row) {
    const m = machine(row.id);
    Object.assign(m, row);
    m.startedMS = row.started_at ? Date.parse(row.started_at) : 0;
  }

  // One transition: the machine left `from` at `at` and entered `to` (an
  // outcome when done). The phase it left began at its previous transition,
  // or when it got its slot.
  function applyTransition(t) {
    const [id, at, from, to, done] = t;
    const m = machine(id);
    const start = m.cur ? m.cur.at : (m.startedMS && m.startedMS <= at ? m.startedMS : at);
    earliest = Math.min(earliest, start);
    if (at > start) m.phases.push({ s: m.cur ? m.cur.s : from, a: start, b: at });
    if (done) { m.cur = null; m.end = { outcome: to, at }; }
    else { m.cur = { s: to, at }; m.end = null; }
  }

  // Machines on their path without a transition yet began their current
  // state when they got their slot.
  function settleCurrent() {
    for (const m of machines.values()) {
      if (!m.cur && !m.end && m.state !== "done" && m.state !== "pending" && m.startedMS) m.cur = { s: m.state, at: m.startedMS };
      if (m.cur && m.state === "done" && !m.end) m.cur = null;
    }
  }

  const now = () => Date.now() + serverSkew;
  // The axis starts with the run, or with its first event if a replica's
  // clock put that earlier.
  const t0 = () => Math.min(run.started_at || run.created_at, earliest);
  const t1 = () => Math.max(run.finished_at || now(), t0() + 1000);

  function fmtDur(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
    return Math.floor(s / 3600) + "h" + String(Math.floor(s / 60) % 60).padStart(2, "0") + "m";
  }

  function problem(m) {
    return m.outcome === "failed" || m.outcome === "rolled_back" || m.outcome === "deferred" || m.drain_outcome === "deadline_forced";
  }

  // ---- counts, progress and ETA (as `run follow` computes it) ----
  function updateSummary() {
    const byState = {}, byOutcome = {};
    let done = 0, total = 0, skipped = 0;
    for (const m of machines.values()) {
      total++;
      byState[m.state] = (byState[m.state] || 0) + 1;
      if (m.outcome) byOutcome[m.outcome] = (byOutcome[m.outcome] || 0) + 1;
      if (m.state === "done") done++;
      if (m.outcome === "skipped_up_to_date") skipped++;
    }
    document.getElementById("prog").max = total;
    document.getElementById("prog").value = done;
    document.getElementById("prog-text").textContent = done + "/" + total + " done (" + (total ? Math.floor(done * 100 / total) : 100) + "%)";
    fillKV("by-state", byState, "");
    fillKV("by-outcome", byOutcome, "oc-");
    const st = document.getElementById("run-state");
    st.textContent = run.state;
    st.className = "badge st-" + run.state;
    document.getElementById("run-reason").textContent = run.state_reason || "–";
    if (run.finished_at) document.getElementById("run-ended").textContent = new Date(run.finished_at).toISOString().replace(/\.\d+Z$/, "Z").replace("T", " ");
    let eta = "";
    const elapsed = (run.finished_at || now()) - (run.started_at || now());
    const work = total - skipped, worked = done - skipped;
    if (run.terminal) eta = "took " + fmtDur(elapsed);
    else if (run.state === "paused") eta = "paused";
    else if (worked > 0 && elapsed > 0) eta = "elapsed " + fmtDur(elapsed) + ", ETA " + fmtDur(elapsed * (work - worked) / worked);
    else if (run.started_at) eta = "elapsed " + fmtDur(elapsed);
    document.getElementById("eta").textContent = eta;
    document.getElementById("live").textContent = run.terminal ? "" : "live";
  }

  function fillKV(id, counts, cls) {
    const table = document.getElementById(id);
    const caption = table.querySelector("caption");
    table.replaceChildren(caption);
    const keys = Object.keys(counts).sort();
    if (!keys.length) { const tr = table.insertRow(); tr.insertCell().textContent = "none yet"; }
    for (const k of keys) {
      const tr = table.insertRow();
      if (cls) tr.className = cls + k;
      const th = document.createElement("th"); th.textContent = k; tr.appendChild(th);
      tr.insertCell().textContent = counts[k];
    }
  }

  // ---- rows: filter and order ----
  const find = document.getElementById("tl-find"), show = document.getElementById("tl-show"), order = document.getElementById("tl-order");
  function computeRows() {
    const q = find.value.trim().toLowerCase(), mode = show.value;
    rows = [];
    for (const m of machines.values()) {
      if (q && !(m.app + "/" + m.machine_id).toLowerCase().includes(q)) continue;
      if (mode === "flight" && (m.state === "done" || m.state === "pending")) continue;
      if (mode === "problems" && !problem(m)) continue;
      if (mode === "waiting" && !(m.state === "pending" && m.peeks)) continue;
      rows.push(m);
    }
    const first = (m) => (m.phases.length ? m.phases[0].a : m.cur ? m.cur.at : m.end ? m.end.at : Infinity);
    if (order.value === "plan") rows.sort((a, b) => a.seq - b.seq);
    else rows.sort((a, b) => first(a) - first(b) || a.seq - b.seq);
    document.getElementById("tl-count").textContent = rows.length + " of " + machines.size + " machines";
    spacer.style.height = (AXIS + rows.length * ROW) + "px";
    // As tall as the rows, up to 60% of the window (then it scrolls).
    const want = Math.max(120, Math.min(Math.round(window.innerHeight * 0.6), AXIS + rows.length * ROW + 2));
    if (scroller.clientHeight !== want) { scroller.style.height = want + "px"; resize(); }
  }
  for (const el of [find, show, order]) el.addEventListener("input", () => { computeRows(); draw(); });

  // ---- the timeline canvas: only the rows in view are drawn ----
  const ROW = 14, AXIS = 20, LABEL = 230;
  const scroller = document.getElementById("tl-scroll"), canvas = document.getElementById("tl"), spacer = document.getElementById("tl-spacer");
  const ctx = canvas.getContext("2d");
  let W = 0, H = 0;
  function resize() {
    const dpr = window.devicePixelRatio || 1;
    W = scroller.clientWidth; H = scroller.clientHeight;
    canvas.width = W * dpr; canvas.height = H * dpr;
    canvas.style.width = W + "px"; canvas.style.height = H + "px";
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const b = document.getElementById("budget");
    b.width = b.clientWidth * dpr; b.height = 130 * dpr;
    b.getContext("2d").setTransform(dpr, 0, 0, dpr, 0, 0);
  }
  const xOf = (t, w) => LABEL + (t - t0()) / (t1() - t0()) * (w - LABEL - 8);

  function draw() { dirty = true; }
  function frame() {
    if (dirty && run) { dirty = false; drawTimeline(); drawBudget(); }
    requestAnimationFrame(frame);
  }

  function drawAxis(c, w, y0, h) {
    c.fillStyle = "#5d6b7a"; c.font = "11px system-ui, sans-serif"; c.textBaseline = "top";
    const span = t1() - t0();
    const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400].map((s) => s * 1000);
    const step = steps.find((s) => span / s <= (w - LABEL) / 90) || 86400000;
    c.strokeStyle = "#eef1f4";
    for (let t = 0; t <= span; t += step) {
      const x = xOf(t0() + t, w);
      c.beginPath(); c.moveTo(x, y0); c.lineTo(x, y0 + h); c.stroke();
      c.fillText(t >= 60000 && t % 60000 === 0 ? fmtDur(t).replace(/m00s$/, "m").replace(/h00m$/, "h") : fmtDur(t), x + 2, 3);
    }
  }

  function drawTimeline() {
    canvas.style.top = scroller.scrollTop + "px";
    ctx.clearRect(0, 0, W, H);
    drawAxis(ctx, W, AXIS, H);
    const top = scroller.scrollTop, first = Math.floor(top / ROW), off = top - first * ROW;
    const last = Math.min(rows.length, first + Math.ceil(H / ROW) + 1);
    ctx.font = "11px ui-monospace, monospace"; ctx.textBaseline = "middle";
    const tnow = now();
    for (let i = first; i < last; i++) {
      const m = rows[i], y = AXIS + (i - first) * ROW - off;
      if (y + ROW < AXIS) continue;
      if (m.outcome === "failed" || m.outcome === "rolled_back") { ctx.fillStyle = "#fff0ed"; ctx.fillRect(0, y, W, ROW); }
      else if (i % 2) { ctx.fillStyle = "#f8f9fb"; ctx.fillRect(0, y, W, ROW); }
      let marks = (m.canary ? "C" : "") + (m.drain_outcome === "deadline_forced" ? "F" : "") + (m.outcome === "deferred" ? "D" : "") + (m.outcome === "rolled_back" ? "R" : "");
      ctx.fillStyle = "#1d232b";
      let label = m.app + "/" + m.machine_id;
      const room = LABEL - 34;
      while (label.length > 4 && ctx.measureText(label).width > room) label = label.slice(0, -2);
      if (label !== m.app + "/" + m.machine_id) label += "…";
      ctx.fillText(label, 4, y + ROW / 2);
      if (marks) { ctx.fillStyle = "#c0392b"; ctx.fillText(marks, LABEL - 30, y + ROW / 2); }
      const bars = m.phases.slice();
      if (m.cur) bars.push({ s: m.cur.s, a: m.cur.at, b: tnow, open: true });
      for (const p of bars) {
        const x0 = xOf(p.a, W), x1 = Math.max(xOf(p.b, W), x0 + 1);
        ctx.fillStyle = phaseColor(p.s);
        ctx.fillRect(x0, y + 2, x1 - x0, ROW - 4);
      }
      if (m.end) {
        const x = xOf(m.end.at, W);
        ctx.fillStyle = OUTCOMES[m.end.outcome] || OTHER;
        ctx.fillRect(x - 1, y + 1, 5, ROW - 2);
      } else if (m.outcome) { // done before the run started (skipped up to date)
        ctx.fillStyle = OUTCOMES[m.outcome] || OTHER;
        ctx.fillRect(LABEL, y + 4, 4, ROW - 8);
      }
    }
  }

  // The budget in use over time: machines holding a slot, stacked by phase,
  // against the run's max_unavailable.
  function drawBudget() {
    const b = document.getElementById("budget"), c = b.getContext("2d"), w = b.clientWidth, h = 130;
    c.clearRect(0, 0, w, h);
    drawAxis(c, w, 14, h);
    const cols = Math.max(1, Math.floor(w - LABEL - 8)), span = t1() - t0();
    const names = [], diff = {};
    const col = (t) => Math.max(0, Math.min(cols, Math.round((t - t0()) / span * cols)));
    const tnow = now();
    for (const m of machines.values()) {
      const ps = m.cur ? m.phases.concat([{ s: m.cur.s, a: m.cur.at, b: tnow }]) : m.phases;
      for (const p of ps) {
        if (!holdsSlot(p.s)) continue;
        const k = phaseName(p.s);
        if (!diff[k]) { diff[k] = new Int32Array(cols + 2); names.push(k); }
        diff[k][col(p.a)]++; diff[k][col(p.b)]--;
      }
    }
    const order = Object.values(PHASES).map((p) => p[0]).filter((n, i, a) => a.indexOf(n) === i && diff[n]);
    for (const n of names) if (!order.includes(n)) order.push(n);
    const colorOf = (n) => { for (const k in PHASES) if (PHASES[k][0] === n) return PHASES[k][1]; return OTHER; };
    const cap = Math.max(run.max_unavailable, 1);
    let peak = cap;
    const acc = order.map(() => new Int32Array(cols + 1));
    const totals = new Int32Array(cols + 1);
    order.forEach((n, j) => { let v = 0; for (let i = 0; i <= cols; i++) { v += diff[n][i]; acc[j][i] = v; totals[i] += v; } });
    for (let i = 0; i <= cols; i++) peak = Math.max(peak, totals[i]);
    const yOf = (v) => h - 4 - v / peak * (h - 22);
    const base = new Int32Array(cols + 1);
    order.forEach((n, j) => {
      c.fillStyle = colorOf(n);
      for (let i = 0; i < cols; i++) {
        const v = acc[j][i];
        if (!v) continue;
        const y0 = yOf(base[i]), y1 = yOf(base[i] + v);
        c.fillRect(LABEL + i, y1, 1, y0 - y1);
        base[i] += v;
      }
    });
    c.strokeStyle = "#c0392b"; c.setLineDash([4, 3]);
    c.beginPath(); c.moveTo(LABEL, yOf(cap)); c.lineTo(w, yOf(cap)); c.stroke(); c.setLineDash([]);
    c.fillStyle = "#1d232b"; c.font = "11px system-ui, sans-serif"; c.textBaseline = "middle";
    // A phase ending at column c is counted up to c - 1.
    const cur = totals[Math.max(0, col(Math.min(tnow, t1())) - 1)] || 0;
    c.fillText("budget " + cap + " (dashed)", 4, 24);
    c.fillText("in use now: " + (run.terminal ? 0 : cur), 4, 40);
    c.fillText("peak: " + Math.max(...totals), 4, 56);
  }

  function legend() {
    const el = document.getElementById("legend");
    const add = (color, text) => { const s = document.createElement("span"); const i = document.createElement("i"); i.style.background = color; s.append(i, text); el.appendChild(s); };
    const seen = new Set();
    for (const k in PHASES) { const [n, c] = PHASES[k]; if (!seen.has(n)) { seen.add(n); add(c, n); } }
    add(OTHER, "other state");
    for (const k in OUTCOMES) add(OUTCOMES[k], "▮ " + k.replace(/_/g, " "));
    const s = document.createElement("span"); s.textContent = "marks: C canary · F forced · D deferred · R rolled back"; el.appendChild(s);
  }

  // ---- hover and click ----
  const tip = document.getElementById("tip");
  function hit(ev) {
    const r = canvas.getBoundingClientRect(), y = ev.clientY - r.top, x = ev.clientX - r.left;
    if (y < AXIS) return null;
    const i = Math.floor((scroller.scrollTop + y - AXIS) / ROW);
    const m = rows[i];
    if (!m) return null;
    let phase = null;
    const bars = m.cur ? m.phases.concat([{ s: m.cur.s, a: m.cur.at, b: now(), open: true }]) : m.phases;
    for (const p of bars) if (x >= xOf(p.a, W) - 1 && x <= Math.max(xOf(p.b, W), xOf(p.a, W) + 1) + 1) phase = p;
    return { m, phase };
  }
  canvas.addEventListener("mousemove", (ev) => {
    const h = hit(ev);
    if (!h) { tip.hidden = true; return; }
    const m = h.m, lines = [m.app + "/" + m.machine_id + (m.canary ? " (canary)" : "")];
    if (h.phase) lines.push(phaseName(h.phase.s) + ": " + fmtDur(h.phase.b - h.phase.a) + (h.phase.open ? " so far" : ""));
    lines.push("state " + m.state + (m.outcome ? ", " + m.outcome.replace(/_/g, " ") : ""));
    if (m.quiet !== undefined && m.quiet !== null) lines.push((m.quiet ? "quiet" : "loud") + " drain" + (m.drain_outcome ? ", " + m.drain_outcome.replace(/_/g, " ") : ""));
    if (m.peeks) lines.push("peeks before the drain: " + m.peeks + (m.peek_active_agents != null ? ", last saw " + m.peek_active_agents + " active" : ""));
    if (m.state === "draining" && m.last_active_agents != null) lines.push("active agents: " + m.last_active_agents);
    if (m.active_agents_at_recreate != null) lines.push("active agents at recreate: " + m.active_agents_at_recreate);
    if (m.state === "baking" && m.bake_until) lines.push("bake ends " + m.bake_until.replace("T", " ").replace(/\.\d+Z$/, "Z"));
    if (m.deciding_signal) lines.push("decided by: " + m.deciding_signal);
    if (m.signals) lines.push("agent's signals: " + m.signals);
    if (m.error) lines.push("error: " + m.error);
    lines.push("click: audit events");
    tip.textContent = lines.join("\n");
    tip.hidden = false;
    tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - 380) + "px";
    tip.style.top = (ev.clientY + 14) + "px";
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
  canvas.addEventListener("click", (ev) => { const h = hit(ev); if (h) openPanel(h.m); });
  document.getElementById("panel-close").addEventListener("click", () => { document.getElementById("panel").hidden = true; });

  async function openPanel(m) {
    const panel = document.getElementById("panel"), list = document.getElementById("panel-events");
    document.getElementById("panel-title").textContent = m.app + "/" + m.machine_id;
    document.getElementById("panel-sub").textContent = "state " + m.state + (m.outcome ? ", " + m.outcome : "") + (m.error ? " — " + m.error : "");
    document.getElementById("panel-link").href = "/migrations/" + encodeURIComponent(m.id);
    list.replaceChildren();
    panel.hidden = false;
    try {
      const res = await fetch("/migrations/" + encodeURIComponent(m.id) + "/events.json", { credentials: "same-origin" });
      if (!res.ok) throw new Error(res.status + " " + (await res.text()));
      const data = await res.json();
      for (const e of data.events) {
        const li = document.createElement("li");
        const when = document.createElement("span"); when.textContent = e.at.replace("T", " ").replace(/\.\d+Z$/, "Z") + " ";
        const k = document.createElement("span"); k.className = "k"; k.textContent = e.kind;
        li.append(when, k);
        if (e.method || e.status) li.append(" " + [e.method, e.status, e.duration_ms ? Math.round(e.duration_ms) + "ms" : ""].filter(Boolean).join(" "));
        if (e.error) { const s = document.createElement("div"); s.className = "e"; s.textContent = e.error; li.append(s); }
        if (e.detail && Object.keys(e.detail).length) { const s = document.createElement("div"); s.className = "d"; s.textContent = JSON.stringify(e.detail); li.append(s); }
        list.appendChild(li);
      }
      if (!data.events.length) { const li = document.createElement("li"); li.textContent = "no events yet"; list.appendChild(li); }
    } catch (err) {
      const li = document.createElement("li"); li.className = "e"; li.textContent = "could not load the events: " + err.message; list.appendChild(li);
    }
  }

  // ---- data: the whole run once, then what is new ----
  let pollMS = Number(root.dataset.poll) || 2000, timer = 0;
  async function load() {
    let more = false;
    try {
      const res = await fetch("/runs/" + encodeURIComponent(runID) + "/timeline.json?after=" + lastEvent, { credentials: "same-origin" });
      if (!res.ok) throw new Error(res.status);
      const data = await res.json();
      run = data.run; serverSkew = data.now - Date.now(); pollMS = data.poll_ms || pollMS;
      for (const m of data.machines) applyMachine(m);
      for (const t of data.transitions) applyTransition(t);
      lastEvent = data.last_event; more = data.more;
      settleCurrent(); updateSummary(); computeRows(); draw();
      root.dataset.lastEvent = String(lastEvent);
      root.dataset.loaded = String(Number(root.dataset.loaded || 0) + 1);
    } catch (err) {
      document.getElementById("live").textContent = "update failed (" + err.message + "); retrying";
    }
    if (more) { load(); return; }
    if (!run || !run.terminal) timer = setTimeout(tick, pollMS);
  }
  function tick() {
    if (document.hidden) { timer = setTimeout(tick, pollMS); return; }
    load();
  }
  // In flight, the open bars grow: redraw once a second between polls.
  setInterval(() => { if (run && !run.terminal) draw(); }, 1000);
  scroller.addEventListener("scroll", draw);
  window.addEventListener("resize", () => { resize(); draw(); });
  legend(); resize(); requestAnimationFrame(frame); load();
})();
