// The page of `fracture-cnn serve`: three views over the JSON API (see the README).
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { model: null, files: [], predictions: [], explainFile: null, layer: null, map: null, runs: new Set() };

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function form(files) {
  const f = new FormData();
  for (const file of files) f.append("image", file, file.name);
  return f;
}

async function api(path, files) {
  const r = await fetch(path, files ? { method: "POST", body: form(files) } : {});
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

const fmt = (v, d = 4) => Number(v).toFixed(d);
const thousands = (n) => Number(n).toLocaleString("en-US");

// ---- views ---------------------------------------------------------------------------------
function show(view) {
  for (const b of document.querySelectorAll("nav button")) b.classList.toggle("active", b.dataset.view === view);
  for (const s of document.querySelectorAll(".view")) s.hidden = s.id !== view;
  if (view === "runs") refreshRuns();
}
for (const b of document.querySelectorAll("nav button")) b.addEventListener("click", () => show(b.dataset.view));

// ---- Try -----------------------------------------------------------------------------------
async function tryFiles(files) {
  state.files = [...files];
  if (!state.files.length) return;
  const status = $("#try-status");
  status.className = "status";
  status.textContent = `Running the model on ${state.files.length} image(s)…`;
  $("#cards").replaceChildren();
  try {
    const { predictions } = await api("/api/predict", state.files);
    state.predictions = predictions;
    status.textContent = `${predictions.length} image(s); fractured when P ≥ ${fmt(predictions[0].threshold, 3)}.`;
  } catch (e) {
    status.className = "status error";
    status.textContent = e.message;
    return;
  }
  const tbody = $("#predictions tbody");
  tbody.replaceChildren(...state.predictions.map((p, i) => el("tr", { class: "clickable", onclick: () => chooseForExplain(state.files[i]) },
    el("td", {}, p.file), el("td", { class: "num" }, fmt(p.probability)), el("td", {}, p.label), el("td", { class: "where" }, whereText(p)))));
  $("#table-box").hidden = state.predictions.length < 2;
  for (let i = 0; i < state.files.length; i++) addCard(state.files[i], state.predictions[i]);
  chooseForExplain(state.files[0]);
}

// "x 412, y 230 (fracture-map)": the most likely place of a fracture, in the file's pixels
function whereText(p) {
  return p.where ? `x ${Math.round(p.where.x)}, y ${Math.round(p.where.y)} (${p.from})` : "";
}

// "DICOM CR HAND, MONOCHROME1 12-bit, file window 2048/4096": what the file said (never who)
function dicomText(d) {
  const what = [d.modality, d.body_part].filter(Boolean).join(" ");
  const frames = d.frames > 1 ? `, the first of ${d.frames} frames` : "";
  return `DICOM ${what}${what ? ", " : ""}${d.photometric_interpretation} ${d.bits_stored}-bit, ${d.window}${frames}`;
}

async function addCard(file, p) {
  const cls = p.label === "fractured" ? "label-fractured" : "label-not";
  const card = el("div", { class: "card" },
    el("div", {}, el("span", { class: "prob", "data-file": p.file, "data-probability": String(p.probability) }, fmt(p.probability)), " ",
      el("span", { class: cls }, p.label), ` — ${p.file}`));
  if (p.dicom) card.append(el("div", { class: "hint dicom" }, dicomText(p.dicom)));
  $("#cards").append(card);
  try {
    const e = await api("/api/explain", [file]);
    card.append(el("div", {},
      el("img", { class: "input", src: e.input_png, title: "what the model saw" }),
      el("img", { class: "heatmap", src: e.heatmap_png, title: `${e.location.from}: where the model says the fracture is` })),
      el("div", { class: "hint where" }, `most likely at ${whereText(p)}; ${e.location.boxes.length} box(es)`),
      el("div", { class: "hint" }, e.location.from === "fracture-map"
        ? "left: the model's input (gray, resized); right: the model's fracture map over the X-ray, its boxes (white) and most likely point (magenta)"
        : "left: the model's input (gray, resized); right: Grad-CAM over the X-ray (where features that raise the score are), its boxes (white) and hottest point (magenta)"));
  } catch (err) {
    card.append(el("div", { class: "error" }, err.message));
  }
}

function downloadCsv() {
  const q = (s) => /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  const rows = ["file,probability,label,threshold,where_x,where_y,from", ...state.predictions.map((p) => [q(p.file), p.probability, p.label, p.threshold, p.where ? p.where.x : "", p.where ? p.where.y : "", p.from || ""].join(","))];
  const a = el("a", { href: URL.createObjectURL(new Blob([rows.join("\n") + "\n"], { type: "text/csv" })), download: "predictions.csv" });
  a.click();
}

$("#files").addEventListener("change", (e) => tryFiles(e.target.files));
$("#csv").addEventListener("click", downloadCsv);
const drop = $("#drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); tryFiles(e.dataTransfer.files); });

// ---- Explain -------------------------------------------------------------------------------
async function loadModel() {
  const m = await api("/api/model");
  state.model = m;
  const views = m.tta ? "each X-ray averaged over 4 views" : "each X-ray seen once";
  $("#model-line").textContent = `${m.name} on ${m.input[1]}×${m.input[2]} (${m.framing}), ${views}, threshold ${fmt(m.threshold, 3)} — ${m.checkpoint}`;
  const tbody = $("#layers tbody");
  tbody.replaceChildren(...m.layers.map((l) => el("tr", { class: "clickable", "data-index": l.index, onclick: () => showLayer(l.index) },
    el("td", {}, l.index), el("td", {}, l.describe), el("td", {}, l.inputs.join(", ")), el("td", {}, l.output.join("×")),
    el("td", { class: "num" }, thousands(l.params)), el("td", { class: "num" }, thousands(l.flops)))));
  drawHistograms("weights", m.weight_histograms);
}

async function chooseForExplain(file) {
  state.explainFile = file;
  $("#explain-status").firstChild.textContent = `Explaining ${file.name}. `;
  try {
    const e = await api("/api/explain", [file]);
    drawHistograms("gradients", e.gradient_histograms);
  } catch (err) { /* shown in Try */ }
  if (state.layer !== null) showLayer(state.layer);
}
$("#explain-file").addEventListener("change", (e) => e.target.files.length && chooseForExplain(e.target.files[0]));

async function showLayer(index) {
  state.layer = index;
  for (const r of document.querySelectorAll("#layers tr")) r.classList.toggle("selected", r.dataset.index == index);
  if (!state.explainFile) { $("#maps").replaceChildren(el("p", { class: "error" }, "Choose an X-ray first.")); return; }
  const l = await api(`/api/layer?index=${index}`, [state.explainFile]);
  $("#maps-title").textContent = `Feature maps of layer ${l.name} (${l.shape.join("×")})`;
  $("#focus").hidden = true;
  if (!l.maps) {
    $("#maps").replaceChildren(el("p", {}, `${l.values.length} values: ${l.values.slice(0, 16).map((v) => fmt(v, 3)).join(", ")}${l.values.length > 16 ? ", …" : ""}`));
    return;
  }
  const shown = l.maps.length < l.channels ? ` (the first ${l.maps.length} of ${l.channels})` : "";
  $("#maps").replaceChildren(el("p", { class: "hint" }, `${l.channels} maps${shown}, each from its own minimum (black) to maximum (white)`),
    ...l.maps.map((m, c) => el("img", { src: m.png, title: `channel ${c}: ${fmt(m.min, 3)} … ${fmt(m.max, 3)}`, "data-channel": c, onclick: (e) => focusMap(l, c, e.target) })));
}

// The convolution whose value the map at layer `index` shows (through batch norm and ReLU).
function convBehind(index) {
  const layers = state.model.layers;
  for (let i = index; i >= 0; i--) {
    const k = layers[i].kind;
    if (k === "conv2d" || k === "depthwise_conv2d") return i;
    if ((k !== "batchnorm" && k !== "relu") || layers[i].inputs.length !== 1 || i === 0) return null;
    if (layers[i].inputs[0] !== layers[i - 1].name) return null;
  }
  return null;
}

function focusMap(l, channel, img) {
  for (const m of document.querySelectorAll("#maps img")) m.classList.toggle("selected", m === img);
  const [, h, w] = l.shape;
  state.map = { layer: l.index, channel, h, w };
  $("#focus").hidden = false;
  $("#focus-title").textContent = `Layer ${l.name}, channel ${channel}`;
  const canvas = $("#focus-map");
  const scale = Math.max(1, Math.floor(256 / Math.max(h, w)));
  canvas.width = w * scale; canvas.height = h * scale;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  const picture = new Image();
  picture.onload = () => ctx.drawImage(picture, 0, 0, canvas.width, canvas.height);
  picture.src = img.src;
  canvas.onclick = (e) => {
    const r = canvas.getBoundingClientRect();
    const x = Math.min(w - 1, Math.floor((e.clientX - r.left) / r.width * w));
    const y = Math.min(h - 1, Math.floor((e.clientY - r.top) / r.height * h));
    ctx.drawImage(picture, 0, 0, canvas.width, canvas.height);
    ctx.strokeStyle = "#f33"; ctx.lineWidth = 2;
    ctx.strokeRect(x * scale, y * scale, scale, scale);
    showDot(y, x);
  };
  showDot(Math.floor(h / 2), Math.floor(w / 2));
}

function kernel(values, [kh, kw], title) {
  const g = el("div", { class: "kernel", title, style: `grid-template-columns: repeat(${kw}, auto)` });
  for (const v of values) g.append(el("span", {}, fmt(v, 3)));
  return g;
}

async function showDot(y, x) {
  const { layer, channel } = state.map;
  const conv = convBehind(layer);
  const box = $("#dot");
  if (conv === null) {
    box.replaceChildren(el("p", { class: "hint" }, "This map does not come straight from a convolution (a pooling or merge is in between): pick a convolution, batch norm or ReLU layer to see a dot product."));
    return;
  }
  const d = await api(`/api/dot?layer=${conv}&channel=${channel}&y=${y}&x=${x}`, [state.explainFile]);
  const shown = d.channels.slice(0, 8);
  const parts = [el("p", {}, `Output (${d.y}, ${d.x}) of channel ${d.channel} of ${d.name}: each input channel's ${d.kernel.join("×")} window times the filter's weights for it, summed, plus the bias.`)];
  for (const c of shown) {
    parts.push(el("div", { class: "term" }, el("span", { class: "hint" }, `input channel ${c.channel}`), kernel(c.inputs, d.kernel, "inputs (zeros where the window overhangs the padding)"), el("span", {}, "·"), kernel(c.weights, d.kernel, "the filter's weights"), el("span", {}, `= ${fmt(c.sum, 5)}`)));
  }
  if (d.channels.length > shown.length) parts.push(el("p", { class: "hint" }, `… and ${d.channels.length - shown.length} more input channels`));
  let eq = `Σ over ${d.channels.length} channel(s) ${fmt(d.sum - d.bias, 5)} + bias ${fmt(d.bias, 5)} = ${fmt(d.sum, 5)}   (the layer computed ${fmt(d.value, 5)})`;
  let v = d.value;
  for (const s of d.then) {
    if (s.kind === "batchnorm") eq += `\nbatch norm: (${fmt(v, 4)} − ${fmt(s.mean, 4)}) / √(${fmt(s.var, 4)} + ${s.eps}) × ${fmt(s.gamma, 4)} + ${fmt(s.beta, 4)} = ${fmt(s.value, 5)}`;
    if (s.kind === "relu") eq += `\nReLU: max(0, ${fmt(v, 5)}) = ${fmt(s.value, 5)}`;
    v = s.value;
  }
  parts.push(el("div", { class: "equation", id: "dot-equation" }, eq));
  box.replaceChildren(...parts);
}

function drawHistograms(what, hists) {
  let box = document.getElementById(`hist-${what}`);
  if (!box) { box = el("div", { id: `hist-${what}` }); $("#histograms").append(el("h2", {}, what), box); }
  box.replaceChildren(...hists.map((h) => {
    const c = el("canvas", { width: 160, height: 50 });
    const ctx = c.getContext("2d");
    const top = Math.max(...h.counts, 1);
    ctx.fillStyle = what === "weights" ? "#4a6cf7" : "#e07b00";
    h.counts.forEach((n, i) => { const bh = 48 * n / top; ctx.fillRect(i * 4, 50 - bh, 3, bh); });
    return el("div", { class: "hist" }, c, el("div", {}, h.name), el("div", { class: "hint" }, `${h.min.toExponential(2)} … ${h.max.toExponential(2)}`));
  }));
}

// ---- Runs ----------------------------------------------------------------------------------
let runsTimer = null;
async function refreshRuns() {
  clearTimeout(runsTimer);
  if ($("#runs").hidden) return;
  try {
    const { root, runs } = await api("/api/runs");
    $("#runs-status").textContent = runs.length ? `${runs.length} run(s) in ${root}; tick two to compare. Updates as epochs finish.` : `No runs in ${root} yet: train one (fracture-cnn train) and it appears here.`;
    $("#run-list tbody").replaceChildren(...runs.map((r) => el("tr", {},
      el("td", {}, checkbox(r.name)), el("td", {}, r.name), el("td", {}, r.model ?? ""), el("td", {}, r.image_size ?? "default"),
      el("td", { class: "num" }, `${r.epochs_done}/${r.epochs ?? "?"}`),
      el("td", { class: "num" }, r.best_val_roc_auc == null ? "" : `${fmt(r.best_val_roc_auc)} (epoch ${r.best_epoch})`))));
    if (!state.runs.size && runs.length) state.runs.add(runs[runs.length - 1].name);
    for (const b of document.querySelectorAll("#run-list input")) b.checked = state.runs.has(b.value);
    await drawRuns();
  } catch (e) {
    $("#runs-status").textContent = e.message;
  }
  runsTimer = setTimeout(refreshRuns, 5000);
}

function checkbox(name) {
  return el("input", { type: "checkbox", value: name, onchange: (e) => {
    if (e.target.checked) { state.runs.add(name); if (state.runs.size > 2) state.runs.delete([...state.runs][0]); } else state.runs.delete(name);
    refreshRuns();
  } });
}

async function drawRuns() {
  const details = await Promise.all([...state.runs].map((n) => api(`/api/run?name=${encodeURIComponent(n)}`)));
  const charts = [["val_roc_auc", "validation ROC-AUC"], ["train_loss", "training loss"], ["val_loss", "validation loss"]];
  $("#run-charts").replaceChildren(...charts.map(([col, title]) => chart(title, details.map((d) => ({ name: d.name, points: d.epochs.map((e) => [e.epoch, e[col]]) })))),
    ...details.map((d) => el("pre", { class: "config" }, `${d.name}\n${JSON.stringify(d.config, null, 1)}`)));
}

function chart(title, series) {
  const W = 360, H = 200, P = 34;
  const pts = series.flatMap((s) => s.points).filter((p) => Number.isFinite(p[1]));
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H);
  const add = (tag, attrs, text) => { const e = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); if (text !== undefined) e.textContent = text; svg.append(e); };
  add("text", { x: P, y: 12 }, title);
  if (pts.length) {
    const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
    const [x0, x1] = [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)];
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
    const sx = (x) => P + (x - x0) / (x1 - x0) * (W - P - 8), sy = (y) => H - 20 - (y - y0) / (y1 - y0) * (H - 40);
    add("line", { x1: P, y1: H - 20, x2: W - 8, y2: H - 20, stroke: "#99a" });
    add("text", { x: 2, y: sy(y1) + 4 }, y1.toFixed(3)); add("text", { x: 2, y: sy(y0) + 4 }, y0.toFixed(3));
    add("text", { x: P, y: H - 6 }, `epoch ${x0}`); add("text", { x: W - 60, y: H - 6 }, `epoch ${x1}`);
    const colours = ["#4a6cf7", "#e07b00"];
    series.forEach((s, i) => {
      const d = s.points.filter((p) => Number.isFinite(p[1])).map((p) => `${sx(p[0])},${sy(p[1])}`).join(" ");
      add("polyline", { points: d, fill: "none", stroke: colours[i], "stroke-width": 2 });
      add("text", { x: W - 170, y: 26 + 13 * i, fill: colours[i] }, s.name);
    });
  }
  return el("div", { class: "chart" }, svg);
}

loadModel().catch((e) => { $("#model-line").textContent = e.message; });
