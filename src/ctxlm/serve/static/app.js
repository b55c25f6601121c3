// The explorer page of `ctxlm serve`: plain JavaScript over the server's JSON API, no libraries, no network beyond
// the server itself. Panels show only when /info says the model supports them.
"use strict";

const $ = (id) => document.getElementById(id);
const SEGMENT_COLOURS = ["#2f5fa7", "#e07a1f", "#2e8b57", "#9b3fb5", "#c0392b", "#1f8a9e", "#7a6a1f", "#555"];
let INFO = null;

// ---- talking to the server ------------------------------------------------------------------------------------
async function api(path, body, signal) {
  const response = await fetch(path, {
    method: body === undefined ? "GET" : "POST",
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

// One request in flight per view: a newer one aborts the older, so that the view shows the latest text.
function latest(view) {
  let controller = null;
  return async (path, body) => {
    if (controller) controller.abort();
    controller = new AbortController();
    return api(path, body, controller.signal);
  };
}

function status(id, text, isError = false) {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

const visible = (token) => token.replace(/ /g, "\u2423").replace(/\n/g, "\u21b5");  // ␣ for a space, ↵ for a line break
const fmt = (x, digits = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
const lines = (id) => $(id).value.split("\n").map((s) => s.trim()).filter((s) => s.length > 0);

function bars(container, rows) {
  // rows: [{label, value (0..1), chosen}]
  const grid = el("div", { class: "bars" });
  for (const row of rows) {
    const bar = el("div", { class: "bar" + (row.chosen ? " chosen" : "") });
    bar.style.width = `${Math.max(0.5, 100 * row.value)}%`;
    grid.append(el("span", { class: "bar-label", text: row.label }), el("div", {}, bar),
      el("span", { text: fmt(row.value) }));
  }
  container.append(grid);
}

// ---- tokens ---------------------------------------------------------------------------------------------------
const tokenizeLatest = latest("tokens");
async function showTokens(text) {
  const data = await tokenizeLatest("/tokenize", { text });
  const box = $("tokens");
  box.replaceChildren();
  let group = null;
  let groupWord = undefined;
  data.tokens.forEach((token, i) => {
    const word = data.word_ids[i];
    const special = data.special[i];
    if (group === null || special || word === null || word !== groupWord) {
      group = el("span", { class: "word" + (special ? " special" : "") });
      box.append(group);
      groupWord = special ? undefined : word;
    }
    const chip = el("span", { class: "token", title: `piece "${data.pieces[i]}", characters ${data.offsets[i][0]}–${data.offsets[i][1]}, entry ${token}` },
      el("span", { class: "text", text: visible(data.display[i]) }), el("span", { class: "id", text: String(data.ids[i]) }));
    chip.dataset.index = i;
    group.append(chip);
  });
  $("token-count").textContent = `${data.count} tokens` + (data.fits ? "" : ` — over the model's ${data.max_positions}`);
}

// ---- attention ------------------------------------------------------------------------------------------------
const attentionLatest = latest("attention");
let ATTENTION = null;
let SELECTED_HEAD = 0;

function heat(weight) {  // 0 → white, 1 → the accent colour
  const w = Math.min(1, Math.max(0, weight)) ** 0.6;
  const r = Math.round(255 - w * (255 - 47)), g = Math.round(255 - w * (255 - 95)), b = Math.round(255 - w * (255 - 167));
  return `rgb(${r},${g},${b})`;
}

function drawMatrix(canvas, matrix, labels) {
  const n = matrix.length;
  const ctx = canvas.getContext("2d");
  if (!labels) {
    canvas.width = n; canvas.height = n;
    for (let q = 0; q < n; q++) for (let k = 0; k < n; k++) { ctx.fillStyle = heat(matrix[q][k]); ctx.fillRect(k, q, 1, 1); }
    return;
  }
  const margin = 90, size = Math.max(8, Math.min(24, Math.floor(360 / n)));
  canvas.width = margin + n * size + 4; canvas.height = margin + n * size + 4;
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.font = `${Math.min(12, size)}px sans-serif`;
  ctx.fillStyle = "#1d2430";
  labels.forEach((label, i) => {
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    ctx.fillText(label.slice(0, 12), margin - 4, margin + i * size + size / 2);
    ctx.save(); ctx.translate(margin + i * size + size / 2, margin - 4); ctx.rotate(-Math.PI / 3);
    ctx.textAlign = "left"; ctx.fillText(label.slice(0, 12), 0, 0); ctx.restore();
  });
  for (let q = 0; q < n; q++) for (let k = 0; k < n; k++) {
    ctx.fillStyle = heat(matrix[q][k]); ctx.fillRect(margin + k * size, margin + q * size, size, size);
  }
}

function showHead(head) {
  SELECTED_HEAD = head;
  const layerIndex = 0;
  const matrix = ATTENTION.attention[layerIndex][head];
  const layer = ATTENTION.layer_numbers[layerIndex];
  document.querySelectorAll(".head").forEach((node) => node.classList.toggle("selected", Number(node.dataset.head) === head));
  $("attn-detail-title").textContent = `layer ${layer}, head ${head + 1}`;
  const canvas = $("attn-detail");
  canvas.dataset.layer = layer; canvas.dataset.head = head + 1;
  drawMatrix(canvas, matrix, ATTENTION.display.map(visible));
  const list = $("attn-top");
  list.replaceChildren();
  matrix.forEach((row, q) => {
    let best = 0;
    row.forEach((w, k) => { if (w > row[best]) best = k; });
    const item = el("li", { text: `${visible(ATTENTION.display[q])} → ${visible(ATTENTION.display[best])}  ${fmt(row[best], 2)}` });
    item.dataset.query = q; item.dataset.key = best;
    list.append(item);
  });
}

async function showAttention(text) {
  const layer = Number($("attn-layer").value || INFO.layers);
  status("attn-status", "…");
  ATTENTION = await attentionLatest("/attention", { text, layer });
  const grid = $("attn-grid");
  grid.replaceChildren();
  ATTENTION.attention[0].forEach((matrix, head) => {
    const canvas = el("canvas");
    drawMatrix(canvas, matrix);
    const cell = el("div", { class: "head" }, canvas, el("div", { text: `head ${head + 1}` }));
    cell.dataset.head = head;
    cell.addEventListener("click", () => showHead(head));
    grid.append(cell);
  });
  showHead(Math.min(SELECTED_HEAD, ATTENTION.heads - 1));
  status("attn-status", `${ATTENTION.tokens.length} tokens, ${ATTENTION.heads} heads`);
}

// ---- the polysemy view ----------------------------------------------------------------------------------------
function lineChart(svg, values, names) {
  const width = 420, height = 200, left = 40, right = 10, top = 10, bottom = 30;
  const lo = Math.min(0, ...values), hi = 1;
  const x = (i) => left + (values.length === 1 ? 0 : (i * (width - left - right)) / (values.length - 1));
  const y = (v) => top + ((hi - v) * (height - top - bottom)) / (hi - lo || 1);
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const add = (tag, attributes, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  for (const tick of [lo, (lo + hi) / 2, hi]) {
    add("line", { x1: left, x2: width - right, y1: y(tick), y2: y(tick), stroke: "#d0d5dd" });
    add("text", { x: left - 4, y: y(tick) + 4, "text-anchor": "end", "font-size": 10, fill: "#667085" }, tick.toFixed(1));
  }
  add("polyline", { points: values.map((v, i) => `${x(i)},${y(v)}`).join(" "), fill: "none", stroke: "#2f5fa7", "stroke-width": 2 });
  values.forEach((v, i) => {
    add("circle", { cx: x(i), cy: y(v), r: 3.5, fill: "#2f5fa7" }).append(
      Object.assign(document.createElementNS(ns, "title"), { textContent: `${names[i]}: ${v.toFixed(3)}` }));
    add("text", { x: x(i), y: height - 12, "text-anchor": "middle", "font-size": 10, fill: "#667085" }, String(i));
  });
  add("text", { x: (left + width) / 2, y: height - 1, "text-anchor": "middle", "font-size": 10, fill: "#667085" },
    "layer (0 = embeddings)");
}

async function showLayers() {
  const sentences = lines("poly-sentences");
  const word = $("poly-word").value.trim();
  status("poly-status", "…");
  try {
    const data = await api("/layers", { sentences, word });
    lineChart($("poly-chart"), data.mean_cosine, data.layer_names);
    const table = $("poly-table");
    table.replaceChildren();
    const pairs = [];
    for (let a = 0; a < data.found.length; a++) for (let b = a + 1; b < data.found.length; b++) pairs.push([a, b]);
    table.append(el("tr", {}, el("th", { text: "layer" }), el("th", { text: "mean cosine" }),
      ...pairs.map(([a, b]) => el("th", { text: `${data.found[a] + 1}·${data.found[b] + 1}` }))));
    data.cosine.forEach((matrix, layer) => {
      const row = el("tr", {}, el("td", { text: data.layer_names[layer] }), el("td", { class: "mean", text: fmt(data.mean_cosine[layer]) }),
        ...pairs.map(([a, b]) => el("td", { text: fmt(matrix[a][b]) })));
      row.dataset.layer = layer;
      table.append(row);
    });
    const missing = sentences.length - data.found.length;
    status("poly-status", `“${data.word}” in ${data.found.length} sentences` + (missing ? ` (${missing} without it)` : ""));
  } catch (err) { status("poly-status", err.message, true); }
}

// ---- BERT's Table 7 combinations ------------------------------------------------------------------------------
async function showNeighbours() {
  const texts = lines("nb-texts");
  status("nb-status", "…");
  try {
    const data = await api("/neighbours", { texts });
    const table = $("nb-table");
    table.replaceChildren();
    table.append(el("tr", {}, el("th", { text: "text" }), ...data.combinations.map((c) => el("th", { text: c.label, title: `${c.dim} numbers` }))));
    texts.forEach((text, i) => {
      table.append(el("tr", {}, el("td", { text: `${i + 1}. ${text.slice(0, 40)}` }),
        ...data.combinations.map((c) => el("td", { text: `→ ${c.nearest[i] + 1} (${fmt(c.nearest_cosine[i], 2)})` }))));
    });
    status("nb-status", "each cell: the nearest other text, and its cosine");
  } catch (err) { status("nb-status", err.message, true); }
}

// ---- masked words ---------------------------------------------------------------------------------------------
async function showFill() {
  status("fill-status", "…");
  try {
    const data = await api("/fill-mask", { text: $("fill-text").value, top_k: 8 });
    const out = $("fill-out");
    out.replaceChildren();
    data.masks.forEach((mask, i) => {
      out.append(el("h3", { text: `mask ${i + 1}` }));
      bars(out, mask.candidates.map((c, j) => ({ label: visible(c.display), value: c.probability, chosen: j === 0 })));
    });
    status("fill-status", "");
  } catch (err) { status("fill-status", err.message, true); }
}

// ---- generation, streamed -------------------------------------------------------------------------------------
let GENERATION = null;

function showStep(step, index) {
  const box = $("gen-candidates");
  box.replaceChildren();
  $("gen-step-title").textContent = `step ${index + 1}: drew “${visible(step.display)}” (p = ${fmt(step.probability)})`;
  bars(box, step.candidates.map((c) => ({ label: visible(c.display), value: c.probability, chosen: c.id === step.id })));
  document.querySelectorAll("#gen-text .step").forEach((node) => node.classList.toggle("selected", Number(node.dataset.index) === index));
}

async function generate() {
  const topK = Number($("gen-top-k").value);
  const body = {
    prompt: $("gen-prompt").value, max_new_tokens: Number($("gen-max").value), stream: true,
    temperature: Number($("gen-temperature").value), top_p: Number($("gen-top-p").value), candidates: 8,
    ...(topK > 0 ? { top_k: topK } : {}), ...($("gen-seed").value !== "" ? { seed: Number($("gen-seed").value) } : {}),
  };
  if (GENERATION) GENERATION.abort();
  GENERATION = new AbortController();
  const steps = [];
  const text = $("gen-text");
  text.replaceChildren(el("span", { class: "prompt", text: body.prompt }));
  $("gen-run").disabled = true; $("gen-stop").disabled = false;
  status("gen-status", "generating…");
  try {
    const response = await fetch("/generate", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body), signal: GENERATION.signal });
    if (!response.ok) throw new Error((await response.json()).error);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const kind = (event.match(/^event: (.*)$/m) || [null, "message"])[1];
        const data = JSON.parse((event.match(/^data: (.*)$/m) || [null, "{}"])[1]);
        if (kind === "error") throw new Error(data.error);
        if (kind === "done") { status("gen-status", `${data.steps} tokens (${data.finished === "eos" ? "end of text" : "length"})`); continue; }
        const index = steps.length;
        steps.push(data);
        // what this step added to the text (a byte-level token that is part of a character adds nothing yet)
        const span = el("span", { class: "step", text: data.piece || "·", title: `${visible(data.display)} p=${fmt(data.probability)}` });
        span.dataset.index = index;
        span.addEventListener("click", () => showStep(steps[index], index));
        text.append(span);
        showStep(data, index);
      }
    }
  } catch (err) {
    if (err.name !== "AbortError") status("gen-status", err.message, true);
    else status("gen-status", `stopped after ${steps.length} tokens`);
  } finally {
    $("gen-run").disabled = false; $("gen-stop").disabled = true;
  }
}

// ---- Transformer-XL's memory ----------------------------------------------------------------------------------
async function showMemory() {
  status("mem-status", "…");
  try {
    const memLen = $("mem-len").value;
    const data = await api("/memory", { segments: lines("mem-segments"), ...(memLen !== "" ? { mem_len: Number(memLen) } : {}) });
    const out = $("mem-out");
    out.replaceChildren();
    data.segments.forEach((segment) => {
      const row = el("div", { class: "mem-row" });
      row.append(el("h3", { text: `segment ${segment.segment + 1}: ${segment.tokens.join(" ")}` }));
      const chips = el("div", {}, el("span", { class: "note", text: segment.memory.length ? "memory: " : "memory: empty" }));
      for (const held of segment.memory) {
        const chip = el("span", { class: "chip", text: held.token, title: `from segment ${held.segment + 1}` });
        chip.style.background = SEGMENT_COLOURS[held.segment % SEGMENT_COLOURS.length];
        chips.append(chip);
      }
      row.append(chips);
      const top = segment.attention_by_segment[segment.attention_by_segment.length - 1];
      bars(row, top.map((share, s) => ({ label: s === segment.segment ? "this segment" : `segment ${s + 1}`, value: share })));
      out.append(row);
    });
    status("mem-status", `memory of ${data.mem_len} positions; bars: the top layer's attention by segment`);
  } catch (err) { status("mem-status", err.message, true); }
}

// ---- a fine-tuned run's prediction ----------------------------------------------------------------------------
const PREDICT_HELP = {
  single: "a text", pair: "two texts, one per line", choice: "the context on the first line, one choice per line",
  tag: "a sentence (words separated by spaces)", span: "the question on the first line, the passage below",
};

function predictInput(kind) {
  const all = $("predict-input").value;
  const rows = all.split("\n").filter((s) => s.trim().length > 0);
  if (kind === "pair") return [rows[0] || "", rows[1] || ""];
  if (kind === "choice") return { context: rows[0] || "", choices: rows.slice(1) };
  if (kind === "span") return { question: rows[0] || "", context: rows.slice(1).join("\n") };
  return all.trim();
}

async function showPrediction() {
  const kind = INFO.task.kind;
  status("predict-status", "…");
  try {
    const data = await api("/predict", { inputs: [predictInput(kind)] });
    const result = data.predictions[0];
    const out = $("predict-out");
    out.replaceChildren();
    if (kind === "span") {
      out.append(el("p", { class: "predicted", text: result.answer || "(no answer)" }));
      bars(out, result.n_best.map((a, i) => ({ label: a.answer, value: a.probability, chosen: i === 0 })));
    } else if (kind === "tag") {
      out.append(el("p", { class: "predicted", text: result.words.map((w, i) => `${w}/${result.label[i]}`).join(" ") }));
    } else if (result.probabilities === undefined) {
      out.append(el("p", { class: "predicted", text: `score ${result.label}` }));
    } else if (kind === "choice") {
      out.append(el("p", { class: "predicted", text: `choice ${result.label + 1}` }));
      bars(out, result.probabilities.map((p, i) => ({ label: `choice ${i + 1}`, value: p, chosen: i === result.label })));
    } else {
      out.append(el("p", { class: "predicted", text: `${result.label} (${fmt(result.probability)})` }));
      bars(out, result.probabilities.map((p) => ({ label: p.label, value: p.probability, chosen: p.label === result.label })));
    }
    status("predict-status", "");
  } catch (err) { status("predict-status", err.message, true); }
}

// ---- wiring ---------------------------------------------------------------------------------------------------
async function onText() {
  const text = $("text").value;
  try {
    const jobs = [showTokens(text)];
    if (INFO.capabilities.attention) jobs.push(showAttention(text));
    await Promise.all(jobs);
    status("input-status", "");
  } catch (err) {
    if (err.name !== "AbortError") status("input-status", err.message, true);
  }
}

async function start() {
  try {
    INFO = await api("/info");
  } catch (err) {
    $("model-line").textContent = `cannot reach the server: ${err.message}`;
    return;
  }
  const kind = INFO.causal ? "decoder" : "encoder";
  $("model-line").textContent = `${INFO.model} · ${INFO.family} ${kind} · ${INFO.layers} layers` +
    (INFO.heads ? ` × ${INFO.heads} heads` : "") + ` · ${INFO.dim} wide` + (INFO.task ? ` · fine-tuned for ${INFO.task.name}` : "");
  document.querySelectorAll("[data-capability]").forEach((panel) => { panel.hidden = !INFO.capabilities[panel.dataset.capability]; });
  const select = $("attn-layer");
  for (let layer = 1; layer <= INFO.layers; layer++) select.append(el("option", { value: String(layer), text: String(layer) }));
  select.value = String(INFO.layers);
  select.addEventListener("change", () => showAttention($("text").value).catch((err) => status("attn-status", err.message, true)));
  if (INFO.mask_token) {
    $("mask-token").textContent = INFO.mask_token;
    $("fill-text").value = `The capital of France is ${INFO.mask_token}.`;
  }
  if (INFO.has_memory) $("mem-len").value = String(Math.min(INFO.mem_len || 8, 8));
  if (INFO.task) {
    $("predict-task").textContent = `${INFO.task.name} (${INFO.task.kind})`;
    $("predict-label").textContent = PREDICT_HELP[INFO.task.kind] || "input";
  }
  if (INFO.causal) {
    $("poly-sentences").value = "I sat on the bank of the river.\nThe bank raised its interest rates.\nShe walked to the bank to get money.";
  }
  for (const [range, output] of [["gen-temperature", "gen-temperature-out"], ["gen-top-p", "gen-top-p-out"]]) {
    $(range).addEventListener("input", () => { $(output).textContent = $(range).value; });
  }
  $("text").addEventListener("input", debounce(onText, 150));
  $("poly-run").addEventListener("click", showLayers);
  $("nb-run").addEventListener("click", showNeighbours);
  $("fill-run").addEventListener("click", showFill);
  $("gen-run").addEventListener("click", generate);
  $("gen-stop").addEventListener("click", () => GENERATION && GENERATION.abort());
  $("mem-run").addEventListener("click", showMemory);
  $("predict-run").addEventListener("click", showPrediction);
  await onText();
  if (INFO.capabilities.layers) await showLayers();
  if (INFO.capabilities.neighbours) await showNeighbours();
  document.body.dataset.ready = "true";
}

start();
