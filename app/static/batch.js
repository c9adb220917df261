// The batch page: poll the JSON API every ~500 ms and update each job's status and the combined status.
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  var root = document.getElementById("batch");
  if (!root) return;
  var FINAL = ["succeeded", "failed", "canceled"];
  var apiUrl = root.getAttribute("data-api-url");
  var failures = 0;

  function setStatus(el, status) {
    el.textContent = status;
    el.className = "status status-" + status;
  }

  function render(batch) {
    setStatus(document.getElementById("batch-status"), batch.status);
    var progress = document.getElementById("batch-progress");
    var percent = Math.round(100 * (batch.progress || 0));
    progress.value = percent;
    progress.textContent = percent + "%";
    var parts = [];
    Object.keys(batch.counts).forEach(function (name) {
      if (batch.counts[name]) parts.push(batch.counts[name] + " " + name);
    });
    document.getElementById("batch-counts").textContent = parts.join(", ");
    batch.jobs.forEach(function (job) {
      var row = root.querySelector('tr[data-job-id="' + job.id + '"]');
      if (!row) return;
      setStatus(row.querySelector(".status"), job.status);
      row.querySelector(".job-progress").textContent =
        Math.round(100 * (job.status === "succeeded" ? 1 : job.progress || 0)) + "%";
      var next = row.nextElementSibling;
      if (job.error && !(next && next.classList.contains("job-error-row"))) {
        var errorRow = document.createElement("tr");
        errorRow.className = "job-error-row";
        errorRow.appendChild(document.createElement("td"));
        var cell = document.createElement("td");
        cell.colSpan = 6;
        cell.className = "error-message";
        cell.textContent = job.error;
        errorRow.appendChild(cell);
        row.parentNode.insertBefore(errorRow, row.nextSibling);
      }
    });
    root.setAttribute("data-status", batch.status);
  }

  function poll() {
    fetch(apiUrl, { headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (batch) {
        failures = 0;
        render(batch);
        if (FINAL.indexOf(batch.status) < 0) setTimeout(poll, 500);
      })
      .catch(function () {
        failures += 1;
        setTimeout(poll, Math.min(10000, 500 * Math.pow(2, failures)));
      });
  }

  if (FINAL.indexOf(root.getAttribute("data-status")) < 0) poll();
})();
