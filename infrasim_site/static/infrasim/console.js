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
})();
