// HematoVision page behaviour. Loaded as a file: the CSP forbids inline scripts.
"use strict";

// In a function of its own: a page written into this window (upload.js shows a refused
// part's answer so) runs this file again, and top-level names would then clash.
(() => {

// Probability bars: the width comes from data-value (0..1). Set here because the CSP also
// forbids inline style attributes; the number next to each bar is in the HTML for no-JS use.
function drawBars() {
  document.querySelectorAll(".progress-bar[data-value]").forEach((bar) => {
    const value = Math.max(0, Math.min(1, parseFloat(bar.dataset.value) || 0));
    bar.style.width = (value * 100).toFixed(1) + "%";
  });
}

// Show the chosen model's "expects" note under the model picker, and name the model in the
// form's address too: an upload refused as too large is refused before its form is read, and
// the address is then all the error page has to lead back to the same model.
function followModelPicker() {
  const picker = document.getElementById("model");
  if (!picker) return;
  const form = document.getElementById("upload-form");
  const update = () => {
    document.querySelectorAll(".model-expects").forEach((note) => {
      note.hidden = note.dataset.model !== picker.value;
    });
    if (form) {
      const action = new URL(form.action);
      action.searchParams.set("model", picker.value);
      form.action = action.toString();
    }
  };
  picker.addEventListener("change", update);
  // Back to the page after an upload, the browser restores the picker's choice without a
  // change event, after this script ran: the note and the address would name the model the
  // page was drawn with while the picker shows another. Follow it again then, and as the form
  // is sent (capture: before upload.js reads the address).
  window.addEventListener("pageshow", update);
  if (form) form.addEventListener("submit", update, true);
  update();
}

// List the chosen files with small previews, so the user sees what will be sent; a folder of
// hundreds lists its first LISTED_FILES and counts the rest (a preview decodes its image).
const LISTED_FILES = 20;

function listFiles(input, list) {
  list.replaceChildren();
  const files = Array.from(input.files);
  files.slice(0, LISTED_FILES).forEach((file) => {
    const item = document.createElement("li");
    if (file.type.startsWith("image/") && file.size < 20 * 1024 * 1024) {
      const preview = document.createElement("img");
      preview.alt = "";
      preview.src = URL.createObjectURL(file);
      preview.addEventListener("load", () => URL.revokeObjectURL(preview.src));
      preview.addEventListener("error", () => preview.remove()); // the server will say why
      item.append(preview);
    }
    const label = document.createElement("span");
    label.textContent = `${file.name} (${(file.size / 1024).toFixed(0)} KB)`;
    item.append(label);
    list.append(item);
  });
  if (files.length > LISTED_FILES) {
    const more = document.createElement("li");
    const bytes = files.reduce((sum, file) => sum + file.size, 0);
    more.textContent = `… and ${files.length - LISTED_FILES} more ` +
                       `(${files.length} files, ${(bytes / 2 ** 20).toFixed(1)} MB in all)`;
    list.append(more);
  }
  resetSubmitLabel(input.files.length);
}

function resetSubmitLabel(n) {
  const submit = document.getElementById("submit-label");
  if (submit) submit.textContent = n > 1 ? `Classify ${n} images` : "Classify";
}

// Drag and drop onto the zone puts the files into the ordinary file input, so the form
// submits the same way as with the picker (which stays usable by keyboard).
function setUpDropZone() {
  const zone = document.getElementById("drop-zone");
  const input = document.getElementById("file");
  const list = document.getElementById("file-list");
  if (!zone || !input) return;
  input.addEventListener("change", () => listFiles(input, list));
  ["dragenter", "dragover"].forEach((type) =>
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("is-dragover");
    })
  );
  ["dragleave", "drop"].forEach((type) =>
    zone.addEventListener(type, () => zone.classList.remove("is-dragover"))
  );
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (!event.dataTransfer || !event.dataTransfer.files.length) return;
    input.files = event.dataTransfer.files;
    // As a choice in the picker: its listeners (the list, upload.js's checks) see it.
    input.dispatchEvent(new Event("change"));
  });
}

// Busy state while the server classifies; prevents double submission.
function setUpSubmit() {
  const form = document.getElementById("upload-form");
  if (!form) return;
  const status = document.getElementById("upload-status");
  form.addEventListener("submit", () => {
    const button = document.getElementById("submit");
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    document.getElementById("submit-spinner").classList.remove("d-none");
    document.getElementById("submit-label").textContent = "Classifying…";
    // A screen reader does not read a button's label as it changes; a status region it does.
    if (status) status.textContent = "Uploading and classifying: this can take a minute.";
  });
  // Coming back with the browser's back button restores the page from cache: re-enable.
  window.addEventListener("pageshow", () => {
    const button = document.getElementById("submit");
    button.disabled = false;
    button.removeAttribute("aria-busy");
    document.getElementById("submit-spinner").classList.add("d-none");
    const input = form.querySelector("input[type=file]");
    resetSubmitLabel(input ? input.files.length : 0);
    if (status) status.textContent = "";
  });
}

// Heat map switch on a result page: off by default, and the overlay is fetched only the first
// time it is turned on, so a plain result costs no extra model run. Without JavaScript the page
// keeps a link that opens the same picture.
function setUpHeatMap() {
  const toggle = document.getElementById("heat-map-toggle");
  if (!toggle) return;
  const figure = document.getElementById("heat-map-figure");
  const image = document.getElementById("heat-map-image");
  const error = document.getElementById("heat-map-error");
  document.getElementById("heat-map-link").hidden = true;
  document.getElementById("heat-map-switch").hidden = false;
  image.addEventListener("error", () => {
    image.hidden = true;
    // Written again once shown, so that screen readers announce the alert's text.
    const message = error.textContent;
    error.textContent = "";
    error.hidden = false;
    window.setTimeout(() => { error.textContent = message; }, 50);
  });
  const update = () => {
    if (toggle.checked && !image.getAttribute("src")) image.src = toggle.dataset.src;
    figure.hidden = !toggle.checked;
  };
  toggle.addEventListener("change", update);
  update(); // a page restored from history may come back with the switch on
}

// A form that deletes something asks first (its data-confirm holds the question).
function confirmForms() {
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
}

// Reviewing a batch cell by cell: a digit key gives the class of that place in the form's list
// (1 for the first) and x excludes the image, each saved at once; the left and right arrows go
// to the previous and next image of the batch; so a technologist can go through the cells
// without the mouse. Keys typed into a field, or with a modifier, are left alone, and so are
// the arrows in a box that scrolls sideways (a wide table). A switch turns the keys off (WCAG
// 2.1.4: speech input or a stray key would save a verdict); this browser remembers it.
const REVIEW_KEYS_OFF = "hematovision.review-keys-off";

function remembered(key) {
  try {
    return window.localStorage.getItem(key);
  } catch (error) { // storage blocked: the keys start on, as without the switch
    return null;
  }
}

function remember(key, value) {
  try {
    if (value === null) window.localStorage.removeItem(key);
    else window.localStorage.setItem(key, value);
  } catch (error) { /* storage blocked: the choice holds for this page only */ }
}

function setUpReviewKeys() {
  const form = document.getElementById("review-form");
  if (!form) return;
  const select = form.querySelector("select[name=verdict]");
  // The model's classes, in order: not the reviewer's own verdicts after them (another white
  // cell, excluded), which keep no digit.
  const classes = Array.from(select.options).filter((o) => o.dataset.modelClass !== undefined);
  const save = document.getElementById("review-save");
  const shortcuts = save.getAttribute("aria-keyshortcuts");
  const on = document.getElementById("review-keys-on");
  const follow = () => {
    if (on.checked) save.setAttribute("aria-keyshortcuts", shortcuts);
    else save.removeAttribute("aria-keyshortcuts");
  };
  on.checked = remembered(REVIEW_KEYS_OFF) === null;
  on.addEventListener("change", () => {
    remember(REVIEW_KEYS_OFF, on.checked ? null : "1");
    follow();
  });
  follow();
  document.getElementById("review-keys").hidden = false;
  document.addEventListener("keydown", (event) => {
    if (!on.checked) return;
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    if (event.target.closest("input, select, textarea, [contenteditable]")) return;
    const step = { ArrowLeft: "prev", ArrowRight: "next" }[event.key];
    if (step && event.target.closest(".table-responsive, pre")) return;
    const link = step && document.querySelector(`#batch-steps a[rel=${step}]`);
    if (link) {
      event.preventDefault();
      window.location.assign(link.href);
      return;
    }
    let value = null;
    if (/^[1-9]$/.test(event.key) && Number(event.key) <= Math.min(classes.length, 9)) {
      value = classes[Number(event.key) - 1].value;
    } else if (event.key === "x" || event.key === "X") {
      value = "excluded";
    }
    if (value === null) return;
    event.preventDefault();
    select.value = value;
    form.requestSubmit();
  });
}

// The report's "Print" (hidden without JavaScript, which printing needs here: the CSP allows
// no inline handler).
function setUpPrint() {
  const button = document.getElementById("print-button");
  if (button) {
    button.hidden = false;
    button.addEventListener("click", () => window.print());
  }
  // A printed report or page says when it was printed: it may be older than its batch's
  // reviews.
  const printed = document.getElementById("printed-at");
  if (printed) {
    window.addEventListener("beforeprint", () => {
      printed.textContent = `Printed ${printedAt(new Date())}.`;
    });
  }
}

// A moment as the pages write them ("07 Dec 2026, 04:07 UTC", as the server's clock_utc): a
// printed report read in another country must not take 12/7 for 12 July, nor mix two clocks
// on one sheet. Spelt out by hand: a locale's short months differ ("Sept" in en-GB).
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
  "Dec"];
function printedAt(moment) {
  const two = (n) => String(n).padStart(2, "0");
  return `${two(moment.getUTCDate())} ${MONTHS[moment.getUTCMonth()]} ` +
    `${moment.getUTCFullYear()}, ${two(moment.getUTCHours())}:${two(moment.getUTCMinutes())} UTC`;
}

// A form sent back with a message (400) puts the keyboard on the first field to correct, so
// that a screen reader reads the field and its message without hunting for them.
function focusFirstInvalidField() {
  const field = document.querySelector("[aria-invalid=true]");
  if (!field) return;
  const details = field.closest("details");
  if (details) details.open = true;
  field.focus();
}

// The review page's choices are saved only by its button: leaving it another way (a link, the
// next cells, the back button) with choices made asks first, as a technologist who set sixty
// classes and clicked "Next cells" would otherwise lose them without a word.
function guardUnsavedReviews() {
  const form = document.getElementById("review-all-form");
  if (!form) return;
  const chosen = () => Array.from(form.elements).some((field) =>
    (field.tagName === "SELECT" && field.value !== "") ||
    (field.type === "radio" && field.checked && field.value !== ""));
  const warn = (event) => {
    if (!chosen()) return;
    event.preventDefault();
    event.returnValue = ""; // older browsers need a value to ask
  };
  window.addEventListener("beforeunload", warn);
  form.addEventListener("submit", () => window.removeEventListener("beforeunload", warn));
}

// A batch is deleted a while after its last change. A page left open (a review list being
// worked through, a count waiting for its signer) says so before that time comes, while a save
// or "Keep it" still renews the batch. The time left is counted from what the server said as
// it wrote the page, so a browser whose clock is wrong still warns on time; before it warns,
// and while it does, it asks the server again, since a colleague's change moves the time.
const ASK_EVERY_MS = 15000;

function followDeletion() {
  const note = document.getElementById("expires-soon"); // none where the time is unknown
  const warnAt = note ? Number(note.dataset.warnSeconds) : 0;
  let left = note ? Number(note.dataset.secondsLeft) : Infinity;
  let since = Date.now();
  let asked = 0;
  let latest = 0; // answers are applied newest first: a late one never undoes a Keep
  let gone = false;
  let timer = null;
  const setText = (element, text) => {
    if (element && element.textContent !== text) element.textContent = text; // no re-reading
  };
  const show = (part) => {
    ["soon", "ended", "gone"].forEach((name) => {
      note.querySelector(`.expires-${name}-text`).hidden = name !== part;
    });
    note.querySelector("form button").hidden = part === "gone"; // the form is d-inline
  };
  const learn = (answer) => {
    if (typeof answer.seconds_left !== "number") return;
    left = answer.seconds_left;
    since = Date.now();
    document.querySelectorAll(".deletion-time").forEach((time) => {
      time.dateTime = answer.expires;
      setText(time, answer.expires_text);
    });
  };
  const update = () => {
    if (!note) return;
    const remaining = left - (Date.now() - since) / 1000;
    const due = gone || remaining <= warnAt;
    if (due && !gone && Date.now() - asked > ASK_EVERY_MS) {
      ask(); // answers by calling update again
      return;
    }
    note.hidden = !due;
    document.body.classList.toggle("expires-soon-shown", due);
    if (!due) return;
    if (gone) {
      show("gone");
      clearInterval(timer);
    } else if (remaining <= 0) {
      show("ended");
    } else {
      show("soon");
      const minutes = Math.ceil(remaining / 60);
      setText(note.querySelector(".expires-soon-in"),
        minutes === 1 ? "in less than a minute" : `in ${minutes} minutes`);
    }
  };
  const ask = async () => {
    asked = Date.now();
    const mine = ++latest;
    try {
      const response = await fetch(note.dataset.expiresUrl,
        { headers: { Accept: "application/json" }, cache: "no-store" });
      if (mine !== latest) return; // a Keep, or a later question, answered since
      if (response.status === 404) gone = true;
      else if (response.ok) learn(await response.json());
    } catch {
      // offline, or the server restarting: go on counting from what it said last
    }
    if (mine === latest) update();
  };
  // "Keep it" without leaving the page: a review list's choices not yet saved stay as they are.
  document.querySelectorAll("form.keep-form").forEach((form) => {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const mine = ++latest;
      let response;
      try {
        response = await fetch(form.action, { method: "POST", body: new FormData(form),
          headers: { Accept: "application/json" } });
      } catch {
        form.submit(); // no answer at all: the form itself goes, and its page says what happened
        return;
      }
      if (response.ok) {
        const answer = await response.json();
        if (mine === latest) learn(answer);
        asked = Date.now();
        setText(document.getElementById("kept-note"), answer.message);
      } else if (response.status === 404) {
        gone = true;
        setText(document.getElementById("kept-note"),
          "This batch is no longer on the server: it could not be kept.");
      } else { // sending it again would be refused again (an expired form token: 400)
        setText(document.getElementById("kept-note"), "The batch could not be kept from this " +
          `page (the server answered ${response.status}): reload the page and try again.`);
      }
      update();
    });
  });
  if (!note) return;
  timer = setInterval(update, 1000);
  update();
}

document.addEventListener("DOMContentLoaded", () => {
  drawBars();
  setUpHeatMap();
  followModelPicker();
  setUpDropZone();
  setUpSubmit();
  confirmForms();
  setUpReviewKeys();
  setUpPrint();
  focusFirstInvalidField();
  guardUnsavedReviews();
  followDeletion();
});
})();
