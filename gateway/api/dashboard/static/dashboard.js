// Live updates: the page listens to the gateway's events and, after each burst, fetches itself again and
// swaps in the parts marked data-live (forms being typed in are never replaced). No framework, no build step.
(function () {
  "use strict";
  var source = document.body.getAttribute("data-live-source");
  if (!source || !window.EventSource) { return; }
  var badge = document.getElementById("live-state");
  var pending = null, busy = false, again = false, last = 0;

  function mark(on) {
    if (!badge) { return; }
    badge.textContent = badge.getAttribute(on ? "data-on" : "data-off");
    badge.classList.toggle("on", on);
  }

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    last = Date.now();
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Dashboard-Refresh": "1" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live][id]").forEach(function (old) {
          var next = fresh.getElementById(old.id);
          if (next && next.innerHTML !== old.innerHTML) {
            old.innerHTML = next.innerHTML;
            old.classList.remove("updated"); void old.offsetWidth; old.classList.add("updated");
          }
        });
        document.body.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () { /* the next event tries again */ })
      .finally(function () { busy = false; if (again) { again = false; soon(); } });
  }

  function soon() {
    if (pending) { return; }
    // a burst of events makes one refresh; at most one a second (a busy fleet sends many readings)
    var wait = Math.max(300, 1000 - (Date.now() - last));
    pending = setTimeout(function () { pending = null; refresh(); }, wait);
  }

  var events = new EventSource(source);
  events.onopen = function () { mark(true); };
  events.onerror = function () { mark(false); };
  events.onmessage = soon;  // every change: {"type", "topic"}
})();
