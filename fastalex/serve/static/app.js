// The page of `fastalex serve`: plain JavaScript, no framework, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { generation: 0, blob: null, profiles: {}, model: null };

function setStatus(el, text, busy) {
  el.textContent = text || "";
  el.classList.toggle("busy", !!busy);
}

async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (e) { /* not JSON */ }
  return `HTTP ${response.status}`;
}

async function post(path, blob) {
  const type = blob.type && blob.type.startsWith("image/") ? blob.type : "application/octet-stream";
  const response = await fetch(path, { method: "POST", body: blob, headers: { "Content-Type": type } });
  if (!response.ok) throw new Error(await errorOf(response));
  return response;
}

// ------------------------------------------------------------------ the model

async function loadModel() {
  for (let attempt = 0; ; attempt++) {
    const response = await fetch("/v1/model");
    if (response.ok) return response.json();
    if (response.status !== 503 || attempt > 600) throw new Error(await errorOf(response));
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function describeModel(m) {
  const params = (m.params / 1e6).toFixed(1);
  const macs = (m.macs / 1e9).toFixed(2);
  $("model-line").textContent =
    `AlexNet (${m.variant}), ${m.num_classes} classes, ${params} M parameters, ${macs} GMACs per image · ` +
    `${m.backend} backend, ${m.weight_dtype} dense weights` +
    (m.threading_layer ? `, ${m.threads} threads (${m.threading_layer})` : "") +
    ` · batches of up to ${m.batching.max_batch}`;
  $("random-warning").hidden = !m.random_weights;
  const select = $("layer");
  select.textContent = "";
  for (const layer of m.layers) {
    if (layer.output_shape.length !== 3) continue;  // feature maps: (channels, height, width)
    const option = document.createElement("option");
    option.value = layer.name;
    option.textContent = `${layer.name} ${layer.type} (${layer.output_shape.join("×")})`;
    select.appendChild(option);
  }
  for (const alias of ["fc6", "fc7", "fc8"]) {
    if (!(alias in m.aliases)) continue;
    const option = document.createElement("option");
    option.value = alias;
    option.textContent = `${alias} (${m.aliases[alias]}, a vector, drawn as one map)`;
    select.appendChild(option);
  }
  const preferred = m.layers.find((l) => l.name === "features.1") ? "features.1" : select.value;
  select.value = preferred;
  $("filters").src = "/v1/filters";
}

// ------------------------------------------------------------------ a photo

async function usePhoto(blob) {
  const generation = ++state.generation;
  const current = () => generation === state.generation;
  state.blob = blob;
  $("input-error").hidden = true;
  const photo = $("photo");
  if (photo.src.startsWith("blob:")) URL.revokeObjectURL(photo.src);
  photo.src = URL.createObjectURL(blob);
  photo.hidden = false;
  $("heat").hidden = true;
  setStatus($("heat-status"), "computing the heat map…", true);
  $("top5").innerHTML = '<li class="status busy">classifying…</li>';

  try {
    const response = await post("/v1/classify?top=5", blob);
    const result = await response.json();
    if (!current()) return;
    showTop(result.top);
  } catch (e) {
    if (!current()) return;
    $("top5").innerHTML = "";
    setStatus($("heat-status"), "");
    showError(e.message);
    return;
  }
  showMaps(generation);
  try {
    const response = await post("/v1/explain", blob);
    const result = await response.json();
    if (!current()) return;
    const heat = $("heat");
    heat.src = result.overlay_png;
    heat.hidden = false;
    heat.title = `${result.label}: p = ${(result.probability * 100).toFixed(1)}%`;
    setStatus($("heat-status"),
      `for ${result.label}: ${result.patch}px grey patch, stride ${result.stride}`);
  } catch (e) {
    if (current()) setStatus($("heat-status"), `no heat map: ${e.message}`);
  }
}

function showError(message) {
  const el = $("input-error");
  el.textContent = message;
  el.hidden = false;
}

function showTop(top) {
  const list = $("top5");
  list.textContent = "";
  for (const entry of top) {
    const li = document.createElement("li");
    li.className = "bar";
    const p = entry.probability || 0;
    const name = entry.label !== null && entry.label !== undefined ? entry.label : `class ${entry.index}`;
    const label = document.createElement("div");
    label.className = "bar-label";
    const a = document.createElement("span");
    a.textContent = name;
    a.title = `class ${entry.index}`;
    const b = document.createElement("span");
    b.textContent = `${(p * 100).toFixed(1)}%`;
    label.append(a, b);
    const track = document.createElement("div");
    track.className = "bar-track";
    const fill = document.createElement("div");
    fill.className = "bar-fill";
    fill.style.width = `${Math.max(0.5, p * 100).toFixed(2)}%`;
    track.appendChild(fill);
    li.append(label, track);
    list.appendChild(li);
  }
}

async function showMaps(generation) {
  if (!state.blob) return;
  generation = generation || state.generation;
  const layer = $("layer").value || "features.1";
  setStatus($("maps-status"), `computing the feature maps of ${layer}…`, true);
  try {
    const response = await post(`/v1/activations?layer=${encodeURIComponent(layer)}`, state.blob);
    const blob = await response.blob();
    if (generation !== state.generation) return;
    const img = $("activations");
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(blob);
    img.hidden = false;
    setStatus($("maps-status"), "");
  } catch (e) {
    if (generation === state.generation) setStatus($("maps-status"), `no feature maps: ${e.message}`);
  }
}

// ------------------------------------------------------------------ timings

async function timeBackend(backend) {
  const button = $(`time-${backend}`);
  button.disabled = true;
  const note = backend === "numpy" ? " (the NumPy reference takes a while: seconds to a minute)" : "";
  setStatus($("timing-status"), `computing: timing the ${backend} path${note}…`, true);
  try {
    const response = await fetch(`/v1/profile?backend=${backend}`);
    if (!response.ok) throw new Error(await errorOf(response));
    state.profiles[backend] = await response.json();
    setStatus($("timing-status"), "");
    drawTimings();
  } catch (e) {
    setStatus($("timing-status"), `cannot time ${backend}: ${e.message}`);
  } finally {
    button.disabled = false;
  }
}

function drawTimings() {
  const chart = $("timing-chart");
  chart.textContent = "";
  const backends = ["numba", "numpy"].filter((b) => state.profiles[b]);
  if (!backends.length) return;
  const rows = state.profiles[backends[0]].rows;
  const max = Math.max(...backends.flatMap((b) => state.profiles[b].rows.map((r) => r.ms)));
  const legend = document.createElement("div");
  legend.className = "legend";
  for (const b of backends) {
    const p = state.profiles[b];
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.className = b;
    item.append(swatch, `${b}: ${p.total_ms.toFixed(1)} ms per image` +
      (p.repeat > 1 ? ` (median of ${p.repeat})` : " (one run)"));
    legend.appendChild(item);
  }
  if (backends.length === 2) {
    const speedup = state.profiles.numpy.total_ms / state.profiles.numba.total_ms;
    const item = document.createElement("span");
    item.textContent = `numba is ${speedup.toFixed(1)}× faster`;
    legend.appendChild(item);
  }
  chart.appendChild(legend);
  rows.forEach((row, i) => {
    const line = document.createElement("div");
    line.className = "row";
    const name = document.createElement("div");
    name.className = "name";
    name.textContent = row.name;
    name.title = `${row.name} ${row.type}, output ${row.output_shape.join("×")}`;
    const bars = document.createElement("div");
    bars.className = "pairbar";
    for (const b of backends) {
      const r = state.profiles[b].rows[i];
      const bar = document.createElement("div");
      bar.className = b;
      bar.style.width = `${Math.max(0.2, (r.ms / max) * 85).toFixed(2)}%`;
      bar.title = `${b}: ${r.ms.toFixed(2)} ms`;
      const ms = document.createElement("span");
      ms.className = "ms";
      ms.textContent = `${r.ms.toFixed(r.ms < 10 ? 2 : 0)} ms`;
      const wrap = document.createElement("div");
      wrap.style.display = "flex";
      wrap.style.alignItems = "center";
      wrap.style.gap = "4px";
      wrap.append(bar, ms);
      bars.appendChild(wrap);
    }
    line.append(name, bars);
    chart.appendChild(line);
  });
}

// ------------------------------------------------------------------ wiring

function wire() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => {
    const file = event.target.files && event.target.files[0];
    if (file) usePhoto(file);
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files && event.dataTransfer.files[0];
    if (file) usePhoto(file);
  });
  for (const button of document.querySelectorAll(".sample")) {
    button.addEventListener("click", async () => {
      const response = await fetch(button.dataset.src);
      usePhoto(await response.blob());
    });
  }
  $("layer").addEventListener("change", () => showMaps());
  $("time-numba").addEventListener("click", () => timeBackend("numba"));
  $("time-numpy").addEventListener("click", () => timeBackend("numpy"));
}

wire();
loadModel().then((m) => { state.model = m; describeModel(m); })
  .catch((e) => { $("model-line").textContent = `cannot reach the model: ${e.message}`; });
