// The console's Forensics card: start a memory capture and co-sign its
// attestation with a passkey, through /api/forensics/. The card re-renders on
// every forensics-acquisition event, so progress is live.
(function () {
  "use strict";

  const API = "/api/forensics/acquisitions";

  const shared = window.InfraSimConsole;

  function api(method, path, body) {
    return shared.api(API + path, method, body);
  }

  function say(level, message) {
    shared.say("forensics", level, message);
  }

  function refreshCard() {
    return htmx.ajax("GET", "/forensics/card", { target: "#forensics-slot", swap: "innerHTML" });
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
      if (!shared.showFieldErrors(form, err.fields)) say("error", err.message);
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
    shared.clearFieldError(form, event.target.name);
  });

  document.addEventListener("click", (event) => {
    const button = event.target.closest("#forensics-card [data-action=cosign]");
    if (!button) return;
    button.disabled = true;
    cosign(button.dataset.acquisitionId).finally(() => (button.disabled = false));
  });
})();
