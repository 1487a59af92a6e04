/* Skald operator view: the alert list (admin_alert, newest first, at most MAX kept). */
(function () {
  "use strict";
  var A = window.SkaldAdmin, U = A.util;
  var MAX = 50;
  var list = U.$("alerts"), empty = U.$("alerts-empty"), counter = U.$("alert-count");
  var total = 0;

  function add(a) {
    if (!a || typeof a !== "object") return;
    var level = ["info", "warning", "critical"].indexOf(a.level) >= 0 ? a.level : "info";
    var li = document.createElement("li");
    li.className = "alert-item alert-" + level;
    li.setAttribute("data-kind", String(a.kind || ""));
    li.setAttribute("data-testid", "alert");
    var when = document.createElement("time");
    when.textContent = U.clockTime(a.at);
    var tag = document.createElement("strong");
    tag.textContent = level + " · " + String(a.kind || "alert");
    var text = document.createElement("span");
    text.textContent = String(a.message || "");
    li.append(when, " ", tag, " ", text);
    list.prepend(li);
    while (list.children.length > MAX) list.lastElementChild.remove();
    total += 1;
    counter.textContent = String(total);
    empty.hidden = true;
  }

  A.panels.alerts = { add: add, count: function () { return total; } };
})();
