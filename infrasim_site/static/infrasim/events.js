// Live status: one WebSocket per page to /ws/events/. Each message becomes a
// DOM event ("identity-changed", ...) that htmx cards listen for to refresh.
(function () {
  "use strict";
  let delay = 1000;

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + window.location.host + "/ws/events/");
    socket.addEventListener("open", () => { delay = 1000; document.body.dataset.events = "connected"; });
    socket.addEventListener("message", (msg) => {
      const event = JSON.parse(msg.data);
      document.body.dispatchEvent(new CustomEvent(event.kind.replace(/\./g, "-"), { detail: event.data }));
    });
    socket.addEventListener("close", (e) => {
      // Signed out: nothing to reconnect to, so no "reconnecting" indicator.
      if (e.code === 4401) { document.body.dataset.events = "signed-out"; return; }
      document.body.dataset.events = "disconnected";
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    });
  }

  document.addEventListener("DOMContentLoaded", connect);
})();
