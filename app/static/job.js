// The job page: poll the JSON API every ~500 ms, update status and progress, then show the images.
// Without JavaScript the page still works: it shows the state when it was loaded and a refresh link.
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  var root = document.getElementById("job");
  if (!root) return;
  var FINAL = ["succeeded", "failed", "canceled"];
  var apiUrl = root.getAttribute("data-api-url");
  var pageTemplate = root.getAttribute("data-image-page");
  var conditionText = root.getAttribute("data-condition");
  var jobShort = root.getAttribute("data-job-short");
  var statusEl = document.getElementById("job-status");
  var progressEl = document.getElementById("job-progress");
  var percentEl = document.getElementById("job-percent");
  var errorEl = document.getElementById("job-error");
  var noteEl = document.getElementById("poll-note");
  var imagesEl = document.getElementById("job-images");
  var pendingEl = document.getElementById("images-pending");
  var cancelForm = document.getElementById("cancel-form");
  var failures = 0;

  function showImages(images) {
    if (imagesEl.children.length === images.length) return;
    imagesEl.textContent = "";
    images.forEach(function (image) {
      var figure = document.createElement("figure");
      figure.className = "thumb";
      var link = document.createElement("a");
      link.href = pageTemplate.replace("IMAGE_ID", image.id);
      var img = document.createElement("img");
      img.src = image.png_url;
      img.width = image.width;
      img.height = image.height;
      img.alt = "Image " + (image.index + 1) + " of job " + jobShort + ": " + conditionText + ", seed " + image.seed;
      link.appendChild(img);
      figure.appendChild(link);
      var caption = document.createElement("figcaption");
      caption.textContent = conditionText + " \u00b7 seed " + image.seed;
      figure.appendChild(caption);
      imagesEl.appendChild(figure);
    });
    if (pendingEl) pendingEl.hidden = true;
  }

  function render(job) {
    var percent = Math.round(100 * (job.status === "succeeded" ? 1 : job.progress || 0));
    statusEl.textContent = job.status;
    statusEl.className = "status status-" + job.status;
    progressEl.value = percent;
    progressEl.textContent = percent + "%";
    percentEl.textContent = percent + "%";
    root.setAttribute("data-status", job.status);
    errorEl.textContent = job.error || "";
    errorEl.hidden = !job.error;
    if (job.status === "succeeded") showImages(job.images);
    if (FINAL.indexOf(job.status) >= 0) {
      if (cancelForm) cancelForm.hidden = true;
      if (pendingEl && job.status !== "succeeded") pendingEl.textContent = "This job produced no images.";
    }
  }

  function poll() {
    fetch(apiUrl, { headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (job) {
        failures = 0;
        noteEl.hidden = true;
        render(job);
        if (FINAL.indexOf(job.status) < 0) setTimeout(poll, 500);
      })
      .catch(function (error) {
        failures += 1;
        noteEl.hidden = false;
        noteEl.textContent = "Could not reach the server (" + error.message + "); retrying\u2026";
        setTimeout(poll, Math.min(10000, 500 * Math.pow(2, failures)));
      });
  }

  if (FINAL.indexOf(root.getAttribute("data-status")) < 0) poll();
})();
