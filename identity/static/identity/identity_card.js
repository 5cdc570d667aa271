// The Identity card's small behaviours. Delegated from the document because
// htmx swaps the card; no inline handlers (the CSP allows no inline script).
(function () {
  "use strict";

  // A server error belongs to the value that was submitted: once the user
  // edits the field it no longer describes what is there, and the
  // as-you-type check below the field takes over.
  document.addEventListener("input", (e) => {
    const field = e.target;
    if (!field.id) return;
    document.querySelectorAll(`[data-clears-when-edited="${CSS.escape(field.id)}"]`).forEach((errors) => {
      errors.hidden = true;
      field.removeAttribute("aria-invalid");
      field.removeAttribute("aria-describedby");
    });
  });

  // The same words as the server's (identity.views._relative), kept current
  // between refreshes.
  function units(seconds) {
    const steps = [[31536000, "year"], [2592000, "month"], [604800, "week"], [86400, "day"], [3600, "hour"], [60, "minute"]];
    for (const [size, name] of steps) {
      const n = Math.floor(seconds / size);
      if (n >= 1) return `${n}\u00a0${name}${n === 1 ? "" : "s"}`;
    }
    return "1\u00a0minute";
  }

  function relative(moment) {
    const seconds = (Date.now() - moment.getTime()) / 1000;
    if (Math.abs(seconds) < 60) return "just now";
    return seconds > 0 ? `${units(seconds)} ago` : `in ${units(-seconds)}`;
  }

  function refreshTimes() {
    document.querySelectorAll("time[data-relative]").forEach((el) => {
      const moment = new Date(el.getAttribute("datetime"));
      if (!Number.isNaN(moment.getTime())) el.textContent = relative(moment);
    });
  }

  setInterval(refreshTimes, 15000);
})();
