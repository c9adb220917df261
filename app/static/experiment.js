// The experiment page: poll the JSON API every ~500 ms and update status and progress; once every job has
// ended, load the page again, which then shows the whole grid. Without JavaScript: a refresh link.
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  var root = document.getElementById("experiment");
  if (!root) return;
  var FINAL = ["succeeded", "failed", "canceled"];
  var apiUrl = root.getAttribute("data-api-url");
  var statusEl = document.getElementById("experiment-status");
  var progressEl = document.getElementById("experiment-progress");
  var failures = 0;

  function poll() {
    fetch(apiUrl, { headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (experiment) {
        failures = 0;
        statusEl.textContent = experiment.status;
        statusEl.className = "status status-" + experiment.status;
        progressEl.value = Math.round(100 * experiment.progress);
        if (FINAL.indexOf(experiment.status) >= 0) window.location.reload();
        else setTimeout(poll, 500);
      })
      .catch(function () {
        failures += 1;
        setTimeout(poll, Math.min(10000, 500 * Math.pow(2, failures)));
      });
  }

  if (FINAL.indexOf(root.getAttribute("data-status")) < 0) poll();
})();
