/* A task's own page (/admin/tasks/<id>): times shown in local time, the state kept
 * fresh from GET /api/tasks/<id> until the task ends, and the admin actions
 * (terminate with a chosen signal, retry). Data is only ever written with textContent.
 */
(function () {
  "use strict";
  var S = window.Skald;
  var root = document.getElementById("task");
  if (!root) return;
  var id = root.getAttribute("data-task-id");
  var message = document.getElementById("task-message");
  var TERMINAL = { SUCCESS: true, FAILURE: true, REVOKED: true };

  function say(text, error) {
    message.hidden = false;
    message.textContent = text;
    message.className = "alert" + (error ? " alert-error" : "");
  }

  function localTimes() {
    document.querySelectorAll("[data-time]").forEach(function (dd) {
      var n = Number(dd.getAttribute("data-time"));
      dd.textContent = n > 0 ? new Date(n * 1000).toLocaleString() : "";
    });
  }

  function show(task) {
    root.setAttribute("data-state", task.state);
    document.querySelectorAll("[data-field]").forEach(function (el) {
      var key = el.getAttribute("data-field");
      if (!(key in task)) return;
      var v = task[key];
      if (el.hasAttribute("data-time")) el.setAttribute("data-time", v || "");
      else el.textContent = v === null || v === undefined ? "" : String(v);
      if (key === "state") el.setAttribute("data-state", v);
    });
    localTimes();
    var term = document.getElementById("task-terminate");
    if (term) term.disabled = !!TERMINAL[task.state];
  }

  function refresh() {
    return S.apiFetch("/api/tasks/" + encodeURIComponent(id)).then(function (r) {
      if (r.ok && r.data && r.data.task) show(r.data.task);
      var state = root.getAttribute("data-state");
      if (!TERMINAL[state]) setTimeout(refresh, 2000);
    });
  }

  function post(path, body) {
    return S.apiFetch("/api/tasks/" + encodeURIComponent(id) + path, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body || {})
    });
  }

  var term = document.getElementById("task-terminate");
  if (term) term.addEventListener("click", function () {
    var sig = document.getElementById("terminate-signal").value;
    term.disabled = true;
    post("/terminate", { signal: sig }).then(function (r) {
      if (r.ok) { say("Terminate sent (" + sig + ")."); setTimeout(refresh, 500); }
      else { term.disabled = false; say("Could not terminate: " + S.errorMessage(r), true); }
    });
  });

  var retry = document.getElementById("task-retry");
  if (retry) retry.addEventListener("click", function () {
    retry.disabled = true;
    post("/retry").then(function (r) {
      retry.disabled = false;
      if (!r.ok) { say("Could not retry: " + S.errorMessage(r), true); return; }
      message.hidden = false;
      message.textContent = "Retried as ";
      message.className = "alert";
      var link = document.createElement("a");
      link.href = "/admin/tasks/" + encodeURIComponent(r.data.task_id);
      link.textContent = r.data.task_id;
      link.setAttribute("data-testid", "retry-link");
      message.appendChild(link);
    });
  });

  localTimes();
  if (!TERMINAL[root.getAttribute("data-state")]) setTimeout(refresh, 2000);
})();
