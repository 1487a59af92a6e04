/* "Caption the rest" on a job page: POST /api/jobs/<id>/resume starts a new job over the
 * images of this (ended) job that were not captioned, and opens it. The button is shown
 * by the server for a job that already ended with images left, and here once a job the
 * page watches ends cancelled, failed or partly failed.
 */
(function () {
  "use strict";
  var S = window.Skald;
  var button = document.getElementById("resume");
  if (!button) return;
  var id = button.getAttribute("data-task-id");
  document.addEventListener("skald:job-ended", function (e) {
    if (e.detail && e.detail.kind !== "done") button.hidden = false;
  });
  button.addEventListener("click", function () {
    button.disabled = true;
    S.apiFetch("/api/jobs/" + encodeURIComponent(id) + "/resume", { method: "POST" }).then(function (r) {
      if (r.ok && r.data && r.data.task_id) {
        window.location.href = "/jobs/" + encodeURIComponent(r.data.task_id);
        return;
      }
      button.disabled = false;
      var msg = document.getElementById("message");
      if (msg) { msg.textContent = "Could not caption the rest: " + S.errorMessage(r); msg.hidden = false; }
    });
  });
})();
