/* Skald operator view: the maintenance panel (POST /api/maintenance; the banner is common.js's). */
(function () {
  "use strict";
  var A = window.SkaldAdmin, U = A.util, S = window.Skald;
  var state = U.$("maintenance-state"), text = U.$("maintenance-text");
  var minutes = U.$("maintenance-minutes"), result = U.$("maintenance-result");

  function render(status) {
    if (!status || typeof status !== "object") return;
    if (status.active) {
      var until = status.until ? " until " + S.formatTime(status.until) : "";
      state.textContent = "ON" + until + (status.message ? ": " + status.message : "");
      state.setAttribute("data-active", "1");
    } else {
      state.textContent = "off";
      state.setAttribute("data-active", "0");
    }
  }

  function set(active) {
    var body = { active: active, message: active ? text.value.trim() : "", until: null };
    var m = U.num(minutes.value);
    if (active && m !== null && m > 0) body.until = Date.now() / 1000 + m * 60;
    result.textContent = "Saving…";
    S.apiFetch("/api/maintenance", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body)
    }).then(function (answer) {
      if (answer.ok) {
        render(answer.data);
        result.textContent = active ? "Maintenance is on: new jobs are refused, running jobs finish." : "Maintenance is off.";
      } else {
        result.textContent = S.errorMessage(answer, "Could not change maintenance mode.");
      }
    });
  }

  U.$("maintenance-on").addEventListener("click", function () { set(true); });
  U.$("maintenance-off").addEventListener("click", function () { set(false); });
  U.$("maintenance-form").addEventListener("submit", function (e) { e.preventDefault(); });

  A.panels.maintenance = { render: render };
})();
