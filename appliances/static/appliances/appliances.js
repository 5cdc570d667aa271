// The console's Appliances card: create appliances, run their actions and
// manage their snapshots through the JSON API. The card itself is
// server-rendered and re-fetched on every appliance-changed event; what the
// user is doing in it (open snapshot lists, a half-typed snapshot name, the
// focus) is carried across those refreshes here.
(function () {
  "use strict";

  const API = "/api/meshnet/appliances";
  const CARD_URL = "/appliances/card";

  const shared = window.InfraSimConsole;

  function api(method, path, body) {
    return shared.api(API + path, method, body);
  }

  function say(level, message) {
    shared.say("appliances", level, message);
  }

  function startAction() {
    document.getElementById("appliances-status").hidden = true;
    document.getElementById("appliances-error").hidden = true;
  }

  function refreshCard() {
    return htmx.ajax("GET", CARD_URL, { target: "#appliances-slot", swap: "innerHTML" });
  }

  // --- The create form -------------------------------------------------------------

  const clearFieldError = shared.clearFieldError;
  const showFieldErrors = shared.showFieldErrors;

  function number(input) {
    const text = input.value.trim();
    return text === "" ? undefined : /^\d+$/.test(text) ? Number(text) : text;
  }

  async function createAppliance(form) {
    startAction();
    form.querySelectorAll("[data-error-for]").forEach((slot) => clearFieldError(form, slot.dataset.errorFor));
    const body = { name: form.elements.name.value.trim(), template: form.elements.template.value };
    ["vcpus", "memory_mib", "disk_gib"].forEach((field) => {
      const value = number(form.elements[field]);
      if (value !== undefined) body[field] = value;
    });
    body.ssh_authorized_keys = form.elements.ssh_authorized_keys.value.split("\n").map((line) => line.trim()).filter(Boolean);
    if (form.elements.user_data.value.trim()) body.user_data = form.elements.user_data.value;
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const appliance = await api("POST", "", body);
      form.reset();
      syncTemplate();
      say("ok", "“" + appliance.name + "” created on " + appliance.host +
        (appliance.mesh_ipv4 ? " with mesh address " + appliance.mesh_ipv4 : "") +
        ": its host is preparing it now, and its status below follows every step.");
      await refreshCard();
    } catch (err) {
      if (!showFieldErrors(form, err.fields)) say("error", err.message);
    } finally {
      button.disabled = false;
    }
  }

  // The template select lives in the preserved form; the catalog list next
  // to it is re-rendered with every refresh and carries the cache status now.
  function syncTemplate() {
    const select = document.getElementById("appliance-template");
    if (!select) return;
    document.querySelectorAll("#template-catalog li").forEach((item) => {
      const option = select.querySelector('option[value="' + CSS.escape(item.dataset.slug) + '"]');
      if (!option) return;
      option.textContent = item.dataset.label;
      option.dataset.hint = item.dataset.hint;
    });
    const option = select.selectedOptions[0];
    if (!option) return;
    document.getElementById("appliance-template-hint").textContent = option.dataset.hint;
    const form = select.form;
    form.elements.memory_mib.placeholder = option.dataset.memory;
    form.elements.memory_mib.min = option.dataset.minMemory;
    form.elements.disk_gib.placeholder = option.dataset.disk;
    form.elements.disk_gib.min = option.dataset.minDisk;
  }

  // --- Actions on an appliance -----------------------------------------------------------

  const DOING = {
    start: (name) => "Starting “" + name + "”: the job is queued on its host.",
    shutdown: (name) => "Shutting down “" + name + "”: its guest is asked to power off, and is forced off if it does not.",
    reboot: (name) => "Rebooting “" + name + "”: its guest is asked to restart.",
    poweroff: (name) => "Powering off “" + name + "” now.",
    export: (name) => "Exporting “" + name + "”: its host copies the disk (a running guest pauses for the copy) " +
      "and writes the archive; the download appears here when it is done.",
  };

  async function act(button, row) {
    const name = row.dataset.name;
    const id = row.dataset.applianceId;
    const action = button.dataset.action;
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    startAction();
    button.disabled = true;
    try {
      if (action === "delete") {
        await api("DELETE", "/" + id);
        say("ok", "Deleting “" + name + "”: its domain, disk, snapshots and mesh peer are being removed.");
      } else if (action === "snapshot-revert") {
        await api("POST", "/" + id + "/snapshots/" + button.dataset.snapshotId + "/revert");
        say("ok", "Reverting “" + name + "” to its snapshot “" + button.dataset.snapshotName + "”.");
      } else if (action === "snapshot-delete") {
        await api("DELETE", "/" + id + "/snapshots/" + button.dataset.snapshotId);
        say("ok", "Deleting the snapshot “" + button.dataset.snapshotName + "” of “" + name + "”.");
      } else {
        // An export is POST …/archive (the seed's path), the rest are named after their action.
        await api("POST", "/" + id + "/" + (action === "export" ? "archive" : action));
        say("ok", DOING[action](name));
      }
    } catch (err) {
      say("error", err.message);
    }
    await refreshCard();
  }

  async function takeSnapshot(form, row) {
    startAction();
    const input = form.elements.name;
    const name = input.value.trim();
    try {
      await api("POST", "/" + row.dataset.applianceId + "/snapshots", { name: name });
      input.value = "";
      say("ok", "Taking the snapshot “" + name + "” of “" + row.dataset.name + "”.");
    } catch (err) {
      say("error", "Snapshot of “" + row.dataset.name + "”: " + err.message);
    }
    await refreshCard();
  }

  // --- Wiring -----------------------------------------------------------------------------

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (!form.closest || !form.closest("#appliances-card")) return;
    event.preventDefault();
    if (form.id === "create-appliance-form") createAppliance(form);
    else if (form.classList.contains("snapshot-form")) takeSnapshot(form, form.closest("[data-appliance-id]"));
  });

  document.addEventListener("click", (event) => {
    const button = event.target.closest && event.target.closest("#appliances-card button[data-action]");
    if (!button) return;
    act(button, button.closest("[data-appliance-id]"));
  });

  // A field's error goes as soon as the user changes it.
  document.addEventListener("input", (event) => {
    const input = event.target;
    if (input.form && input.form.id === "create-appliance-form" && input.name) clearFieldError(input.form, input.name);
  });

  document.addEventListener("change", (event) => {
    if (event.target.id === "appliance-template") syncTemplate();
  });

  // Which snapshot lists are open, kept as the user opens and closes them,
  // so that a live refresh (which renders them closed) can open them again.
  const openSnapshots = new Set();
  document.addEventListener("toggle", (event) => {
    const details = event.target;
    if (!(details instanceof HTMLDetailsElement) || !details.dataset.snapshotsOf) return;
    if (details.open) openSnapshots.add(details.dataset.snapshotsOf);
    else openSnapshots.delete(details.dataset.snapshotsOf);
  }, true);

  // The create button is served disabled; it works once this script handles it.
  function armForms() {
    document.querySelectorAll("#appliances-card [data-until-script]").forEach((button) => (button.disabled = false));
  }
  armForms();

  document.addEventListener("htmx:afterSwap", (event) => {
    if (event.detail.target.id !== "appliances-slot") return;
    armForms();
    syncTemplate();
    openSnapshots.forEach((id) => {
      const details = document.querySelector('#appliances-card details[data-snapshots-of="' + id + '"]');
      if (details) details.open = true;
    });
  });

  document.addEventListener("DOMContentLoaded", syncTemplate);

  // Events sent while the socket was down are lost: catch up once it is back.
  let wasDisconnected = false;
  new MutationObserver(() => {
    const state = document.body.dataset.events;
    if (state === "disconnected") wasDisconnected = true;
    else if (state === "connected" && wasDisconnected && document.getElementById("appliances-slot")) {
      wasDisconnected = false;
      refreshCard();
    }
  }).observe(document.body, { attributes: true, attributeFilter: ["data-events"] });
})();
