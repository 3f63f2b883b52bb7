// The web page: pick or drop an image, pick a model, see the label, the probabilities and the previews.
// Plain JavaScript, no build step and nothing from outside this service.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("upload-form");
const fileInput = $("file-input");
const dropZone = $("drop-zone");
const modelSelect = $("model-select");
const previewUrls = [];
let chosenFile = null;

function percent(value) {
  return `${(value * 100).toFixed(1)}%`;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// Every error of the API is {"error": {"code", "message", "request_id"}}.
async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error) {
      return `${body.error.message} (${body.error.code}, request ${body.error.request_id})`;
    }
  } catch (ignored) {
    // not JSON: fall through
  }
  return `the service answered ${response.status} ${response.statusText}`;
}

async function loadModels() {
  try {
    const response = await fetch("/models");
    if (!response.ok) {
      showError(await errorMessage(response));
      return;
    }
    const body = await response.json();
    modelSelect.replaceChildren();
    for (const model of body.models) {
      const option = document.createElement("option");
      option.value = model.name;
      option.dataset.mode = model.mode;
      const notes = [`${model.mode} mode`];
      if (model.architecture) notes.push(model.architecture);
      if (model.default) notes.push("default");
      if (model.test_accuracy !== null) notes.push(`test accuracy ${percent(model.test_accuracy)}`);
      if (model.fullfield_accuracy !== null) notes.push(`full-field ${percent(model.fullfield_accuracy)}`);
      option.textContent = `${model.name} (${notes.join(", ")})`;
      option.selected = model.default;
      modelSelect.append(option);
    }
  } catch (error) {
    showError(`cannot reach the service: ${error}`);
  }
}

// Every request of one classification carries the signal of that classification, so that a newer
// choice can abort it.
function post(path, params, file, signal) {
  const data = new FormData();
  data.append("file", file);
  return fetch(`${path}?${new URLSearchParams(params)}`, { method: "POST", body: data, signal });
}

function renderProbabilities(probabilities, label) {
  const container = $("probabilities");
  container.replaceChildren();
  for (const [name, value] of Object.entries(probabilities)) {
    const row = document.createElement("div");
    row.className = "bar-row" + (name === label ? " best" : "");
    row.dataset.class = name;
    const title = document.createElement("span");
    title.className = "bar-name";
    title.id = `bar-name-${name}`;
    title.textContent = name;
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-labelledby", title.id);
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "1");
    bar.setAttribute("aria-valuenow", String(value));
    bar.setAttribute("aria-valuetext", percent(value));
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = percent(value);
    bar.append(fill);
    const text = document.createElement("span");
    text.className = "bar-value";
    text.textContent = percent(value);
    row.append(title, bar, text);
    container.append(row);
  }
}

function renderResult(result) {
  // An image that does not look like a smear gets no bold label: the model's guess is shown as a guess.
  const trusted = result.looks_like_smear;
  $("result").classList.toggle("not-smear", !trusted);
  $("label").textContent = trusted ? result.label : "this does not look like a stained blood smear";
  $("confidence").textContent = trusted ? percent(result.confidence)
    : `(smear score ${result.smear_score.toFixed(2)}; the model's guess, ${result.label} ${percent(result.confidence)}, ` +
      "is not to be trusted)";
  const warnings = $("warnings");
  warnings.replaceChildren();
  for (const warning of result.warnings) {
    const item = document.createElement("li");
    item.textContent = warning;
    warnings.append(item);
  }
  renderProbabilities(result.probabilities, result.label);
  $("model-info").textContent = `model ${result.model.name} ${result.model.version} (${result.mode} mode), ` +
    `answered in ${result.elapsed_ms.toFixed(1)} ms`;
}

async function previewBlob(response) {
  if (!response.ok) {
    throw new Error(await errorMessage(response));
  }
  return response.blob();
}

function showPreview(imageId, blob) {
  const url = URL.createObjectURL(blob);
  previewUrls.push(url);
  $(imageId).src = url;
}

// What a previous choice showed goes away as soon as a new one starts: its label, bars and previews
// must never stand under the new file's name.
function clearResult() {
  $("result").hidden = true;
  $("result").classList.remove("not-smear");
  for (const id of ["label", "confidence", "model-info"]) {
    $(id).textContent = "";
  }
  $("warnings").replaceChildren();
  $("probabilities").replaceChildren();
  for (const id of ["preview-overlay", "preview-extracted"]) {
    $(id).removeAttribute("src");
  }
  previewUrls.splice(0).forEach((url) => URL.revokeObjectURL(url));
}

// The latest choice (file or model) wins: starting a classification aborts the one still running,
// whose answers, if they arrive anyway, are dropped because its signal is aborted.
let running = null;

function startClassification() {
  if (running) {
    running.abort();
  }
  running = new AbortController();
  return running.signal;
}

function modeView(mode) {
  if (mode === "crop") return { view: "crop", size: "original", caption: "What the crop model sees: the window around the cell" };
  if (mode === "color") return { view: "extracted", size: "original", caption: "What the color model sees: the stained pixels only" };
  return { view: "extracted", size: "original", caption: "The stained pixels the service found (the original model sees the whole image)" };
}

async function classify() {
  if (!chosenFile) {
    showError("choose an image first");
    return;
  }
  // Read once: the user may pick another file or model while this one runs.
  const file = chosenFile;
  const model = modelSelect.value;
  const mode = modelSelect.selectedOptions[0]?.dataset.mode;
  const signal = startClassification();
  clearError();
  clearResult();
  $("status").textContent = `classifying ${file.name}…`;
  // What the chosen model looks at: the cut-out for crop, the stained pixels for color, and for the
  // whole image (original) the stained pixels, to show what the service found in it.
  const seen = modeView(mode);
  try {
    const [classified, overlay, extracted] = await Promise.all([
      post("/classify", { model }, file, signal),
      post("/preprocess", { model, view: "overlay", size: "original" }, file, signal),
      post("/preprocess", { model, view: seen.view, size: seen.size }, file, signal),
    ]);
    if (!classified.ok) {
      const message = await errorMessage(classified);
      if (!signal.aborted) {
        $("status").textContent = "";
        showError(message);
      }
      return;
    }
    // Everything is read before anything is shown, so the page never mixes two answers.
    const [result, overlayBlob, extractedBlob] = await Promise.all([
      classified.json(), previewBlob(overlay), previewBlob(extracted),
    ]);
    if (signal.aborted) {
      return;
    }
    renderResult(result);
    showPreview("preview-overlay", overlayBlob);
    showPreview("preview-extracted", extractedBlob);
    $("preview-extracted-caption").textContent = seen.caption;
    $("result").hidden = false;
    $("status").textContent = `classified ${file.name}`;
  } catch (error) {
    if (signal.aborted) {
      return;  // replaced by a newer choice, which shows its own answer or error
    }
    $("status").textContent = "";
    showError(error.message || String(error));
  }
}

function choose(file) {
  chosenFile = file || null;
  if (chosenFile) {
    classify();
  }
}

fileInput.addEventListener("change", () => choose(fileInput.files[0]));
modelSelect.addEventListener("change", () => chosenFile && classify());
form.addEventListener("submit", (event) => {
  event.preventDefault();
  classify();
});
for (const name of ["dragenter", "dragover"]) {
  dropZone.addEventListener(name, (event) => {
    event.preventDefault();
    dropZone.classList.add("dragging");
  });
}
for (const name of ["dragleave", "drop"]) {
  dropZone.addEventListener(name, () => dropZone.classList.remove("dragging"));
}
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  choose(event.dataTransfer.files[0]);
});

loadModels();
