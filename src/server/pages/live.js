(function () {
  "use strict";
  // Keeps the page current without a full reload: fetches this same URL (same origin, same
  // credentials) and swaps <main id="live">. The server rendered and escaped everything; the
  // new document is parsed inertly (DOMParser runs no script) and only its <main> is moved in.
  var root = document.documentElement;
  var note = document.getElementById("live-note");
  var period = 5000;
  var delay = period;
  var last = null;
  var swaps = 0;
  function poll() {
    if (document.hidden) {
      setTimeout(poll, period);
      return;
    }
    fetch(location.pathname + location.search, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { "X-Driftless-Live": "1" }
    })
      .then(function (r) {
        if (!r.ok) {
          throw new Error("HTTP " + r.status);
        }
        return r.text();
      })
      .then(function (text) {
        if (text !== last) {
          var doc = new DOMParser().parseFromString(text, "text/html");
          var fresh = doc.getElementById("live");
          var current = document.getElementById("live");
          if (fresh && current) {
            var open = [];
            current.querySelectorAll("details[open][id]").forEach(function (d) {
              open.push(d.id);
            });
            current.replaceWith(document.adoptNode(fresh));
            open.forEach(function (id) {
              var d = document.getElementById(id);
              if (d) {
                d.open = true;
              }
            });
            document.title = doc.title;
            swaps += 1;
            root.setAttribute("data-live-swaps", String(swaps));
          }
          last = text;
        }
        root.setAttribute("data-live", "ok");
        if (note) {
          note.textContent = "live: updated " + new Date().toLocaleTimeString();
        }
        delay = period;
      })
      .catch(function (e) {
        root.setAttribute("data-live", "error");
        if (note) {
          note.textContent = "live: " + e.message + ", retrying";
        }
        delay = Math.min(delay * 2, 60000);
      })
      .then(function () {
        setTimeout(poll, delay);
      });
  }
  if (note) {
    note.textContent = "live: on";
  }
  setTimeout(poll, period);
})();
