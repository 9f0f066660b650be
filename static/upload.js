"use strict";

// A whole film in one go. A film's cells are often a folder of a hundred images or more, and
// one upload may hold at most MAX_FILES files and MAX_CONTENT_LENGTH bytes (the server's
// bounds on the memory and time one request takes). Here a folder can be chosen or dropped,
// what is not an image is left out of it, and a selection beyond one upload's bounds is sent
// in parts: the first starts the batch (or, from a batch page's "Add images" form, is added
// to it), each further part is added to it, then the batch page opens. Without JavaScript
// each form sends one request, as before.
//
// In a function of its own: a part the server refuses shows the server's page in this window
// (document.write), which runs this file again, and top-level names would then clash.
(() => {
  // What the name says is not an image, or what an operating system leaves beside images.
  function isImageFile(path, suffixes) {
    const parts = path.split("/");
    if (parts.some((part) => part.startsWith(".") || part === "__MACOSX")) return false;
    const name = parts[parts.length - 1].toLowerCase();
    const dot = name.lastIndexOf(".");
    return dot > 0 && suffixes.includes(name.slice(dot));
  }

  // Consecutive parts of at most `maxFiles` files and `maxBytes` bytes each.
  function splitIntoParts(files, maxFiles, maxBytes) {
    const parts = [];
    let part = [];
    let bytes = 0;
    files.forEach((file) => {
      if (part.length && (part.length >= maxFiles || bytes + file.size > maxBytes)) {
        parts.push(part);
        part = [];
        bytes = 0;
      }
      part.push(file);
      bytes += file.size;
    });
    if (part.length) parts.push(part);
    return parts;
  }

  // The files of a dropped folder, at any depth (a FileSystemDirectoryEntry reads its entries
  // in batches: readEntries until it returns none).
  async function filesOfEntry(entry, path = "") {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      return [{ file, path: path + file.name }];
    }
    const reader = entry.createReader();
    const found = [];
    for (;;) {
      const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
      if (!batch.length) break;
      for (const child of batch) {
        found.push(...(await filesOfEntry(child, `${path}${entry.name}/`)));
      }
    }
    return found;
  }

  // Whether files can be put into a file field (Safari before 14.1 has DataTransfer but
  // cannot construct one): a folder needs it, sending in parts does not.
  function canChooseFiles() {
    try {
      return Boolean(new DataTransfer().files);
    } catch (error) {
      return false;
    }
  }

  // A form whose file selection may be sent in parts: says so under it, refuses (as the
  // browser refuses a required field left empty) more images than the batch has room for,
  // saying `room`, or a file larger than one request may hold, and sends the parts. `show`
  // puts the progress where the user looks. Its return value's leftOut names files a folder
  // held that were passed over, for the next note.
  function setUpParts(form, input, note, room, show) {
    const limits = {
      files: Number(form.dataset.maxFiles),
      // Empty: the server sets no byte limit.
      bytes: form.dataset.maxBytes ? Number(form.dataset.maxBytes) : Infinity,
      batch: Number(form.dataset.maxBatch),
    };
    const chosen = { leftOut: [] };
    input.addEventListener("change", () => {
      const files = Array.from(input.files);
      const parts = splitIntoParts(files, limits.files, limits.bytes);
      const messages = [];
      if (chosen.leftOut.length) {
        const left = chosen.leftOut;
        const named = left.slice(0, 5).join(", ") + (left.length > 5 ? ", …" : "");
        messages.push(`Left out ${left.length} file${left.length === 1 ? "" : "s"} not ` +
                      `named as an image: ${named}.`);
        chosen.leftOut = [];
      }
      const large = files.find((file) => file.size > limits.bytes);
      const mb = Math.ceil(limits.bytes / 2 ** 20);
      if (files.length > limits.batch) {
        input.setCustomValidity(`${room(limits.batch)}: choose fewer than these ` +
                                `${files.length}.`);
      } else if (large) {
        input.setCustomValidity(`${large.name} is larger than one upload may hold (${mb} MB).`);
      } else {
        input.setCustomValidity("");
      }
      if (input.validationMessage) {
        messages.push(input.validationMessage);
      } else if (parts.length > 1) {
        const bound = Number.isFinite(limits.bytes) ? ` and ${mb} MB` : "";
        messages.push(`These ${files.length} images will be sent in ${parts.length} parts ` +
                      `(one upload holds at most ${limits.files} files${bound}) and ` +
                      "classified into one batch.");
      }
      note.textContent = messages.join(" ");
    });
    form.addEventListener("submit", (event) => {
      const parts = splitIntoParts(Array.from(input.files), limits.files, limits.bytes);
      if (parts.length < 2) return; // one request: the form sends it itself
      event.preventDefault();
      sendInParts(form, parts, note, show);
    });
    return chosen;
  }

  // The upload page: a folder chosen, or files and folders dropped, go into the file field
  // without what their names say is not an image.
  function setUpFilmUpload() {
    const form = document.getElementById("upload-form");
    const input = document.getElementById("file");
    const note = document.getElementById("parts-note");
    if (!form || !input || !note || !window.fetch) return;
    const label = document.getElementById("submit-label");
    const status = document.getElementById("upload-status");
    const room = (n) => `A batch holds at most ${n} images`;
    const chosen = setUpParts(form, input, note, room, (text) => {
      label.textContent = text;
      status.textContent = text;
    });
    if (!canChooseFiles()) return;
    const suffixes = form.dataset.suffixes.split(",");

    // The chosen files go into the one file input, so the form, its list and its checks see
    // them as if picked there.
    const choose = (entries) => {
      const transfer = new DataTransfer();
      entries.filter((e) => isImageFile(e.path, suffixes))
        .forEach((e) => transfer.items.add(e.file));
      input.files = transfer.files;
      chosen.leftOut = entries.filter((e) => !isImageFile(e.path, suffixes)).map((e) => e.path);
      input.dispatchEvent(new Event("change"));
    };

    const folder = document.getElementById("folder");
    const folderButton = document.getElementById("folder-button");
    if (folder && folderButton && "webkitdirectory" in folder) {
      folderButton.hidden = false;
      folderButton.addEventListener("click", () => folder.click());
      folder.addEventListener("change", () => {
        choose(Array.from(folder.files).map((file) => ({ file, path: file.webkitRelativePath })));
        folder.value = "";
      });
    }

    const zone = document.getElementById("drop-zone");
    // Capturing, so that whatever is dropped, files or folders, is read here, and the plain
    // drop handler (app.js, for browsers without this file's means) does not see the event.
    if (zone) zone.addEventListener("drop", async (event) => {
      const items = Array.from(event.dataTransfer ? event.dataTransfer.items : []);
      const entries = items.map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry());
      if (!entries.length || !entries.every(Boolean)) return;
      event.preventDefault();
      event.stopImmediatePropagation();
      zone.classList.remove("is-dragover");
      const found = [];
      for (const entry of entries) found.push(...(await filesOfEntry(entry)));
      choose(found);
    }, true);
  }

  // A batch page's "Add images to this batch": more files than one request holds, in parts.
  function setUpAddInParts() {
    const form = document.getElementById("add-form");
    const input = document.getElementById("add-file");
    const note = document.getElementById("add-note");
    if (!form || !input || !note || !window.fetch) return;
    const button = document.getElementById("add-submit");
    const room = (n) => `This batch has room for ${n} more images`;
    setUpParts(form, input, note, room, (text) => {
      button.disabled = true;
      note.textContent = text;
    });
  }

  async function sendInParts(form, parts, note, show) {
    // Leaving before the last part is sent (the back button, a link) would keep a batch of
    // only the images sent so far, which looks complete: the browser asks first. The page's
    // own going on, below, is after the listener is gone.
    const unfinished = (event) => {
      event.preventDefault();
      event.returnValue = "";
    };
    window.addEventListener("beforeunload", unfinished);
    let outcome;
    try {
      outcome = await sendEachPart(form, parts, show);
    } finally {
      window.removeEventListener("beforeunload", unfinished);
    }
    if (outcome.page !== undefined) {
      // A part the server refused (no readable image, too large, the batch full): its page
      // says why, as a plain upload would have shown it, at an address a reload can open.
      if (outcome.batch) window.history.replaceState(null, "", outcome.batch);
      document.open();
      document.write(outcome.page);
      document.close();
    } else if (outcome.failed) {
      // Stay: going to the batch would show a batch that looks complete.
      note.textContent = outcome.failed;
      if (outcome.batch) {
        const link = document.createElement("a");
        link.href = outcome.batch;
        link.textContent = "Open the batch";
        note.append(" ", link, ": add the rest there.");
      }
    } else {
      window.location.assign(outcome.batch);
    }
  }

  // Sends the parts in order. {batch: its page's path} once all are in; {page: the server's
  // answer, batch} to the first part it refused; {failed: why, batch} when the connection
  // broke. Each part asks for JSON, so that the server keeps its messages for the batch page
  // that opens at the end instead of showing them to a fetch.
  async function sendEachPart(form, parts, show) {
    const token = form.querySelector("input[name=csrf_token]").value;
    const model = form.querySelector("[name=model]");
    const total = parts.reduce((n, part) => n + part.length, 0);
    let batch = null; // the batch page's path, once the first part reached it
    let sent = 0;
    for (const part of parts) {
      const body = new FormData();
      body.append("csrf_token", token);
      if (!batch && model) body.append("model", model.value);
      part.forEach((file) => body.append("file", file, file.name));
      show(`Classifying images ${sent + 1} to ${sent + part.length} of ${total}…`);
      let response;
      try {
        response = await fetch(batch ? `${batch}/add` : form.action, {
          method: "POST", body, headers: { Accept: "application/json" },
        });
      } catch (error) {
        return { batch, failed: `The connection failed: ${sent} of the ${total} images were ` +
                                `sent${batch ? " into the batch" : ""}.` };
      }
      const type = response.headers.get("Content-Type") || "";
      if (!response.ok || !type.startsWith("application/json")) {
        return { batch, page: await response.text() };
      }
      batch = (await response.json()).batch;
      sent += part.length;
    }
    return { batch };
  }

  document.addEventListener("DOMContentLoaded", () => {
    setUpFilmUpload();
    setUpAddInParts();
  });
})();
