/* Skald: the "New job" page. Uploads images to POST /api/jobs and lists the
 * caller's recent jobs from GET /api/jobs. */
(function () {
  "use strict";
  var S = window.Skald;

  var form = document.getElementById("upload-form");
  var input = document.getElementById("images");
  var submit = document.getElementById("submit");
  var selection = document.getElementById("selection");
  var status = document.getElementById("upload-status");
  var errorBox = document.getElementById("upload-error");
  var jobsList = document.getElementById("recent-jobs");
  var jobsStatus = document.getElementById("jobs-status");

  function showError(text) {
    errorBox.textContent = text;
    S.show(errorBox);
  }

  function clearError() {
    errorBox.textContent = "";
    S.hide(errorBox);
  }

  function jobUrl(taskId) {
    return "/jobs/" + encodeURIComponent(taskId);
  }

  input.addEventListener("change", function () {
    var n = input.files ? input.files.length : 0;
    selection.textContent = n ? n + (n === 1 ? " image selected" : " images selected") : "";
    clearError();
  });

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    clearError();
    var files = input.files ? Array.prototype.slice.call(input.files) : [];
    if (!files.length) {
      showError("Choose at least one image.");
      return;
    }
    var body = new FormData();
    files.forEach(function (file) { body.append("images", file, file.name); });

    submit.disabled = true;
    status.textContent = "Uploading " + files.length + (files.length === 1 ? " image…" : " images…");

    // No Content-Type header: the browser sets the multipart boundary itself.
    S.apiFetch("/api/jobs", { method: "POST", body: body }).then(function (result) {
      if (result.status === 202 && result.data && result.data.task_id) {
        status.textContent = "Job started, opening it…";
        window.location.assign(jobUrl(result.data.task_id));
        return;
      }
      status.textContent = "";
      showError(S.errorMessage(result, "Upload failed."));
      submit.disabled = false;
    });
  });

  // ---- recent jobs -------------------------------------------------------

  function renderJob(job) {
    var li = document.createElement("li");
    li.className = "job-item";
    li.setAttribute("data-task-id", job.task_id);

    var link = document.createElement("a");
    link.href = jobUrl(job.task_id);
    link.textContent = String(job.task_id).slice(0, 8);
    link.title = job.task_id;

    var badge = document.createElement("span");
    badge.className = "badge";
    badge.setAttribute("data-state", job.state || "");
    badge.textContent = job.state || "?";

    var progress = document.createElement("span");
    progress.className = "muted";
    progress.textContent = S.formatPercent(job.progress_percent) + " · " +
      S.formatCount(job.current, job.total) + " images";

    var when = document.createElement("span");
    when.className = "muted job-when";
    when.textContent = S.formatTime(job.updated_at);

    li.append(link, " ", badge, " ", progress, " ", when);
    return li;
  }

  function loadJobs() {
    S.apiFetch("/api/jobs").then(function (result) {
      if (!result.ok || !result.data || !Array.isArray(result.data.jobs)) {
        jobsStatus.textContent = S.errorMessage(result, "Could not load your jobs.");
        return;
      }
      var jobs = result.data.jobs;
      jobsList.replaceChildren.apply(jobsList, jobs.map(renderJob));
      jobsStatus.textContent = jobs.length ? "" : "No jobs yet.";
    });
  }

  loadJobs();
})();
