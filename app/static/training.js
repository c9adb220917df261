// The training run page: poll the run's JSON every second while it is active; update step, losses,
// elapsed/remaining time (from the measured step rate), the evaluation's stage and progress, then its metrics
// table, and the latest sample grid, and redraw the loss plot (an SVG polyline per loss, each scaled to its
// own range, since the losses of one backend differ by orders of magnitude).
(function () {
  "use strict";
  var root = document.getElementById("training");
  if (!root) return;
  var FINAL = ["succeeded", "failed", "canceled"];
  var COLOURS = ["#0550ae", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#0a3069", "#6e7781", "#bf3989"];
  var apiUrl = root.getAttribute("data-api-url");
  var svg = document.getElementById("loss-plot");
  var SVG_NS = "http://www.w3.org/2000/svg";
  var shownSample = null;
  var failures = 0;

  function text(id, value) {
    var el = document.getElementById(id);
    if (el) el.textContent = value;
  }

  function seconds(value) {
    if (value === null || value === undefined) return "\u2013";
    if (value < 120) return value.toFixed(1) + " s";
    return Math.floor(value / 60) + " min " + Math.round(value % 60) + " s";
  }

  function drawPlot(history) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    if (!history.length) return;
    var keys = Object.keys(history[0]).filter(function (k) {
      return ["step", "epoch", "elapsed"].indexOf(k) < 0 && typeof history[0][k] === "number";
    });
    var W = 640, H = 260, pad = 24;
    var steps = history.map(function (r) { return r.step; });
    var s0 = steps[0], s1 = Math.max(steps[steps.length - 1], s0 + 1);
    var legend = [];
    keys.forEach(function (key, i) {
      var values = history.map(function (r) { return r[key]; }).filter(function (v) { return isFinite(v); });
      if (!values.length) return;
      var lo = Math.min.apply(null, values), hi = Math.max.apply(null, values);
      var span = hi - lo || 1;
      var points = history.filter(function (r) { return isFinite(r[key]); }).map(function (r) {
        var x = pad + (W - 2 * pad) * (r.step - s0) / (s1 - s0);
        var y = H - pad - (H - 2 * pad) * (r[key] - lo) / span;
        return x.toFixed(1) + "," + y.toFixed(1);
      });
      var line = document.createElementNS(SVG_NS, "polyline");
      line.setAttribute("points", points.join(" "));
      line.setAttribute("fill", "none");
      line.setAttribute("stroke", COLOURS[i % COLOURS.length]);
      line.setAttribute("stroke-width", "1.5");
      line.setAttribute("data-loss", key);
      svg.appendChild(line);
      legend.push([key + " " + lo.toPrecision(3) + "\u2013" + hi.toPrecision(3), COLOURS[i % COLOURS.length]]);
    });
    var axis = document.createElementNS(SVG_NS, "text");
    axis.setAttribute("x", String(pad));
    axis.setAttribute("y", String(H - 4));
    axis.setAttribute("font-size", "11");
    axis.textContent = "steps " + s0 + "\u2013" + steps[steps.length - 1];
    svg.appendChild(axis);
    var caption = document.getElementById("loss-legend");
    caption.textContent = "Losses per step, each scaled to its own range: ";
    legend.forEach(function (entry, i) {
      var swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = entry[1];
      swatch.setAttribute("aria-hidden", "true");
      caption.appendChild(swatch);
      caption.appendChild(document.createTextNode(entry[0] + (i < legend.length - 1 ? "; " : ".")));
    });
  }

  function count(n) {
    return Number(n).toLocaleString("en");
  }

  // the evaluation's stage while it runs (how far, the time left in it, the stages done), then its metrics
  function renderEvaluation(run, evp) {
    var box = document.getElementById("run-eval-progress");
    box.hidden = !evp;
    if (evp) {
      text("run-evaluation", "Evaluating now.");
      text("run-eval-stage", evp.stage + (evp.total > 1 ? ": " + count(evp.done) + " of " + count(evp.total) + " " +
        evp.unit : ""));
      document.getElementById("run-eval-bar").value = evp.fraction === null ? 0 : evp.fraction;
      text("run-eval-left", evp.stage_seconds_left === null ? "" :
        "about " + seconds(evp.stage_seconds_left) + " left in this stage");
      text("run-eval-done", evp.finished_stages.length ? "Done: " + evp.finished_stages.map(function (st) {
        return st.stage + " (" + seconds(st.seconds) + ")";
      }).join("; ") + "." : "");
    }
    var ev = run.evaluation || {};
    if (FINAL.indexOf(run.status) >= 0 && ev.state === "evaluated") {
      text("run-evaluation", "Evaluated" + (ev.evaluated_on ? " on the " + ev.evaluated_on : "") +
        "; compare it with the serving version on the version's page.");
    } else if (FINAL.indexOf(run.status) >= 0 && ev.state !== "pending") {
      text("run-evaluation", "Not evaluated: " + ev.reason + ". Promoting this version means promoting it " +
        "without evaluation figures.");
    }
    var rows = run.evaluation_table || [];
    var table = document.getElementById("run-metrics");
    if (!rows.length || table.getAttribute("data-filled") === "yes") return;
    var body = table.tBodies[0];
    while (body.firstChild) body.removeChild(body.firstChild);
    rows.forEach(function (row) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-key", row.key);
      var th = document.createElement("th");
      th.scope = "row";
      th.textContent = row.name;
      var td = document.createElement("td");
      td.textContent = row.value;
      tr.appendChild(th);
      tr.appendChild(td);
      body.appendChild(tr);
    });
    table.setAttribute("data-filled", "yes");
    table.hidden = false;
  }

  function render(run) {
    var status = document.getElementById("run-status");
    status.textContent = run.status;
    status.className = "status status-" + run.status;
    root.setAttribute("data-status", run.status);
    text("run-phase", run.phase || "");
    text("run-step", run.step);
    text("run-total", run.total_steps);
    text("run-epoch", run.epoch);
    var progress = document.getElementById("run-progress");
    progress.max = run.total_steps || 1;
    progress.value = run.step;
    text("run-elapsed", seconds(run.elapsed_seconds));
    text("run-eta", FINAL.indexOf(run.status) >= 0 ? "\u2013" : seconds(run.eta_seconds));
    var live = run.progress || {};
    var rate = live.rate, evp = live.evaluation;
    text("run-rate", rate && !evp ? "at " + Number(rate.steps_per_second).toPrecision(3) + " steps/s over the last " +
      seconds(rate.over_seconds) + " (" + rate.over_steps + " steps)" +
      (run.settings.evaluate ? ", then the evaluation" : "") : "");
    renderEvaluation(run, evp);
    text("run-attempts", run.attempts);
    text("run-losses", Object.keys(run.losses).map(function (k) {
      return k + " " + Number(run.losses[k]).toPrecision(4);
    }).join(", "));
    var error = document.getElementById("run-error");
    error.textContent = run.error || "";
    error.hidden = !run.error;
    if (run.sample_url) {
      var key = run.status + ":" + run.sample_step;
      if (key !== shownSample) {
        shownSample = key;
        var img = document.getElementById("run-sample");
        img.src = run.sample_url + "?v=" + encodeURIComponent(key);
        img.hidden = false;
        text("sample-caption", "Step " + (run.sample_step || run.step));
      }
    }
    if (run.model_version) {
      var link = document.getElementById("run-version-link");
      link.textContent = run.model_version.name + " v" + run.model_version.version;
      link.href = run.model_version.page_url;
      document.getElementById("run-version").hidden = false;
    }
    drawPlot(run.history || []);
    if (FINAL.indexOf(run.status) >= 0) {
      var cancel = document.getElementById("cancel-form");
      if (cancel) cancel.hidden = true;
      text("poll-note", "The run has ended (" + run.status + ").");
    }
  }

  function poll() {
    fetch(apiUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (run) {
        failures = 0;
        render(run);
        if (FINAL.indexOf(run.status) < 0) setTimeout(poll, 1000);
      })
      .catch(function () {
        failures += 1;
        text("poll-note", "Could not reach the server; retrying.");
        setTimeout(poll, Math.min(10000, 1000 * Math.pow(2, failures)));
      });
  }

  poll();
})();
