// Passkey ceremonies for the console pages: sign-up, sign-in (autofill and
// button), operator enrollment and adding a passkey. The server speaks the
// WebAuthn Level 3 JSON forms; older browsers get a small manual conversion.
(function () {
  "use strict";

  const API = "/api/meshnet/";

  function b64urlToBuf(value) {
    const pad = "=".repeat((4 - (value.length % 4)) % 4);
    const bin = atob((value + pad).replace(/-/g, "+").replace(/_/g, "/"));
    return Uint8Array.from(bin, (c) => c.charCodeAt(0)).buffer;
  }

  function bufToB64url(buf) {
    let bin = "";
    new Uint8Array(buf).forEach((b) => (bin += String.fromCharCode(b)));
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function creationOptions(json) {
    if (window.PublicKeyCredential && PublicKeyCredential.parseCreationOptionsFromJSON) {
      return PublicKeyCredential.parseCreationOptionsFromJSON(json);
    }
    return Object.assign({}, json, {
      challenge: b64urlToBuf(json.challenge),
      user: Object.assign({}, json.user, { id: b64urlToBuf(json.user.id) }),
      excludeCredentials: (json.excludeCredentials || []).map((c) => Object.assign({}, c, { id: b64urlToBuf(c.id) })),
    });
  }

  function requestOptions(json) {
    if (window.PublicKeyCredential && PublicKeyCredential.parseRequestOptionsFromJSON) {
      return PublicKeyCredential.parseRequestOptionsFromJSON(json);
    }
    return Object.assign({}, json, {
      challenge: b64urlToBuf(json.challenge),
      allowCredentials: (json.allowCredentials || []).map((c) => Object.assign({}, c, { id: b64urlToBuf(c.id) })),
    });
  }

  function credentialJSON(cred) {
    if (typeof cred.toJSON === "function") return cred.toJSON();
    const r = cred.response;
    const response = { clientDataJSON: bufToB64url(r.clientDataJSON) };
    if (r.attestationObject) {
      response.attestationObject = bufToB64url(r.attestationObject);
      response.transports = r.getTransports ? r.getTransports() : [];
    } else {
      response.authenticatorData = bufToB64url(r.authenticatorData);
      response.signature = bufToB64url(r.signature);
      response.userHandle = r.userHandle ? bufToB64url(r.userHandle) : null;
    }
    return {
      id: cred.id, rawId: bufToB64url(cred.rawId), type: cred.type, response: response,
      authenticatorAttachment: cred.authenticatorAttachment || null,
      clientExtensionResults: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
    };
  }

  // Other cards ask for assertions of their own (forensics' co-signature).
  window.InfraSimPasskeys = { requestOptions: requestOptions, credentialJSON: credentialJSON };

  async function post(path, body, signal) {
    const resp = await fetch(API + path, {
      method: "POST",
      credentials: "same-origin",
      signal: signal,
      headers: { "Content-Type": "application/json", "X-CSRFToken": document.body.dataset.csrf },
      body: JSON.stringify(body || {}),
    });
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      const fieldErrors = Object.entries(data).filter(([k]) => k !== "code" && k !== "detail");
      const message = data.detail || (fieldErrors.length ? fieldErrors[0][0] + ": " + fieldErrors[0][1] : resp.statusText);
      const error = new Error(message);
      error.code = data.code;
      throw error;
    }
    return data;
  }

  function showError(err) {
    const box = document.getElementById("passkey-error");
    if (!box) return;
    let text;
    if (err && err.name === "NotAllowedError") {
      text = "The passkey request was cancelled or not allowed.";
    } else if (err && err.name === "InvalidStateError") {
      // excludeCredentials matched: this authenticator already holds one of
      // the account's passkeys.
      text = "This device already holds a passkey for your account. Use another device or security key.";
    } else {
      text = (err && err.message) || String(err);
    }
    box.textContent = text;
    box.hidden = false;
  }

  async function register(body, passkeyName) {
    const options = await post("auth/register/options", body);
    const cred = await navigator.credentials.create({ publicKey: creationOptions(options) });
    const payload = credentialJSON(cred);
    if (passkeyName) payload.passkey_name = passkeyName;
    return post("auth/register/verify", payload);
  }

  let conditional = null;

  async function signIn(mediation) {
    // The autofill request is cancellable from its start, so that a click on
    // the button while its options are still loading cancels it too.
    const controller = mediation === "conditional" ? (conditional = new AbortController()) : null;
    const options = await post("auth/login/options", {}, controller && controller.signal);
    const request = { publicKey: requestOptions(options) };
    if (controller) {
      controller.signal.throwIfAborted();
      request.mediation = "conditional";
      request.signal = controller.signal;
    }
    const cred = await navigator.credentials.get(request);
    try {
      await post("auth/login/verify", credentialJSON(cred));
    } catch (err) {
      // The server no longer knows this passkey (it was deleted): tell the
      // browser, so that it stops offering it (WebAuthn Level 3 signal API).
      if (err.code === "credential_not_found" && PublicKeyCredential.signalUnknownCredential) {
        PublicKeyCredential.signalUnknownCredential({ rpId: options.rpId, credentialId: cred.id }).catch(() => {});
      }
      throw err;
    }
    const form = document.getElementById("signin-form");
    window.location.assign((form && form.dataset.next) || "/");
  }

  async function startAutofill() {
    if (!window.PublicKeyCredential || !PublicKeyCredential.isConditionalMediationAvailable) return;
    if (!(await PublicKeyCredential.isConditionalMediationAvailable())) return;
    // A background autofill request that ends without the user picking a
    // passkey (aborted, or nothing left to offer) is not an error to show.
    signIn("conditional").catch((err) => {
      if (err.name !== "AbortError" && err.name !== "NotAllowedError") showError(err);
    });
  }

  // One ceremony at a time per control: a double click must not start a
  // second request while the first one waits for the authenticator.
  function on(id, event, handler) {
    const el = document.getElementById(id);
    if (!el) return el;
    let busy = false;
    el.addEventListener(event, (e) => {
      e.preventDefault();
      if (busy) return;
      busy = true;
      const box = document.getElementById("passkey-error");
      if (box) box.hidden = true;
      handler(el).catch(showError).finally(() => { busy = false; });
    });
    return el;
  }

  document.addEventListener("DOMContentLoaded", () => {
    // Enter in the sign-in form's autofill field must not post the page.
    const signinForm = document.getElementById("signin-form");
    if (signinForm) signinForm.addEventListener("submit", (e) => e.preventDefault());

    if (on("signin-button", "click", async () => {
      if (conditional) conditional.abort();
      conditional = null;
      try {
        await signIn("button");
      } catch (err) {
        // Offer the autofill again: the click cancelled it.
        startAutofill();
        throw err;
      }
    })) startAutofill();

    on("signup-form", "submit", async (form) => {
      await register({ display_name: form.elements.display_name.value }, "First passkey");
      window.location.assign("/");
    });

    on("enroll-button", "click", async (button) => {
      await register({ enrollment_token: button.dataset.token }, "Operator passkey");
      window.location.assign("/admin/");
    });

    // Sudo mode: prove the passkey again before adding or deleting passkeys
    // and creating tokens (the server asks for a check within 10 minutes).
    on("recheck-button", "click", async () => {
      const options = await post("auth/login/options", {});
      const cred = await navigator.credentials.get({ publicKey: requestOptions(options) });
      await post("auth/login/verify", credentialJSON(cred));
      // A fresh GET, not reload(): the page may be the answer to a form post
      // (the refused "create token"), which a reload would send again.
      window.location.assign(window.location.pathname);
    });

    on("add-passkey-form", "submit", async (form) => {
      await register({}, form.elements.passkey_name.value);
      window.location.reload();
    });
  });
})();
