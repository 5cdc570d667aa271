// The console's Mesh card: create and rotate peers through the JSON API.
// By default the key pair is made here with WebCrypto X25519, so only the
// public key is sent and the private key never leaves the browser; the
// config is then completed locally and shown once.
(function () {
  "use strict";

  const API = "/api/meshnet/mesh/";

  function b64(bytes) {
    let bin = "";
    new Uint8Array(bytes).forEach((b) => (bin += String.fromCharCode(b)));
    return btoa(bin);
  }

  async function browserKeyPair() {
    const pair = await crypto.subtle.generateKey({ name: "X25519" }, true, ["deriveBits"]);
    const pkcs8 = new Uint8Array(await crypto.subtle.exportKey("pkcs8", pair.privateKey));
    const raw = await crypto.subtle.exportKey("raw", pair.publicKey);
    // The raw private key is the last 32 bytes of the PKCS#8 document.
    return { privateKey: b64(pkcs8.slice(pkcs8.length - 32)), publicKey: b64(raw) };
  }

  async function canMakeKeys() {
    try {
      await crypto.subtle.generateKey({ name: "X25519" }, true, ["deriveBits"]);
      return true;
    } catch (err) {
      return false;
    }
  }

  async function api(method, path, body) {
    const resp = await fetch(API + path, {
      method: method,
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": document.body.dataset.csrf },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!resp.ok) {
      const data = await resp.json().catch(() => ({}));
      const fields = Object.entries(data).filter(([k]) => k !== "code" && k !== "detail");
      throw new Error(data.detail || (fields.length ? fields[0][0] + ": " + fields[0][1] : resp.statusText));
    }
    return resp.headers.get("Content-Type").startsWith("application/json") ? resp.json() : resp.text();
  }

  function withPrivateKey(config, privateKey) {
    return config.replace(/^# PrivateKey = .*$/m, "PrivateKey = " + privateKey);
  }

  // The one-time secret of the last create or rotate: {peerId, title, config, qr}.
  // The card is re-rendered by every live refresh, so it is kept here and put
  // back under its peer's row after each swap; the next action or a reload
  // drops it.
  let secret = null;

  function placeSecret() {
    document.querySelectorAll("#mesh-card .secret-row").forEach((row) => {
      if (!secret || row.dataset.secretOf !== String(secret.peerId)) row.remove();
    });
    if (!secret) return;
    const peerRow = document.querySelector('#mesh-card tr[data-peer-id="' + secret.peerId + '"]');
    const template = document.getElementById("peer-secret-template");
    if (!peerRow || !template || document.querySelector("#mesh-card .secret-row")) return;
    const row = template.content.firstElementChild.cloneNode(true);
    row.dataset.secretOf = String(secret.peerId);
    row.querySelector("[data-slot=title]").textContent = secret.title;
    row.querySelector("textarea").value = secret.config;
    const link = row.querySelector("a");
    link.download = peerRow.dataset.filename;
    link.href = "data:text/plain;charset=utf-8," + encodeURIComponent(secret.config);
    // Only a config that carries its private key is worth scanning.
    const img = row.querySelector("img");
    img.hidden = !secret.qr;
    if (secret.qr) img.src = secret.qr;
    peerRow.after(row);
  }

  function say(level, message) {
    window.InfraSimConsole.say("mesh", level, message);
  }

  // A new action starts: what the previous one showed, its secret included, goes.
  function startAction() {
    secret = null;
    placeSecret();
    document.getElementById("mesh-status").hidden = true;
    document.getElementById("mesh-error").hidden = true;
  }

  function showError(err) {
    say("error", err.message || String(err));
  }

  // The events socket also refreshes the card; this covers a page whose
  // socket is reconnecting.
  function refreshCard() {
    return htmx.ajax("GET", "/mesh/card", { target: "#mesh-slot", swap: "innerHTML" }).then(placeSecret);
  }

  async function createPeer(form) {
    startAction();
    const mode = form.elements.key_mode.value;
    const body = { name: form.elements.name.value, preshared_key: form.elements.preshared_key.checked };
    if (form.elements.expires_at.value) body.expires_at = new Date(form.elements.expires_at.value).toISOString();
    let keys = null;
    if (mode === "browser" && (await canMakeKeys())) {
      keys = await browserKeyPair();
      body.public_key = keys.publicKey;
    } else if (mode === "own") {
      body.public_key = form.elements.public_key.value.trim();
    } else {
      body.generate_key = true;
    }
    const peer = await api("POST", "peers", body);
    const title = "The config of “" + peer.name + "”, with its private key.";
    if (peer.config) {
      secret = { peerId: peer.id, title: title, config: peer.config, qr: peer.qr };
    } else if (keys) {
      const config = withPrivateKey(await api("GET", "peers/" + peer.id + "/config"), keys.privateKey);
      secret = { peerId: peer.id, title: title, config: config, qr: null };
    }
    form.reset();
    say("ok", "Peer “" + peer.name + "” created: " + peer.ipv4 + ", " + peer.ipv6 + "." +
      (secret ? "" : " Download its config and put your private key in it."));
    await refreshCard();
  }

  async function rotatePeer(button) {
    startAction();
    const body = {};
    const keys = (await canMakeKeys()) ? await browserKeyPair() : null;
    if (keys) body.public_key = keys.publicKey;
    else body.generate_key = true;
    const peer = await api("POST", "peers/" + button.dataset.rotate + "/rotate", body);
    const config = peer.config || withPrivateKey(await api("GET", "peers/" + peer.id + "/config"), keys.privateKey);
    secret = { peerId: peer.id, title: "The new config of “" + peer.name + "”, with its private key.", config: config, qr: peer.qr };
    say("ok", "Peer “" + peer.name + "” has a new key (#" + peer.key_epoch + "); its old key no longer works.");
    await refreshCard();
  }

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (!form.closest || !form.closest("#mesh-card")) return;
    if (form.id !== "add-peer-form") {
      startAction(); // a revoke: the server names the outcome in a mesh-notice event
      return;
    }
    event.preventDefault();
    createPeer(form).catch(showError);
  });

  document.addEventListener("click", (event) => {
    const button = event.target.closest("[data-rotate]");
    if (!button) return;
    if (!window.confirm("Rotate the key of the peer “" + button.dataset.name + "”? Its old key stops working at once.")) return;
    rotatePeer(button).catch(showError);
  });

  document.addEventListener("mesh-notice", (event) => say(event.detail.level, event.detail.message));

  // The form's button is served disabled; it works once this script handles it.
  function armForms() {
    document.querySelectorAll("#mesh-card [data-until-script]").forEach((button) => (button.disabled = false));
  }
  armForms();

  document.addEventListener("htmx:afterSwap", (event) => {
    if (event.detail.target && event.detail.target.id === "mesh-slot") {
      placeSecret();
      armForms();
    }
  });

  // Events sent while the socket was down are lost: catch up once it is back.
  let wasDisconnected = false;
  new MutationObserver(() => {
    const state = document.body.dataset.events;
    if (state === "disconnected") wasDisconnected = true;
    else if (state === "connected" && wasDisconnected && document.getElementById("mesh-slot")) {
      wasDisconnected = false;
      refreshCard();
    }
  }).observe(document.body, { attributes: true, attributeFilter: ["data-events"] });
})();
