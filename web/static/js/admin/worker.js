/* Skald: one worker's page (/admin/workers/<hostname>), after js/admin/base.js.
 *
 * GET /api/workers/<hostname> fills the fields, queues, registered tasks, stats and
 * conf (on load, every REFRESH_MS, after each action, and on Refresh). Admins get
 * the control buttons: POST /api/workers/<hostname>/control, each reply (or refusal)
 * added to the Replies log; shutdown asks for confirmation in the page first; and
 * limits per task type (POST /api/task-types/<name>/rate_limit and /time_limit).
 * A worker that does not answer (504) shows what the bridge last stored.
 * Data is only ever written with textContent.
 */
(function () {
  "use strict";
  var U = window.SkaldAdmin.util, S = window.Skald;
  var root = U.$("worker");
  var host = root.getAttribute("data-hostname");
  var canAct = root.getAttribute("data-can-act") === "1";
  var base = "/api/workers/" + encodeURIComponent(host);
  var REFRESH_MS = 5000;
  var busy = false;

  function field(name, text) {
    var el = document.querySelector("[data-field='" + name + "']");
    if (el) el.textContent = text === null || text === undefined || text === "" ? "–" : String(text);
  }

  function setStatus(online, answered) {
    var status = U.$("worker-status");
    status.textContent = online ? (answered ? "online" : "online (not answering)") : "offline";
    status.setAttribute("data-online", online ? "1" : "0");
  }

  function stored(w) {
    field("last_heartbeat", U.clockTime(w.last_heartbeat));
    field("active", w.active);
    field("processed", w.processed);
    field("loadavg", U.loads(w.loadavg));
  }

  function renderQueues(queues) {
    var body = U.$("queues");
    var rows = (Array.isArray(queues) ? queues : []).map(function (q) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-testid", "queue-row-" + q.name);
      var name = document.createElement("th");
      name.scope = "row";
      name.textContent = q.name;
      tr.append(name, U.cell(q.exchange), U.cell(q.routing_key));
      if (canAct) {
        var td = document.createElement("td");
        var stop = document.createElement("button");
        stop.type = "button";
        stop.className = "link-button";
        stop.textContent = "Stop consuming";
        stop.setAttribute("aria-label", "Stop consuming " + q.name);
        stop.setAttribute("data-testid", "cancel-consumer-" + q.name);
        stop.addEventListener("click", function () { act("cancel_consumer", { queue: q.name }); });
        td.append(stop);
        tr.append(td);
      }
      return tr;
    });
    body.replaceChildren.apply(body, rows);
  }

  function renderRegistered(names) {
    var list = U.$("registered");
    var items = (Array.isArray(names) ? names : []).map(function (n) {
      var li = document.createElement("li");
      li.className = "job-item";
      var code = document.createElement("code");
      code.textContent = n;
      li.append(code);
      return li;
    });
    list.replaceChildren.apply(list, items);
    U.$("registered-count").textContent = String(items.length);
    var select = U.$("limit-task");
    if (select && Array.isArray(names)) {
      var chosen = select.value;
      select.replaceChildren.apply(select, names.map(function (n) {
        var option = document.createElement("option");
        option.value = n;
        option.textContent = n;
        return option;
      }));
      if (names.indexOf(chosen) >= 0) select.value = chosen;
    }
  }

  function render(w) {
    setStatus(w.online, true);
    stored(w);
    var pool = w.pool || {};
    // "celery.concurrency.prefork:TaskPool" reads as "prefork" (the whole name in stats).
    field("pool", String(pool.implementation || "").replace(/^celery\.concurrency\./, "").replace(/:TaskPool$/, ""));
    field("max_concurrency", pool.max_concurrency);
    field("processes", Array.isArray(pool.processes)
      ? pool.processes.length + (pool.processes.length ? " (" + pool.processes.join(", ") + ")" : "") : "");
    field("pid", w.stats && w.stats.pid);
    renderQueues(w.queues);
    renderRegistered(w.registered);
    U.$("worker-stats").textContent = JSON.stringify(w.stats || {}, null, 2);
    U.$("worker-conf").textContent = JSON.stringify(w.conf || {}, null, 2);
  }

  function load() {
    if (busy) return Promise.resolve();
    busy = true;
    return S.apiFetch(base).then(function (result) {
      busy = false;
      U.$("worker-updated").textContent = new Date().toLocaleTimeString();
      if (result.ok && result.data && result.data.worker) {
        U.clearMessage();
        render(result.data.worker);
      } else if (result.status === 504 && result.data && result.data.worker) {
        setStatus(result.data.worker.online, false);
        stored(result.data.worker);
        U.showMessage(S.errorMessage(result) + " Showing what the bridge last heard.");
      } else {
        U.showMessage(S.errorMessage(result, "Could not ask the worker."));
      }
    });
  }

  function reply(action, text, ok) {
    var list = U.$("replies");
    var li = document.createElement("li");
    li.className = "alert-item " + (ok ? "alert-info" : "alert-critical");
    li.setAttribute("data-testid", "reply");
    li.setAttribute("data-action", action);
    li.setAttribute("data-ok", ok ? "1" : "0");
    var when = document.createElement("time");
    when.textContent = new Date().toLocaleTimeString();
    var tag = document.createElement("strong");
    tag.textContent = action;
    var span = document.createElement("span");
    span.textContent = text;
    li.append(when, " ", tag, " ", span);
    list.prepend(li);
  }

  function act(action, extra) {
    var body = Object.assign({ action: action }, extra || {});
    reply(action, "sent…", true);
    var pending = U.$("replies").firstElementChild;
    return S.apiFetch(base + "/control", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body)
    }).then(function (result) {
      pending.remove();
      if (result.ok && result.data) {
        var r = result.data.reply;
        reply(action, r && typeof r === "object" && r.ok ? String(r.ok) : JSON.stringify(r), true);
      } else {
        reply(action, S.errorMessage(result, "The action failed."), false);
      }
      return load();
    });
  }

  /** POST /api/task-types/<name>/<kind>; the replies summed up as "N workers: text". */
  function limit(kind) {
    var name = U.$("limit-task").value;
    var body;
    if (kind === "rate_limit") {
      body = { rate_limit: U.$("limit-rate").value.trim() || null };
    } else {
      body = { soft: U.num(U.$("limit-soft").value), hard: U.num(U.$("limit-hard").value) };
    }
    reply(kind, "sent…", true);
    var pending = U.$("replies").firstElementChild;
    return S.apiFetch("/api/task-types/" + encodeURIComponent(name) + "/" + kind, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body)
    }).then(function (result) {
      pending.remove();
      if (!result.ok || !result.data) { reply(kind, S.errorMessage(result, "The change failed."), false); return; }
      var texts = {};
      Object.keys(result.data.replies || {}).forEach(function (host) {
        var r = result.data.replies[host] || {};
        var text = r.ok ? String(r.ok) : "refused: " + String(r.error || JSON.stringify(r));
        texts[text] = (texts[text] || 0) + 1;
      });
      reply(kind, name + ": " + Object.keys(texts).map(function (t) {
        return texts[t] + (texts[t] === 1 ? " worker: " : " workers: ") + t;
      }).join("; "), true);
    });
  }

  function count(id) {
    var n = U.num(U.$(id).value);
    return n === null ? U.$(id).value : Math.round(n);
  }

  if (canAct) {
    document.querySelectorAll("[data-action]").forEach(function (button) {
      button.addEventListener("click", function () {
        var action = button.getAttribute("data-action");
        if (action === "pool_grow" || action === "pool_shrink") act(action, { n: count("pool-n") });
        else if (action === "autoscale") act(action, { max: count("autoscale-max"), min: count("autoscale-min") });
        else if (action === "add_consumer") act(action, { queue: U.$("consumer-queue").value.trim() });
        else act(action);
      });
    });
    document.querySelectorAll("[data-limit]").forEach(function (button) {
      button.addEventListener("click", function () { limit(button.getAttribute("data-limit")); });
    });
    ["control-form", "autoscale-form", "consumer-form", "limits-form"].forEach(function (id) {
      U.$(id).addEventListener("submit", function (e) { e.preventDefault(); });
    });
    var ask = U.$("shutdown-ask"), confirmBox = U.$("shutdown-confirm");
    var close = function () {
      confirmBox.hidden = true;
      ask.setAttribute("aria-expanded", "false");
      ask.focus();
    };
    ask.addEventListener("click", function () {
      confirmBox.hidden = false;
      ask.setAttribute("aria-expanded", "true");
      U.$("shutdown-question").focus();
    });
    U.$("shutdown-no").addEventListener("click", close);
    U.$("shutdown-yes").addEventListener("click", function () { close(); act("shutdown"); });
    confirmBox.addEventListener("keydown", function (e) { if (e.key === "Escape") close(); });
  }

  U.$("worker-refresh").addEventListener("click", load);
  load();
  setInterval(function () { if (!document.hidden) load(); }, REFRESH_MS);
})();
