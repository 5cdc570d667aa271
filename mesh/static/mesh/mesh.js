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

  function showSecret(config, qrDataUri) {
    const box = document.getElementById("peer-secret");
    box.querySelector("textarea").value = config;
    const link = box.querySelector("a");
    link.href = "data:text/plain;charset=utf-8," + encodeURIComponent(config);
    const img = box.querySelector("img");
    img.hidden = !qrDataUri;
    if (qrDataUri) img.src = qrDataUri;
    box.hidden = false;
  }

  function showError(err) {
    const box = document.getElementById("mesh-error");
    box.textContent = err.message || String(err);
    box.hidden = false;
  }

  // The events socket also refreshes the card; this covers a page whose
  // socket is reconnecting.
  function refreshCard() {
    return htmx.ajax("GET", "/mesh/card", { target: "#mesh-slot", swap: "innerHTML" });
  }

  async function createPeer(form) {
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
    if (peer.config) {
      showSecret(peer.config, peer.qr);
    } else if (keys) {
      const config = withPrivateKey(await api("GET", "peers/" + peer.id + "/config"), keys.privateKey);
      showSecret(config, null);
    }
    await refreshCard();
  }

  async function rotatePeer(button) {
    const body = {};
    const keys = (await canMakeKeys()) ? await browserKeyPair() : null;
    if (keys) body.public_key = keys.publicKey;
    else body.generate_key = true;
    const peer = await api("POST", "peers/" + button.dataset.rotate + "/rotate", body);
    const config = peer.config || withPrivateKey(await api("GET", "peers/" + peer.id + "/config"), keys.privateKey);
    showSecret(config, peer.qr);
    await refreshCard();
  }

  document.addEventListener("submit", (event) => {
    if (event.target.id !== "add-peer-form") return;
    event.preventDefault();
    createPeer(event.target).catch(showError);
  });

  document.addEventListener("click", (event) => {
    const button = event.target.closest("[data-rotate]");
    if (!button) return;
    if (!window.confirm("Rotate the key of " + button.dataset.name + "? The old key stops working at once.")) return;
    rotatePeer(button).catch(showError);
  });
})();
