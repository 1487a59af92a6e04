/* Skald operator view (/admin): what every panel shares. Loaded first of js/admin/*.js.
 *
 * window.SkaldAdmin = {util, panels}: each panel script adds itself to panels
 * (metrics, alerts, workers, tasks, detail, maintenance); main.js loads the first
 * data over HTTP and feeds the pushed events to them. Data is only ever written
 * with textContent.
 */
(function () {
  "use strict";

  function $(id) { return document.getElementById(id); }

  function num(v) {
    if (v === null || v === undefined || v === "") return null;
    var n = Number(v);
    return isFinite(n) ? n : null;
  }

  function clockTime(unix) {
    var n = num(unix);
    if (n === null || n <= 0) return "";
    return new Date(n * 1000).toLocaleTimeString();
  }

  function seconds(v) {
    var n = num(v);
    if (n === null) return "";
    return n < 10 ? n.toFixed(2) + " s" : n.toFixed(1) + " s";
  }

  function loads(list) {
    return Array.isArray(list) && list.length
      ? list.map(function (x) { return Number(x).toFixed(2); }).join(" / ") : "";
  }

  function cell(text, testid) {
    var td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    if (testid) td.setAttribute("data-testid", testid);
    return td;
  }

  var message = $("admin-message");
  function showMessage(text) { message.textContent = text; message.hidden = false; }
  function clearMessage() { message.textContent = ""; message.hidden = true; }

  window.SkaldAdmin = {
    util: { $: $, num: num, clockTime: clockTime, seconds: seconds, loads: loads, cell: cell,
            showMessage: showMessage, clearMessage: clearMessage,
            TERMINAL: { SUCCESS: true, FAILURE: true, REVOKED: true } },
    panels: {}
  };
})();
