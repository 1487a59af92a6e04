/* Skald: "Your recent jobs" on the New job page, from GET /api/jobs.
 *
 * Each job is named by its first file's name and image count, with its date and
 * its state in plain words (failures said, in amber). Pages of PAGE jobs: "Show
 * older jobs" appends the next one and moves focus to its first job; the search
 * box finds jobs by any file name.
 */
(function () {
  "use strict";
  var S = window.Skald;
  var PAGE = 20;

  var list = document.getElementById("recent-jobs");
  var status = document.getElementById("jobs-status");
  var more = document.getElementById("jobs-more");
  var search = document.getElementById("jobs-search");
  var cursor = null;
  var query = "";
  var generation = 0;   // answers to an older search are dropped

  function jobName(job) {
    var first = job.first_image || "Job " + String(job.task_id).slice(0, 8);
    var others = (Number(job.total) || 0) - 1;
    return others > 0 ? first + " and " + others + (others === 1 ? " more" : " more images") : first;
  }

  function stateClass(job) {
    if (job.state === "SUCCESS" && Number(job.failed) > 0) return "partial";
    return "";
  }

  function renderJob(job) {
    var li = document.createElement("li");
    li.className = "job-item";
    li.setAttribute("data-task-id", job.task_id);
    li.setAttribute("data-testid", "job-item");

    var link = document.createElement("a");
    link.href = "/jobs/" + encodeURIComponent(job.task_id);
    link.className = "job-name";
    link.textContent = jobName(job);

    var badge = document.createElement("span");
    badge.className = "badge";
    badge.setAttribute("data-state", job.state || "");
    if (stateClass(job)) badge.setAttribute("data-partial", "1");
    badge.setAttribute("data-testid", "job-state");
    badge.textContent = S.plainState(job.state, job.failed);

    var count = document.createElement("span");
    count.className = "muted";
    var total = Number(job.total) || 0;
    count.textContent = total + (total === 1 ? " image" : " images") +
      (job.state === "SUCCESS" || !total ? "" : ", " + S.formatCount(job.current, job.total) + " done");

    var when = document.createElement("time");
    when.className = "muted job-when";
    var created = Number(job.created_at || job.updated_at);
    if (created) when.dateTime = new Date(created * 1000).toISOString();
    when.textContent = S.formatTime(created);

    li.append(link, " ", badge, " ", count, " ", when);
    return li;
  }

  function load(append) {
    var mine = ++generation;
    var params = new URLSearchParams({ limit: String(PAGE) });
    if (append && cursor) params.set("cursor", String(cursor));
    if (query) params.set("q", query);
    status.textContent = "Loading…";
    return S.apiFetch("/api/jobs?" + params.toString()).then(function (result) {
      if (mine !== generation) return;
      if (!result.ok || !result.data || !Array.isArray(result.data.jobs)) {
        status.textContent = S.errorMessage(result, "Could not load your jobs.");
        return;
      }
      var items = result.data.jobs.map(renderJob);
      if (append) items.forEach(function (li) { list.appendChild(li); });
      else list.replaceChildren.apply(list, items);
      cursor = result.data.next_cursor || null;
      more.hidden = !cursor;
      var shown = list.children.length;
      if (!shown) status.textContent = query ? "No job has a file named like “" + query + "”." : "No jobs yet.";
      else status.textContent = query ? shown + (shown === 1 ? " job" : " jobs") + " with a file named like “" + query + "”." : "";
      if (append && items.length) items[0].querySelector("a").focus();
    });
  }

  more.addEventListener("click", function () { load(true); });

  var timer = null;
  search.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(function () {
      query = search.value.trim();
      cursor = null;
      load(false);
    }, 250);
  });
  document.getElementById("jobs-search-form").addEventListener("submit", function (e) {
    e.preventDefault();
    clearTimeout(timer);
    query = search.value.trim();
    cursor = null;
    load(false);
  });

  load(false);
})();
