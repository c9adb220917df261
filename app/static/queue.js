// The admin's queue page: reload every 10 s while the tab is visible (no inline script: the site's CSP).
(function () {
  "use strict";
  var note = document.getElementById("auto-refresh-note");
  if (note) { note.hidden = false; }
  setInterval(function () {
    if (document.visibilityState === "visible") { window.location.reload(); }
  }, 10000);
})();
