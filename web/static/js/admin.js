/* Skald: the operator view (/admin).
 *
 * Initial data over HTTP (GET /api/cluster, /api/workers, /api/tasks), then
 * everything by push in room "admin" (join_admin_dashboard on every connect,
 * so a reconnect re-joins and reloads what it may have missed):
 *   system_metrics_update  tiles, workers table, a chart point (about 1/s)
 *   job_update             upsert the task's row (never back from an ending)
 *   admin_alert            prepend to the alert list
 *   maintenance_status     the maintenance status line (common.js shows the banner)
 * Data is only ever written with textContent. Rows carry data-testid
 * "task-row-<task_id>" with a "task-state" cell holding the raw state.
 */
(function () {
  "use strict";
  var S = window.Skald;

  var TERMINAL = { SUCCESS: true, FAILURE: true, REVOKED: true };
  var MAX_ROWS = 500;          // task rows kept (oldest ended ones go first)
  var MAX_ALERTS = 50;
  var CHART_SPAN = 15 * 60;    // s of history the charts show
  var ACK_TIMEOUT_MS = 10000;
  var TASK_PAGE = 200;

  function $(id) { return document.getElementById(id); }
  var el = {
    conn: $("conn"), message: $("admin-message"), updated: $("metrics-updated"),
    alerts: $("alerts"), alertsEmpty: $("alerts-empty"), alertCount: $("alert-count"),
    workers: $("workers"), workersEmpty: $("workers-empty"),
    tasks: $("tasks"), tasksEmpty: $("tasks-empty"),
    filterState: $("filter-state"), filterName: $("filter-name"), filterSearch: $("filter-search"),
    detail: $("task-detail"), cancel: $("task-cancel"), detailMessage: $("detail-message"),
    maintState: $("maintenance-state"), maintText: $("maintenance-text"),
    maintMinutes: $("maintenance-minutes"), maintResult: $("maintenance-result")
  };

  var tasks = new Map();     // task_id -> {data, row}
  var names = new Set();
  var selected = null;       // task id shown in the detail panel
  var alertTotal = 0;

  function showMessage(text) { el.message.textContent = text; S.show(el.message); }
  function clearMessage() { el.message.textContent = ""; S.hide(el.message); }

  function num(v) { var n = Number(v); return isFinite(n) ? n : null; }
  function clockTime(unix) {
    var n = num(unix);
    if (n === null || n <= 0) return "";
    return new Date(n * 1000).toLocaleTimeString();
  }
  function seconds(v) {
    var n = num(v);
    if (n === null || v === null || v === undefined) return "";
    return n < 10 ? n.toFixed(2) + " s" : n.toFixed(1) + " s";
  }
  function cell(text, testid) {
    var td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    if (testid) td.setAttribute("data-testid", testid);
    return td;
  }

  // ---- metrics tiles -------------------------------------------------------------

  function metricText(name, value) {
    if (value === null || value === undefined) return "–";
    if (name === "system_load") {
      return Array.isArray(value) && value.length ? value.map(function (x) { return Number(x).toFixed(2); }).join(" / ") : "–";
    }
    if (name === "bridge_lag") return seconds(value) || "0 s";
    return String(value);
  }

  function renderMetrics(m) {
    if (!m || typeof m !== "object") return;
    document.querySelectorAll("[data-metric]").forEach(function (dd) {
      var name = dd.getAttribute("data-metric");
      if (name in m) dd.textContent = metricText(name, m[name]);
    });
    el.updated.textContent = clockTime(m.updated_at) || new Date().toLocaleTimeString();
  }

  // ---- alerts ----------------------------------------------------------------------

  function addAlert(a) {
    if (!a || typeof a !== "object") return;
    var li = document.createElement("li");
    var level = ["info", "warning", "critical"].indexOf(a.level) >= 0 ? a.level : "info";
    li.className = "alert-item alert-" + level;
    li.setAttribute("data-kind", String(a.kind || ""));
    li.setAttribute("data-testid", "alert");
    var when = document.createElement("time");
    when.textContent = clockTime(a.at);
    var tag = document.createElement("strong");
    tag.textContent = level + " · " + String(a.kind || "alert");
    var text = document.createElement("span");
    text.textContent = String(a.message || "");
    li.append(when, " ", tag, " ", text);
    el.alerts.prepend(li);
    while (el.alerts.children.length > MAX_ALERTS) el.alerts.lastElementChild.remove();
    alertTotal += 1;
    el.alertCount.textContent = String(alertTotal);
    S.hide(el.alertsEmpty);
  }

  // ---- workers ---------------------------------------------------------------------

  function renderWorkers(list) {
    if (!Array.isArray(list)) return;
    var rows = list.filter(function (w) { return w && typeof w.hostname === "string"; }).map(function (w) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-testid", "worker-row-" + w.hostname);
      tr.setAttribute("data-online", w.online ? "1" : "0");
      var status = cell(w.online ? "online" : "offline", "worker-status");
      status.className = w.online ? "ok" : "bad";
      var load = Array.isArray(w.loadavg) ? w.loadavg.map(function (x) { return Number(x).toFixed(2); }).join(" / ") : "";
      tr.append(cell(w.hostname, "worker-host"), status, cell(w.active), cell(w.processed),
                cell(load), cell(clockTime(w.last_heartbeat)));
      return tr;
    });
    el.workers.replaceChildren.apply(el.workers, rows);
    if (rows.length) S.hide(el.workersEmpty); else S.show(el.workersEmpty);
  }

  // ---- tasks -----------------------------------------------------------------------

  function matches(t) {
    var state = el.filterState.value, name = el.filterName.value;
    var q = el.filterSearch.value.trim().toLowerCase();
    return (!state || t.state === state) && (!name || t.name === name) &&
      (!q || String(t.task_id).toLowerCase().indexOf(q) >= 0);
  }

  function fillRow(row, t) {
    var cells = row.children;
    cells[0].textContent = String(t.task_id).slice(0, 8) + "…";
    cells[0].title = t.task_id;
    cells[1].textContent = t.name || "";
    var badge = cells[2].firstChild;
    badge.textContent = t.state || "PENDING";
    badge.setAttribute("data-state", t.state || "PENDING");
    cells[2].setAttribute("data-state", t.state || "PENDING");
    var pct = S.clampPercent(t.progress_percent);
    cells[3].textContent = t.total ? pct + "% (" + S.formatCount(t.current, t.total) + ")" : (TERMINAL[t.state] ? "" : pct + "%");
    cells[4].textContent = t.worker || "";
    cells[5].textContent = seconds(t.runtime);
    cells[6].textContent = clockTime(t.updated_at);
    row.hidden = !matches(t);
  }

  function newRow(t) {
    var row = document.createElement("tr");
    row.setAttribute("data-testid", "task-row-" + t.task_id);
    row.setAttribute("data-task-id", t.task_id);
    row.tabIndex = 0;
    var stateCell = document.createElement("td");
    stateCell.setAttribute("data-testid", "task-state");
    var badge = document.createElement("span");
    badge.className = "badge";
    stateCell.appendChild(badge);
    row.append(cell("", "task-id"), cell("", "task-name"), stateCell, cell(""), cell(""), cell(""), cell(""));
    // The state cell's text is the raw state: keep the badge the only text in it.
    row.addEventListener("click", function () { select(t.task_id); });
    row.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(t.task_id); }
    });
    return row;
  }

  function addName(name) {
    if (!name || names.has(name)) return;
    names.add(name);
    var opt = document.createElement("option");
    opt.value = name;
    opt.textContent = name;
    el.filterName.appendChild(opt);
  }

  /** Insert or update a task; `atTop`: a new task from push goes first. */
  function upsertTask(t, atTop) {
    if (!t || typeof t !== "object" || typeof t.task_id !== "string") return;
    var entry = tasks.get(t.task_id);
    if (entry) {
      var old = entry.data;
      if (TERMINAL[old.state] && !TERMINAL[t.state]) return;      // one ending, never undone
      if (num(t.updated_at) !== null && num(old.updated_at) !== null && t.updated_at < old.updated_at) return;
      var merged = Object.assign({}, old);
      Object.keys(t).forEach(function (k) { if (t[k] !== null && t[k] !== undefined) merged[k] = t[k]; });
      entry.data = merged;
      fillRow(entry.row, merged);
    } else {
      entry = { data: Object.assign({}, t), row: newRow(t) };
      tasks.set(t.task_id, entry);
      fillRow(entry.row, entry.data);
      if (atTop) el.tasks.prepend(entry.row); else el.tasks.appendChild(entry.row);
      trimRows();
    }
    addName(entry.data.name);
    S.hide(el.tasksEmpty);
    if (selected === t.task_id) renderDetailHead(entry.data);
  }

  function trimRows() {
    var rows = el.tasks.children;
    for (var i = rows.length - 1; i >= 0 && tasks.size > MAX_ROWS; i--) {
      var id = rows[i].getAttribute("data-task-id");
      var entry = tasks.get(id);
      if (id !== selected && entry && TERMINAL[entry.data.state]) {
        tasks.delete(id);
        rows[i].remove();
      }
    }
  }

  function applyFilters() {
    tasks.forEach(function (entry) { entry.row.hidden = !matches(entry.data); });
  }

  function loadTasks() {
    var params = new URLSearchParams({ limit: String(TASK_PAGE) });
    if (el.filterState.value) params.set("state", el.filterState.value);
    if (el.filterName.value) params.set("name", el.filterName.value);
    var q = el.filterSearch.value.trim();
    if (q) params.set("q", q);
    return S.apiFetch("/api/tasks?" + params.toString()).then(function (result) {
      if (!result.ok || !result.data || !Array.isArray(result.data.tasks)) {
        showMessage("Could not load tasks: " + S.errorMessage(result));
        return;
      }
      result.data.tasks.forEach(function (t) { upsertTask(t, false); });
      applyFilters();
    });
  }

  var filterTimer = null;
  function onFilterChange() {
    applyFilters();
    clearTimeout(filterTimer);
    filterTimer = setTimeout(loadTasks, 250); // also find matches older than the rows shown
  }
  el.filterState.addEventListener("change", onFilterChange);
  el.filterName.addEventListener("change", onFilterChange);
  el.filterSearch.addEventListener("input", onFilterChange);
  $("task-filters").addEventListener("submit", function (e) { e.preventDefault(); });

  // ---- detail ----------------------------------------------------------------------

  function renderDetailHead(t) {
    $("detail-id").textContent = t.task_id;
    $("detail-name").textContent = t.name || "";
    var state = $("detail-state");
    state.textContent = t.state || "";
    state.setAttribute("data-state", t.state || "");
    $("detail-worker").textContent = t.worker || "";
    $("detail-runtime").textContent = seconds(t.runtime);
    $("detail-owner").textContent = t.owner || "";
    $("detail-step").textContent = t.current_step || "";
    el.cancel.disabled = !!TERMINAL[t.state] || t.state === "CANCELLING";
  }

  function select(taskId) {
    var entry = tasks.get(taskId);
    if (!entry) return;
    selected = taskId;
    tasks.forEach(function (e) { e.row.removeAttribute("aria-selected"); });
    entry.row.setAttribute("aria-selected", "true");
    renderDetailHead(entry.data);
    $("detail-args").textContent = "";
    $("detail-outcome").textContent = "";
    el.detailMessage.textContent = "Loading…";
    S.show(el.detail);
    S.apiFetch("/api/tasks/" + encodeURIComponent(taskId)).then(function (result) {
      if (selected !== taskId) return;
      if (!result.ok || !result.data || !result.data.task) {
        el.detailMessage.textContent = S.errorMessage(result, "Could not load the task.");
        return;
      }
      var t = result.data.task;
      upsertTask(t, false);
      renderDetailHead(tasks.get(taskId).data);
      $("detail-args").textContent = t.args || "(none recorded)";
      var outcome = t.outcome || "";
      if (t.error && (t.error.type || t.error.message)) {
        outcome = (t.error.type || "Error") + ": " + (t.error.message || "") + (outcome ? "\n\n" + outcome : "");
      }
      if (t.terminated) outcome += (outcome ? "\n" : "") + "(terminated after the cancel grace period)";
      $("detail-outcome").textContent = outcome || (TERMINAL[t.state] ? "(nothing recorded)" : "(still running)");
      el.detailMessage.textContent = "";
    });
  }

  $("detail-close").addEventListener("click", function () {
    selected = null;
    S.hide(el.detail);
    tasks.forEach(function (e) { e.row.removeAttribute("aria-selected"); });
  });

  el.cancel.addEventListener("click", function () {
    var taskId = selected;
    if (!taskId) return;
    el.cancel.disabled = true;
    el.detailMessage.textContent = "Cancelling…";
    S.apiFetch("/api/tasks/" + encodeURIComponent(taskId) + "/cancel", { method: "POST" }).then(function (result) {
      if (result.ok) {
        el.detailMessage.textContent = "Cancel requested; the task ends shortly.";
        var entry = tasks.get(taskId);
        if (entry && !TERMINAL[entry.data.state]) {
          upsertTask({ task_id: taskId, state: "CANCELLING", updated_at: entry.data.updated_at }, false);
        }
      } else {
        el.detailMessage.textContent = S.errorMessage(result, "Could not cancel the task.");
        var e = tasks.get(taskId);
        if (e && !TERMINAL[e.data.state] && !(result.data && result.data.error && result.data.error.code === "conflict")) {
          el.cancel.disabled = false;
        }
      }
    });
  });

  // ---- charts ----------------------------------------------------------------------

  var charts = [];
  var series = { t: [], eps: [], tpm: [], active: [], queued: [], failed: [] };

  function chartWidth(node) { return Math.max(280, (node.clientWidth || 600) - 4); }

  function makeChart(node, lines) {
    if (typeof window.uPlot !== "function") return null;
    var opts = {
      width: chartWidth(node), height: 200,
      scales: { x: { time: true } },
      series: [{}].concat(lines.map(function (l) {
        return { label: l[0], stroke: l[1], width: 2, value: function (u, v) { return v === null ? "–" : String(v); } };
      })),
      axes: [{ stroke: "#888" }, { stroke: "#888" }],
      legend: { live: true }
    };
    return new window.uPlot(opts, [[]].concat(lines.map(function () { return []; })), node);
  }

  var throughput = makeChart($("chart-throughput"), [["events/s", "#0b5cad"], ["tasks/min", "#1a7f37"]]);
  var states = makeChart($("chart-states"), [["active", "#0b5cad"], ["queued", "#bf8700"], ["failed/min", "#b42318"]]);
  charts = [[throughput, $("chart-throughput")], [states, $("chart-states")]];

  function redraw() {
    if (throughput) throughput.setData([series.t, series.eps, series.tpm]);
    if (states) states.setData([series.t, series.active, series.queued, series.failed]);
  }

  function addPoint(t, eps, tpm, active, queued, failed) {
    t = num(t);
    if (t === null) return;
    var last = series.t.length ? series.t[series.t.length - 1] : null;
    if (last !== null && t <= last) return;  // x must grow
    series.t.push(t); series.eps.push(num(eps)); series.tpm.push(num(tpm));
    series.active.push(num(active)); series.queued.push(num(queued)); series.failed.push(num(failed));
    while (series.t.length && series.t[0] < t - CHART_SPAN) {
      Object.keys(series).forEach(function (k) { series[k].shift(); });
    }
  }

  window.addEventListener("resize", function () {
    charts.forEach(function (c) { if (c[0]) c[0].setSize({ width: chartWidth(c[1]), height: 200 }); });
  });

  // ---- maintenance -------------------------------------------------------------------

  function renderMaintenance(status) {
    if (!status || typeof status !== "object") return;
    if (status.active) {
      var until = status.until ? " until " + S.formatTime(status.until) : "";
      el.maintState.textContent = "ON" + until + (status.message ? ": " + status.message : "");
      el.maintState.setAttribute("data-active", "1");
    } else {
      el.maintState.textContent = "off";
      el.maintState.setAttribute("data-active", "0");
    }
  }

  function setMaintenance(active) {
    var body = { active: active, message: active ? el.maintText.value.trim() : "", until: null };
    var minutes = num(el.maintMinutes.value);
    if (active && el.maintMinutes.value !== "" && minutes !== null && minutes > 0) {
      body.until = Date.now() / 1000 + minutes * 60;
    }
    el.maintResult.textContent = "Saving…";
    S.apiFetch("/api/maintenance", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body)
    }).then(function (result) {
      if (result.ok) {
        renderMaintenance(result.data);
        el.maintResult.textContent = active ? "Maintenance is on: new jobs are refused, running jobs finish." : "Maintenance is off.";
      } else {
        el.maintResult.textContent = S.errorMessage(result, "Could not change maintenance mode.");
      }
    });
  }
  $("maintenance-on").addEventListener("click", function () { setMaintenance(true); });
  $("maintenance-off").addEventListener("click", function () { setMaintenance(false); });
  $("maintenance-form").addEventListener("submit", function (e) { e.preventDefault(); });

  // ---- initial data ------------------------------------------------------------------

  function loadCluster() {
    return S.apiFetch("/api/cluster").then(function (result) {
      if (!result.ok || !result.data) { showMessage("Could not load cluster state: " + S.errorMessage(result)); return; }
      var d = result.data;
      renderMetrics(d.metrics);
      renderMaintenance(d.maintenance);
      if (Array.isArray(d.history)) {
        d.history.forEach(function (p) { if (Array.isArray(p)) addPoint(p[0], p[1], p[2], p[3], p[4], p[5]); });
        redraw();
      }
      if (Array.isArray(d.alerts) && !alertTotal) d.alerts.forEach(addAlert);
    });
  }

  function loadWorkers() {
    return S.apiFetch("/api/workers").then(function (result) {
      if (result.ok && result.data) renderWorkers(result.data.workers);
    });
  }

  // ---- socket ------------------------------------------------------------------------

  function setConn(kind, text) {
    el.conn.textContent = text;
    el.conn.setAttribute("data-conn", kind);
  }

  var socket = null;
  try { socket = S.skaldSocket(); } catch (e) { showMessage("Live updates are unavailable: " + e.message); }

  var joinedOnce = false;
  function join() {
    socket.timeout(ACK_TIMEOUT_MS).emit("join_admin_dashboard", {}, function (err, ack) {
      if (err) { setConn("reconnecting", "no answer"); showMessage("The server did not answer join_admin_dashboard in time."); return; }
      if (!ack || !ack.ok) {
        var e = (ack && ack.error) || {};
        setConn("disconnected", "refused");
        showMessage(e.message || e.code || "Not allowed to watch the cluster.");
        return;
      }
      setConn("live", "live");
      clearMessage();
      renderMetrics(ack.metrics);
      if (joinedOnce) { loadTasks(); loadWorkers(); }  // fill what a disconnect may have missed
      joinedOnce = true;
    });
  }

  if (socket) {
    socket.on("connect", join);
    socket.on("disconnect", function () {
      setConn(socket.active ? "reconnecting" : "disconnected", socket.active ? "reconnecting…" : "disconnected");
    });
    socket.on("connect_error", function (err) {
      if (socket.active) { setConn("reconnecting", "reconnecting…"); return; }
      setConn("disconnected", "disconnected");
      if (err && err.message === "unauthorized") showMessage("Not logged in: reload the page to log in again.");
    });
    socket.on("system_metrics_update", function (data) {
      if (!data || typeof data !== "object") return;
      var m = data.metrics || {};
      renderMetrics(m);
      if (Array.isArray(data.workers)) renderWorkers(data.workers);
      addPoint(m.updated_at || Date.now() / 1000, m.events_per_second, m.tasks_per_minute,
               m.active_jobs, m.queued, m.failed_per_minute);
      redraw();
    });
    socket.on("job_update", function (data) {
      if (data && data.job) upsertTask(data.job, true);
    });
    socket.on("admin_alert", addAlert);
    socket.on("maintenance_status", renderMaintenance);
    if (socket.connected) join();
  }

  loadCluster();
  loadWorkers();
  loadTasks();
})();
