// Console conventions shared by every page: destructive forms name their
// object and ask first (data-confirm), and one-time secrets have copy buttons
// (data-copy="<id of the element holding the secret>"). No inline handlers:
// the Content-Security-Policy allows no inline script.
(function () {
  "use strict";

  // A page that shows a one-time secret is the answer to a form post; make
  // its history entry a plain GET, so a reload neither posts the form again
  // nor brings the secret back.
  if (document.querySelector("[data-one-time-secret]")) {
    window.history.replaceState(null, "", window.location.href);
  }

  document.addEventListener("submit", (e) => {
    const form = e.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      e.preventDefault();
      e.stopImmediatePropagation();
    }
  }, true);

  document.addEventListener("click", async (e) => {
    const button = e.target.closest && e.target.closest("[data-copy]");
    if (!button) return;
    const source = document.getElementById(button.dataset.copy);
    if (!source) return;
    const text = source.value !== undefined ? source.value : source.textContent;
    try {
      await navigator.clipboard.writeText(text.trim());
      button.textContent = "Copied";
    } catch (err) {
      // No clipboard permission (e.g. plain http on another host): select it for Ctrl-C.
      const range = document.createRange();
      range.selectNodeContents(source);
      window.getSelection().removeAllRanges();
      window.getSelection().addRange(range);
      button.textContent = "Selected: press Ctrl-C";
    }
  });
  // --- What the console's cards share ------------------------------------------------

  // A JSON call from a card. DRF's error shape, {"field": ["message"], "code": ...}
  // or {"detail": ..., "code": ...}, becomes an Error whose `fields` map each
  // field to its message.
  async function api(url, method, body) {
    const resp = await fetch(url, {
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

  // A card's feedback line: <prefix>-status for what happened, <prefix>-error for what did not.
  function say(prefix, level, message) {
    const status = document.getElementById(prefix + "-status");
    const error = document.getElementById(prefix + "-error");
    status.hidden = level !== "ok";
    error.hidden = level !== "error";
    (level === "ok" ? status : error).textContent = message;
  }

  // Field errors stand next to their field ([data-error-for=<name>]); the
  // first gets the focus. False when none of `fields` has a place in the form.
  function showFieldErrors(form, fields) {
    let shown = false;
    Object.entries(fields || {}).forEach(([field, message]) => {
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

  function clearFieldError(form, field) {
    const slot = form.querySelector('[data-error-for="' + field + '"]');
    if (slot) slot.hidden = true;
    const input = form.elements[field];
    if (input) input.removeAttribute("aria-invalid");
  }

  window.InfraSimConsole = { api: api, say: say, showFieldErrors: showFieldErrors, clearFieldError: clearFieldError };
})();
