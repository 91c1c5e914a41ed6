// compose-reconciler dashboard: follow /ui/stream and redraw the sections that changed.
// Without JavaScript the page still reads (and "Reload" brings it up to date).
"use strict";
(function () {
  var live = document.getElementById("live");
  var status = document.getElementById("live-status");
  if (!live || !window.EventSource || !window.fetch) { return; }

  function say(text) { if (status) { status.textContent = text; } }

  function redraw(version) {
    return fetch("/ui/live", { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (r.status === 401) { window.location.assign("/ui/login"); throw new Error("signed out"); }
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(function (html) {
        var fresh = document.createElement("div");
        fresh.innerHTML = html;  // the server's own escaped template output
        fresh.querySelectorAll("section[id]").forEach(function (section) {
          var old = document.getElementById(section.id);
          // Only sections that changed: keyboard focus inside the others stays put.
          if (old && old.innerHTML !== section.innerHTML) { old.replaceWith(section); }
        });
        live.setAttribute("data-version", version);
        say("Live: updated " + new Date().toLocaleTimeString() + ".");
      })
      .catch(function (e) { say("Live updates paused (" + e.message + "); Reload shows the latest."); });
  }

  var source = new EventSource("/ui/stream?since=" + encodeURIComponent(live.getAttribute("data-version") || ""));
  source.addEventListener("open", function () { say("Live: following changes."); });
  source.addEventListener("update", function (e) { redraw(e.data); });
  source.addEventListener("error", function () { say("Live updates reconnecting…"); });
})();
