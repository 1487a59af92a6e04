/* Skald operator view: the task table, its filters, and GET /api/tasks (the explorer:
 * filters, sort, "Next page" through next_cursor; the server also searches args,
 * kwargs, results and errors, so rows it found for the current query stay shown).
 *
 * Rows carry data-testid "task-row-<task_id>" with a "task-state" cell holding the
 * raw state. The first cell is a real button naming the task; pressing it (or
 * clicking the row) opens the detail panel. A row never goes back from its ending.
 */
(function () {
  "use strict";
  var A = window.SkaldAdmin, U = A.util, S = window.Skald;
  var MAX_ROWS = 500;   // rows kept (the oldest ended ones go first)
  var PAGE = 200;
  var el = {
    body: U.$("tasks"), empty: U.$("tasks-empty"), state: U.$("filter-state"),
    name: U.$("filter-name"), search: U.$("filter-search"), worker: U.$("filter-worker"),
    sort: U.$("filter-sort"), order: U.$("filter-order"), more: U.$("tasks-more"), note: U.$("tasks-note")
  };
  var queryKey = "", nextCursor = null;
  var tasks = new Map();   // task_id -> {data, row}
  var names = new Set();

  function matches(t, entry) {
    var state = el.state.value, name = el.name.value, worker = el.worker.value.trim();
    var q = el.search.value.trim().toLowerCase();
    return (!state || t.state === state) && (!name || t.name === name) &&
      (!worker || t.worker === worker) &&
      (!q || (entry && entry.key === queryKey) || String(t.task_id).toLowerCase().indexOf(q) >= 0);
  }

  function fill(row, t) {
    var cells = row.children;
    var short = String(t.task_id).slice(0, 8) + "…";
    cells[0].firstChild.firstChild.textContent = short;
    cells[0].firstChild.title = t.task_id;
    cells[1].textContent = t.name || "";
    var badge = cells[2].firstChild;
    badge.textContent = t.state || "PENDING";
    badge.setAttribute("data-state", t.state || "PENDING");
    cells[2].setAttribute("data-state", t.state || "PENDING");
    var pct = S.clampPercent(t.progress_percent);
    cells[3].textContent = t.total ? pct + "% (" + S.formatCount(t.current, t.total) + ")" : (U.TERMINAL[t.state] ? "" : pct + "%");
    cells[4].textContent = t.worker || "";
    cells[5].textContent = U.seconds(t.runtime);
    cells[6].textContent = U.clockTime(t.updated_at);
    row.hidden = !matches(t, tasks.get(t.task_id));
  }

  function newRow(t) {
    var row = document.createElement("tr");
    row.setAttribute("data-testid", "task-row-" + t.task_id);
    row.setAttribute("data-task-id", t.task_id);
    var first = document.createElement("th");
    first.scope = "row";
    first.setAttribute("data-testid", "task-id");
    var open = document.createElement("button");
    open.type = "button";
    open.className = "link-button task-open";
    open.setAttribute("data-testid", "task-open");
    var hidden = document.createElement("span");
    hidden.className = "visually-hidden";
    hidden.textContent = " details";
    open.append(document.createTextNode(""), hidden);
    first.appendChild(open);
    var stateCell = document.createElement("td");
    stateCell.setAttribute("data-testid", "task-state");
    var badge = document.createElement("span");
    badge.className = "badge";
    stateCell.appendChild(badge);  // the badge is the state cell's only text: the raw state
    row.append(first, U.cell("", "task-name"), stateCell, U.cell(""), U.cell(""), U.cell(""), U.cell(""));
    open.addEventListener("click", function (e) { e.stopPropagation(); A.panels.detail.open(t.task_id, open); });
    row.addEventListener("click", function () { A.panels.detail.open(t.task_id, open); });
    return row;
  }

  function addName(name) {
    if (!name || names.has(name)) return;
    names.add(name);
    var opt = document.createElement("option");
    opt.value = name;
    opt.textContent = name;
    el.name.appendChild(opt);
  }

  /** Insert or update a task; ``atTop``: a task new from push goes first; ``key``: the
   *  query whose page it came in (it matches that query on the server). */
  function upsert(t, atTop, key) {
    if (!t || typeof t !== "object" || typeof t.task_id !== "string") return;
    var entry = tasks.get(t.task_id);
    if (entry) {
      var old = entry.data;
      if (U.TERMINAL[old.state] && !U.TERMINAL[t.state]) return;   // one ending, never undone
      if (U.num(t.updated_at) !== null && U.num(old.updated_at) !== null && t.updated_at < old.updated_at) return;
      var merged = Object.assign({}, old);
      Object.keys(t).forEach(function (k) { if (t[k] !== null && t[k] !== undefined) merged[k] = t[k]; });
      entry.data = merged;
      if (key) entry.key = key;
      fill(entry.row, merged);
    } else {
      entry = { data: Object.assign({}, t), row: newRow(t), key: key || "" };
      tasks.set(t.task_id, entry);
      fill(entry.row, entry.data);
      if (atTop) el.body.prepend(entry.row); else el.body.appendChild(entry.row);
      trim();
    }
    addName(entry.data.name);
    el.empty.hidden = true;
    A.panels.detail.changed(entry.data);
  }

  function trim() {
    var rows = el.body.children;
    for (var i = rows.length - 1; i >= 0 && tasks.size > MAX_ROWS; i--) {
      var id = rows[i].getAttribute("data-task-id");
      var entry = tasks.get(id);
      if (id !== A.panels.detail.selected() && entry && U.TERMINAL[entry.data.state]) {
        tasks.delete(id);
        rows[i].remove();
      }
    }
  }

  function applyFilters() {
    tasks.forEach(function (entry) { entry.row.hidden = !matches(entry.data, entry); });
  }

  function params() {
    var p = new URLSearchParams({ limit: String(PAGE), sort: el.sort.value, order: el.order.value });
    if (el.state.value) p.set("state", el.state.value);
    if (el.name.value) p.set("name", el.name.value);
    if (el.worker.value.trim()) p.set("worker", el.worker.value.trim());
    var q = el.search.value.trim();
    if (q) p.set("q", q);
    return p;
  }

  /** The first page of the current query (``more``: the next one, after the rows shown). */
  function load(more) {
    var p = params();
    var key = p.toString();
    if (more && nextCursor) p.set("cursor", nextCursor);
    queryKey = key;
    return S.apiFetch("/api/tasks?" + p.toString()).then(function (result) {
      if (!result.ok || !result.data || !Array.isArray(result.data.tasks)) {
        U.showMessage("Could not load tasks: " + S.errorMessage(result));
        return;
      }
      if (key !== queryKey) return;  // a newer query was asked for meanwhile
      result.data.tasks.forEach(function (t) { upsert(t, false, key); });
      if (el.sort.value !== "received" || el.order.value !== "desc") reorder(result.data.tasks, more);
      nextCursor = result.data.next_cursor || null;
      el.more.hidden = !nextCursor;
      el.note.textContent = result.data.truncated
        ? "Looked through " + result.data.examined + " tasks; the next page searches further." : "";
      applyFilters();
    });
  }

  /** Rows of a sorted page in the server's order (a first page goes first). */
  function reorder(list, more) {
    var rows = list.map(function (t) { return tasks.get(t.task_id).row; });
    if (more) rows.forEach(function (r) { el.body.appendChild(r); });
    else rows.reverse().forEach(function (r) { el.body.prepend(r); });
  }

  var timer = null;
  function onFilterChange() {
    applyFilters();
    clearTimeout(timer);
    nextCursor = null;
    timer = setTimeout(function () { load(false); }, 250);  // also find matches older than the rows shown
  }
  el.state.addEventListener("change", onFilterChange);
  el.name.addEventListener("change", onFilterChange);
  el.sort.addEventListener("change", onFilterChange);
  el.order.addEventListener("change", onFilterChange);
  el.search.addEventListener("input", onFilterChange);
  el.worker.addEventListener("input", onFilterChange);
  el.more.addEventListener("click", function () { load(true); });
  U.$("task-filters").addEventListener("submit", function (e) { e.preventDefault(); });

  A.panels.tasks = {
    upsert: upsert, load: function () { return load(false); },
    get: function (id) { var e = tasks.get(id); return e ? e.data : null; },
    row: function (id) { var e = tasks.get(id); return e ? e.row : null; },
    each: function (fn) { tasks.forEach(function (e, id) { fn(id, e.row, e.data); }); }
  };
})();
