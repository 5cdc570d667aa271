// The console's Forensics card: start a memory capture and co-sign its
// attestation with a passkey, through /api/forensics/. The card re-renders on
// every forensics-acquisition event, so progress is live.
(function () {
  "use strict";

  const API = "/api/forensics/acquisitions";

  async function api(method, path, body) {
    const resp = await fetch(API + path, {
      method: method,
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": document.body.dataset.csrf },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      const fields = {};
      Object.entries(data).forEach(([key, value]) => {
        if (key !== "code" && key !== "detail") fields[key] = Array.isArray(value) ? value.join(" ") : String(value);
      });
      const error = new Error(data.detail || Object.values(fields)[0] || resp.status + " " + resp.statusText);
      error.fields = fields;
      throw error;
    }
    return data;
  }

  function say(level, message) {
    const status = document.getElementById("forensics-status");
    const error = document.getElementById("forensics-error");
    status.hidden = level !== "ok";
    error.hidden = level !== "error";
    (level === "ok" ? status : error).textContent = message;
  }

  function refreshCard() {
    return htmx.ajax("GET", "/forensics/card", { target: "#forensics-slot", swap: "innerHTML" });
  }

  function showFieldErrors(form, fields) {
    let shown = false;
    Object.entries(fields).forEach(([field, message]) => {
      const slot = form.querySelector('[data-error-for="' + field + '"]');
      if (!slot) return;
      slot.textContent = message;
      slot.hidden = false;
      if (form.elements[field]) form.elements[field].setAttribute("aria-invalid", "true");
      if (!shown) (form.elements[field] || slot).focus();
      shown = true;
    });
    return shown;
  }

  async function capture(form) {
    form.querySelectorAll("[data-error-for]").forEach((slot) => (slot.hidden = true));
    const body = Object.fromEntries(new FormData(form).entries());
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const acquisition = await api("POST", "", body);
      say("ok", "Capturing the memory of the appliance for case “" + acquisition.case_ref + "”: follow it below.");
      form.reset();
      await refreshCard();
    } catch (err) {
      if (!showFieldErrors(form, err.fields || {})) say("error", err.message);
    } finally {
      button.disabled = false;
    }
  }

  async function cosign(id) {
    try {
      const options = await api("GET", "/" + id + "/cosign");
      const credential = await navigator.credentials.get({ publicKey: window.InfraSimPasskeys.requestOptions(options) });
      await api("POST", "/" + id + "/cosign", { credential: window.InfraSimPasskeys.credentialJSON(credential) });
      say("ok", "Co-signed: the bundle now carries your passkey's signature over this attestation.");
      await refreshCard();
    } catch (err) {
      say("error", err.name === "NotAllowedError" ? "The passkey prompt was cancelled; nothing was signed." : err.message);
    }
  }

  document.addEventListener("submit", (event) => {
    if (event.target.id !== "capture-form") return;
    event.preventDefault();
    capture(event.target);
  });

  document.addEventListener("input", (event) => {
    const form = event.target.form;
    if (!form || form.id !== "capture-form") return;
    const slot = form.querySelector('[data-error-for="' + event.target.name + '"]');
    if (slot) slot.hidden = true;
    event.target.removeAttribute("aria-invalid");
  });

  document.addEventListener("click", (event) => {
    const button = event.target.closest("#forensics-card [data-action=cosign]");
    if (!button) return;
    button.disabled = true;
    cosign(button.dataset.acquisitionId).finally(() => (button.disabled = false));
  });
})();
