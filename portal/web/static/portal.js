// graylane portal: live updates over server-sent events. The server sends, for each change, the
// regions of the page whose HTML changed; a region that holds the keyboard focus (an operator typing
// a weight) is updated once the focus leaves it.
(function () {
  "use strict";
  var body = document.body;
  if (!body.dataset.version) return;
  var pending = {};
  var updates = 0;
  function apply(name, html) {
    var el = document.getElementById("region-" + name);
    if (!el) return;
    // Keep a region whose form the operator is using (typing a weight, pressing its button) until
    // the focus leaves it: replacing it would swallow the keystroke or the click.
    if (el.contains(document.activeElement) && document.activeElement !== el &&
        /^(INPUT|TEXTAREA|SELECT|BUTTON)$/.test(document.activeElement.tagName)) {
      pending[name] = html;
      return;
    }
    delete pending[name];
    el.innerHTML = html;
  }
  document.addEventListener("focusout", function () {
    setTimeout(function () {
      Object.keys(pending).forEach(function (k) { apply(k, pending[k]); });
    }, 0);
  });
  function setConn(ok) {
    var c = document.getElementById("region-conn");
    if (c) c.classList.toggle("reconnecting", !ok);
  }
  var url = "/events?service=" + encodeURIComponent(body.dataset.service || "") + "&since=" + body.dataset.version;
  if (body.dataset.segment) url += "&segment=" + encodeURIComponent(body.dataset.segment);
  else if (body.dataset.view === "segments") url += "&view=segments";
  var es = new EventSource(url);
  es.addEventListener("update", function (ev) {
    var u = JSON.parse(ev.data);
    ["nav", "main", "history", "conn", "refused"].forEach(function (k) {
      if (typeof u[k] === "string") apply(k, u[k]);
    });
    updates++;
    body.dataset.updates = String(updates);
    window.graylaneLastUpdate = Date.now();
    setConn(true);
  });
  es.addEventListener("signedout", function () {
    es.close();
    window.location.assign("/login");
  });
  es.onopen = function () { setConn(true); };
  es.onerror = function () {
    setConn(false);
    // The browser retries by itself, unless the portal refused the stream (a restart signed
    // everyone out): then load the page again, which leads to the sign-in.
    if (es.readyState === EventSource.CLOSED) setTimeout(function () { window.location.reload(); }, 3000);
  };
  window.addEventListener("pagehide", function () { es.close(); });

  // Countdowns (the next rollout step) tick between updates.
  setInterval(function () {
    document.querySelectorAll("[data-until]").forEach(function (el) {
      var s = Math.max(0, Math.round((Number(el.dataset.until) - Date.now()) / 1000));
      var m = Math.floor(s / 60);
      el.textContent = (m > 0 ? m + "m" : "") + (s % 60) + "s";
    });
  }, 1000);
})();
