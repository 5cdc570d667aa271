// The live serial console: xterm.js on a WebSocket to
// /ws/appliances/<id>/console. Binary frames carry the terminal's bytes both
// ways; the server's one text frame says it is attached, and a close code
// says why it ended (see appliances/consumers.py).
(function () {
  "use strict";

  // The server refuses larger input frames; a paste is sent in pieces.
  const INPUT_FRAME_MAX = 4096;
  // Close codes after which connecting again cannot help by itself.
  const FINAL = new Set([4401, 4404]);

  const container = document.getElementById("terminal");
  const stateLine = document.querySelector("[data-testid=console-state]");
  const reconnectButton = document.getElementById("console-reconnect");
  const name = container.dataset.name;

  const term = new Terminal({
    cursorBlink: true,
    scrollback: 5000,
    fontFamily: "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace",
    fontSize: 14,
  });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(container);
  fit.fit();
  window.addEventListener("resize", () => fit.fit());

  const encoder = new TextEncoder();
  let socket = null;

  function show(state, text) {
    stateLine.dataset.state = state;
    stateLine.textContent = text;
    reconnectButton.hidden = state !== "ended";
  }

  function send(bytes) {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    for (let start = 0; start < bytes.length; start += INPUT_FRAME_MAX) {
      socket.send(bytes.subarray(start, start + INPUT_FRAME_MAX));
    }
  }

  term.onData((text) => send(encoder.encode(text)));
  // Raw bytes (some mouse reports): one byte per character.
  term.onBinary((text) => send(Uint8Array.from(text, (ch) => ch.charCodeAt(0) & 0xff)));

  function connect() {
    show("connecting", "Connecting…");
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + window.location.host + container.dataset.socket);
    socket.binaryType = "arraybuffer";
    socket.addEventListener("message", (event) => {
      if (typeof event.data === "string") {
        const message = JSON.parse(event.data);
        if (message.kind === "attached") {
          show("attached", "Connected to the serial console of “" + name + "”.");
          term.focus();
        }
        return;
      }
      term.write(new Uint8Array(event.data));
    });
    socket.addEventListener("close", (event) => {
      socket = null;
      let text;
      if (event.code === 4401) text = "You are signed out: sign in again to use the console.";
      else if (event.reason) text = event.reason;
      else text = "The connection was lost.";
      show(FINAL.has(event.code) ? "closed" : "ended", text);
    });
  }

  reconnectButton.addEventListener("click", connect);
  connect();
})();
