/* Skald operator view: one task's detail (GET /api/tasks/<id>) and its Cancel / revoke.
 *
 * Opening it moves focus to its heading; Close (or Escape inside it) hides it and
 * puts focus back on the button that opened it. Cancel is aria-disabled, not
 * disabled, while its request runs, so focus stays on it.
 */
(function () {
  "use strict";
  var A = window.SkaldAdmin, U = A.util, S = window.Skald;
  var el = {
    panel: U.$("task-detail"), heading: U.$("detail-heading"), cancel: U.$("task-cancel"),
    message: U.$("detail-message"), close: U.$("detail-close")
  };
  var selected = null;
  var opener = null;
  var cancelling = false;

  function setCancelable(on) {
    if (on) el.cancel.removeAttribute("aria-disabled");
    else el.cancel.setAttribute("aria-disabled", "true");
  }

  function head(t) {
    U.$("detail-id").textContent = t.task_id;
    U.$("detail-name").textContent = t.name || "";
    var state = U.$("detail-state");
    state.textContent = t.state || "";
    state.setAttribute("data-state", t.state || "");
    U.$("detail-worker").textContent = t.worker || "";
    U.$("detail-runtime").textContent = U.seconds(t.runtime);
    U.$("detail-owner").textContent = t.owner || "";
    U.$("detail-step").textContent = t.current_step || "";
    if (!cancelling) setCancelable(!U.TERMINAL[t.state] && t.state !== "CANCELLING");
  }

  function outcomeText(t) {
    var outcome = t.outcome || "";
    if (t.error && (t.error.type || t.error.message)) {
      outcome = (t.error.type || "Error") + ": " + (t.error.message || "") + (outcome ? "\n\n" + outcome : "");
    }
    if (t.terminated) outcome += (outcome ? "\n" : "") + "(terminated after the cancel grace period)";
    return outcome || (U.TERMINAL[t.state] ? "(nothing recorded)" : "(still running)");
  }

  function open(taskId, from) {
    var data = A.panels.tasks.get(taskId);
    if (!data) return;
    selected = taskId;
    opener = from || null;
    A.panels.tasks.each(function (id, row) {
      if (id === taskId) row.setAttribute("aria-current", "true"); else row.removeAttribute("aria-current");
    });
    head(data);
    U.$("detail-page").href = "/admin/tasks/" + encodeURIComponent(taskId);
    U.$("detail-args").textContent = "";
    U.$("detail-outcome").textContent = "";
    el.message.textContent = "Loading…";
    el.panel.hidden = false;
    el.heading.focus();
    S.apiFetch("/api/tasks/" + encodeURIComponent(taskId)).then(function (result) {
      if (selected !== taskId) return;
      if (!result.ok || !result.data || !result.data.task) {
        el.message.textContent = S.errorMessage(result, "Could not load the task.");
        return;
      }
      var t = result.data.task;
      A.panels.tasks.upsert(t, false);
      head(A.panels.tasks.get(taskId));
      U.$("detail-args").textContent = [t.args, t.kwargs].filter(Boolean).join(" ") || "(none recorded)";
      U.$("detail-outcome").textContent = outcomeText(t);
      el.message.textContent = "";
    });
  }

  function close() {
    selected = null;
    el.panel.hidden = true;
    A.panels.tasks.each(function (id, row) { row.removeAttribute("aria-current"); });
    if (opener && document.body.contains(opener)) opener.focus();
  }

  el.close.addEventListener("click", close);
  el.panel.addEventListener("keydown", function (e) { if (e.key === "Escape") { e.preventDefault(); close(); } });

  el.cancel.addEventListener("click", function () {
    var taskId = selected;
    if (!taskId || el.cancel.getAttribute("aria-disabled") === "true") return;
    cancelling = true;
    setCancelable(false);
    el.message.textContent = "Cancelling…";
    S.apiFetch("/api/tasks/" + encodeURIComponent(taskId) + "/cancel", { method: "POST" }).then(function (result) {
      cancelling = false;
      var data = A.panels.tasks.get(taskId);
      if (result.ok) {
        el.message.textContent = "Cancel requested; the task ends shortly.";
        if (data && !U.TERMINAL[data.state]) {
          A.panels.tasks.upsert({ task_id: taskId, state: "CANCELLING", updated_at: data.updated_at }, false);
        }
        return;
      }
      el.message.textContent = S.errorMessage(result, "Could not cancel the task.");
      var conflict = result.data && result.data.error && result.data.error.code === "conflict";
      if (data && !U.TERMINAL[data.state] && !conflict) setCancelable(true);
    });
  });

  A.panels.detail = {
    open: open, close: close,
    selected: function () { return selected; },
    changed: function (t) { if (selected === t.task_id) head(t); }
  };
})();
