// undiffuse studio: the page. No framework, no network beyond this server.
"use strict";

const $ = (sel) => document.querySelector(sel);
const $$ = (sel) => Array.from(document.querySelectorAll(sel));
const S = {
  info: null, models: [], samplers: [], jobs: [], follow: null, task: null, shownPreview: null, shownResult: null,
  image: null, historyOffset: 0, historyStale: true, run: null, runTimer: null, events: null, pollTimer: null,
};
const TASK_LABEL = { generate: "Generate", inpaint: "Inpaint", upscale: "Upscale", edit: "Edit", denoise: "Denoise" };
const TASK_HINT = {
  inpaint: "Paint the part to fill (shown in red); the rest of the image is kept exactly.",
  upscale: "The image is shrunk to 1/factor of the model's size; the result averages back down to it exactly.",
  edit: "SDEdit: the image is noised to the strength and denoised towards the class or prompt.",
  denoise: "The noise level σ is estimated from the image unless you give it.",
};

// ------------------------------------------------------------------ helpers
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}

async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (method !== "GET") {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body ?? {});
  }
  let res;
  try { res = await fetch(path, opts); } catch (e) { throw new Error("the studio is not reachable: is it still running?"); }
  let data = null;
  try { data = await res.json(); } catch (e) { data = { error: `${res.status} ${res.statusText}` }; }
  if (!res.ok) throw new Error(data && data.error ? data.error : `${res.status}`);
  return data;
}

function seconds(s) {
  if (s === null || s === undefined) return "";
  if (s < 60) return `${Math.max(0, Math.round(s))} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

function numOrText(v) { const x = Number(v); return v !== "" && Number.isFinite(x) ? x : v; }

function readFile(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(new Error(`cannot read ${file.name}`));
    r.readAsDataURL(file);
  });
}

async function urlToDataURL(url) {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`cannot load ${url}`);
  return readFile(await res.blob());
}

function loadImg(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("that file is not an image the browser can show"));
    img.src = src;
  });
}

function modelCard() { return S.models.find((m) => m.id === $("#model").value) || null; }
function showError(msg) { const e = $("#form-error"); e.textContent = msg; e.hidden = !msg; }

// ------------------------------------------------------------------ the form
function fillSelect(select, options, value) {
  select.replaceChildren(...options.map((o) => el("option", { value: o.value, text: o.label })));
  if (value !== undefined && options.some((o) => o.value === value)) select.value = value;
}

function fillModels() {
  const sel = $("#model");
  const keep = sel.value || localStorage.getItem("studio.model");
  const groups = [["shipped", "Shipped models"], ["run", "Trained runs"]];
  sel.replaceChildren(...groups.map(([kind, label]) => {
    const items = S.models.filter((m) => m.kind === kind);
    return items.length ? el("optgroup", { label }, items.map((m) => el("option", { value: m.id, text: m.id }))) : null;
  }).filter(Boolean));
  if (keep && S.models.some((m) => m.id === keep)) sel.value = keep;
  fillSelect($("#autoguide"), [{ value: "", label: "off (classifier-free)" },
    ...S.models.map((m) => ({ value: m.id, label: m.id }))]);
}

function onModelChange(defaults = true) {
  const m = modelCard();
  if (!m) return;
  localStorage.setItem("studio.model", m.id);
  const task = $("#task").value;
  fillSelect($("#task"), m.tasks.map((t) => ({ value: t, label: TASK_LABEL[t] })), task || "generate");
  $("#prompt-field").hidden = !m.text;
  $("#class-field").hidden = !m.classes.length;
  $("#guidance-field").hidden = !(m.text || m.classes.length);
  $("#model-info").textContent = `${m.image_size}×${m.image_size}, ${m.channels === 1 ? "grey" : "colour"}, ` +
    `${m.space}, ${m.backbone}, ${m.parameterization}-prediction` + (m.step ? `, trained ${m.step} steps` : "") +
    (m.text ? " · takes a prompt" : m.classes.length ? ` · ${m.classes.length} classes` : " · unconditional");
  if (defaults) {
    const d = m.defaults;
    $("#sampler").value = d.sampler; $("#grid").value = d.grid; $("#steps").value = d.steps; $("#guidance").value = d.guidance;
    $("#eps_scale").value = d.eps_scale;
    $("#guidance_parallel").value = d.guidance_parallel;
    S.task = null;   // the card's sampler and steps are in the form now, whatever the task
  }
  onTaskChange();
}

function onTaskChange() {
  const m = modelCard();
  const task = $("#task").value || "generate";
  if (m && (task === "denoise") !== (S.task === "denoise")) {   // denoise samples as `undiffuse denoise` does
    const d = task === "denoise" ? m.task_defaults.denoise : m.defaults;
    $("#sampler").value = d.sampler; $("#steps").value = d.steps;
  }
  S.task = task;
  const cls = $("#class").value;
  if (m) fillSelect($("#class"), [{ value: "", label: task === "generate" ? "all classes in turn" : "no class" },
    ...m.classes.map((c) => ({ value: c, label: c }))], cls);
  $("#task-input").hidden = task === "generate";
  $("#brush-tools").hidden = task !== "inpaint";
  $("#image-zone").classList.toggle("inpaint", task === "inpaint");
  $$(".opt").forEach((o) => { o.hidden = true; });
  const opts = { edit: ["strength"], upscale: ["factor", "strength"], denoise: ["sigma"], inpaint: ["resample"] }[task] || [];
  opts.forEach((o) => { $(`.opt-${o}`).hidden = false; });
  $("#strength").placeholder = task === "upscale" ? "1 (from noise)" : "0.6";
  $("#n").disabled = task === "denoise";
  $("#task-hint").textContent = TASK_HINT[task] || "";
  $("#submit").textContent = TASK_LABEL[task];
}

function collect() {
  const m = modelCard();
  if (!m) throw new Error("choose a model");
  const task = $("#task").value || "generate";
  const body = { task, model: m.id, sampler: $("#sampler").value, grid: $("#grid").value,
    precision: $("#precision").value, clip_x0: $("#clip_x0").checked };
  if (m.text) body.prompt = $("#prompt").value;
  if (m.classes.length) body.class = $("#class").value || null;
  const fields = ["steps", "n", "sigma_min", "sigma_max", "rho", "eps_scale", "guidance_rescale", "guidance_parallel",
    "preview_every"];
  if (m.text || m.classes.length) fields.push("guidance");
  if (task === "denoise") fields.splice(fields.indexOf("n"), 1);
  for (const id of fields) {
    const input = $(`#${id}`);
    if (input.validity && input.validity.badInput) throw new Error(`${id.replace("_", " ")} is not a number`);
    const v = input.value.trim();
    if (v !== "") body[id] = numOrText(v);
  }
  const seed = $("#seed").value.trim();
  body.seed = seed === "" || seed === "random" ? "random" : numOrText(seed);
  const interval = $("#guidance_interval").value.trim();
  if (interval) body.guidance_interval = interval;
  if ($("#autoguide").value) body.autoguide = $("#autoguide").value;
  if (task !== "generate") {
    if (!S.image) throw new Error(`${task} needs an image: drop one on the image box or choose one`);
    body.image = S.image;
    const own = { edit: ["strength"], upscale: ["factor", "strength"], denoise: ["sigma"], inpaint: ["resample"] }[task];
    for (const id of own) { const v = $(`#${id}`).value.trim(); if (v !== "") body[id] = numOrText(v); }
    if (task === "inpaint") body.mask = Mask.dataURL();
  }
  return body;
}

async function submit(ev) {
  ev.preventDefault();
  showError("");
  let body;
  try { body = collect(); } catch (e) { showError(e.message); return; }
  $("#submit").disabled = true;
  try {
    const job = await api("POST", "/api/jobs", body);
    S.follow = job.id;
    S.shownResult = null;
    mergeJob(job);
    renderAll();
  } catch (e) {
    showError(e.message);
  } finally {
    $("#submit").disabled = false;
  }
}

function setField(id, value) {
  const input = $(`#${id}`);
  if (!input || value === undefined) return;
  if (input.type === "checkbox") input.checked = !!value;
  else input.value = value === null ? "" : Array.isArray(value) ? value.join(",") : String(value);
}

async function applySettings(s, inputs = {}) {
  const notes = [];
  if (s.model && S.models.some((m) => m.id === s.model)) {
    $("#model").value = s.model;
    onModelChange(true);
  } else if (s.model) notes.push(`the model ${s.model} is not offered here`);
  const m = modelCard();
  if (s.task && m && m.tasks.includes(s.task)) { $("#task").value = s.task; onTaskChange(); }
  if (s.class !== undefined && m && m.classes.length) {
    const byIndex = /^\d+$/.test(String(s.class)) ? m.classes[Number(s.class)] : null;
    $("#class").value = s.class === null ? "" : (m.classes.includes(s.class) ? s.class : byIndex || "");
  }
  for (const id of ["prompt", "sampler", "grid", "steps", "n", "guidance", "seed", "sigma_min", "sigma_max", "rho",
    "eps_scale", "guidance_interval", "guidance_rescale", "guidance_parallel", "autoguide", "precision", "clip_x0",
    "preview_every",
    "strength", "factor", "sigma", "resample"]) {
    if (s[id] !== undefined && !(id === "autoguide" && s[id] === null)) setField(id, s[id]);
  }
  const advanced = ["sigma_min", "sigma_max", "guidance_interval", "autoguide"].some((k) => s[k]) ||
    (s.rho && s.rho !== 7) || (s.eps_scale && s.eps_scale !== 1) || s.guidance_rescale || s.clip_x0;
  if (advanced) $("#advanced").open = true;
  if (inputs.input) await setImage(await urlToDataURL(inputs.input));
  if (inputs.mask) await Mask.load(inputs.mask);
  return notes;
}

// ------------------------------------------------------------------ image input and the mask brush
async function setImage(dataURL) {
  const img = await loadImg(dataURL);
  S.image = dataURL;
  const c = $("#image-canvas");
  const ctx = c.getContext("2d");
  const side = Math.min(img.width, img.height);   // the model's loader centre-crops to a square, so does the view
  ctx.imageSmoothingEnabled = img.width > c.width;
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, c.width, c.height);
  ctx.drawImage(img, (img.width - side) / 2, (img.height - side) / 2, side, side, 0, 0, c.width, c.height);
  $("#image-zone").classList.add("has-image");
  $("#image-hint").firstChild.textContent = "Drop another image or ";
  Mask.clear();
}

const Mask = {
  off: null, painting: false, last: null,
  init() {
    this.off = document.createElement("canvas");
    this.off.width = this.off.height = 256;
    const view = $("#mask-canvas");
    view.addEventListener("pointerdown", (e) => { this.painting = true; this.last = null; view.setPointerCapture(e.pointerId); this.paint(e); });
    view.addEventListener("pointermove", (e) => { if (this.painting) this.paint(e); });
    const stop = () => { this.painting = false; this.last = null; };
    view.addEventListener("pointerup", stop);
    view.addEventListener("pointercancel", stop);
    $("#mask-clear").addEventListener("click", () => this.clear());
    $("#mask-all").addEventListener("click", () => this.fillAll());
    this.clear();
  },
  paint(e) {
    const view = $("#mask-canvas");
    const r = view.getBoundingClientRect();
    const p = { x: (e.clientX - r.left) * view.width / r.width, y: (e.clientY - r.top) * view.height / r.height };
    const size = Number($("#brush").value);
    for (const [ctx, colour] of [[this.off.getContext("2d"), "#fff"], [view.getContext("2d"), "rgba(255,40,40,0.55)"]]) {
      ctx.strokeStyle = ctx.fillStyle = colour;
      ctx.lineWidth = size; ctx.lineCap = "round";
      ctx.beginPath();
      if (this.last) { ctx.moveTo(this.last.x, this.last.y); ctx.lineTo(p.x, p.y); ctx.stroke(); }
      ctx.beginPath(); ctx.arc(p.x, p.y, size / 2, 0, Math.PI * 2); ctx.fill();
    }
    this.last = p;
    this.painted = true;
  },
  clear() {
    const ctx = this.off.getContext("2d");
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, 256, 256);
    $("#mask-canvas").getContext("2d").clearRect(0, 0, 256, 256);
    this.painted = false;
  },
  fillAll() {
    this.off.getContext("2d").fillStyle = "#fff";
    this.off.getContext("2d").fillRect(0, 0, 256, 256);
    const v = $("#mask-canvas").getContext("2d");
    v.fillStyle = "rgba(255,40,40,0.55)"; v.fillRect(0, 0, 256, 256);
    this.painted = true;
  },
  async load(url) {
    const img = await loadImg(url);
    this.clear();
    this.off.getContext("2d").drawImage(img, 0, 0, 256, 256);
    const data = this.off.getContext("2d").getImageData(0, 0, 256, 256);
    const view = $("#mask-canvas").getContext("2d");
    const shown = view.createImageData(256, 256);
    for (let i = 0; i < data.data.length; i += 4) {
      if (data.data[i] > 127) { shown.data[i] = 255; shown.data[i + 1] = 40; shown.data[i + 2] = 40; shown.data[i + 3] = 140; }
    }
    view.putImageData(shown, 0, 0);
    this.painted = true;
  },
  dataURL() {
    if (!this.painted) throw new Error("paint the part to fill on the image first");
    return this.off.toDataURL("image/png");
  },
};

// ------------------------------------------------------------------ recall from a PNG
async function recall(file) {
  const note = $("#recall-note");
  note.hidden = false;
  try {
    const res = await api("POST", "/api/recall", { image: await readFile(file) });
    const notes = await applySettings(res.settings);
    note.textContent = `Settings recalled from ${file.name}.` + [...res.warnings, ...notes].map((w) => ` Note: ${w}.`).join("");
    note.className = "hint";
    location.hash = "#generate";
  } catch (e) {
    note.textContent = `${file.name}: ${e.message}`;
    note.className = "error";
  }
}

function setupDrops() {
  const zone = $("#image-zone");
  const veil = $("#drop-veil");
  let depth = 0;
  const hasFiles = (e) => e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files");
  document.addEventListener("dragenter", (e) => { if (hasFiles(e)) { depth++; veil.hidden = false; } });
  document.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (!depth) veil.hidden = true; });
  document.addEventListener("dragover", (e) => { if (hasFiles(e)) e.preventDefault(); });
  document.addEventListener("drop", (e) => {
    depth = 0; veil.hidden = true;
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (!file) return;
    e.preventDefault();
    if (zone.contains(e.target) && !$("#task-input").hidden) readFile(file).then(setImage).catch((err) => showError(err.message));
    else recall(file);
  });
  zone.addEventListener("dragover", () => zone.classList.add("over"));
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", () => zone.classList.remove("over"));
  $("#image-file").addEventListener("change", async (e) => {
    const f = e.target.files[0];
    if (f) { try { await setImage(await readFile(f)); } catch (err) { showError(err.message); } }
    e.target.value = "";
  });
  $("#recall-file").addEventListener("change", (e) => { if (e.target.files[0]) recall(e.target.files[0]); e.target.value = ""; });
}

// ------------------------------------------------------------------ the queue and the job being watched
function mergeJob(job) {
  const i = S.jobs.findIndex((j) => j.id === job.id);
  if (i >= 0) S.jobs[i] = job; else S.jobs.push(job);
}

function onJobs(data) {
  const before = new Map(S.jobs.map((j) => [j.id, j.state]));
  S.jobs = data.jobs;
  if (S.jobs.some((j) => j.state === "done" && before.get(j.id) !== "done")) {
    S.historyStale = true;
    if (!$("#view-history").hidden) loadHistory(true);
  }
  renderAll();
}

function watched() {
  const mine = S.jobs.find((j) => j.id === S.follow);
  if (mine) return mine;
  return S.jobs.find((j) => j.state === "running") || null;   // another tab's job: watch it too
}

function describe(job) {
  const s = job.settings;
  const what = s.prompt ? `“${s.prompt}”` : s.class || "";
  return [TASK_LABEL[job.task], job.model, what].filter(Boolean).join(" · ");
}

function renderQueue() {
  const list = $("#queue");
  const order = { running: 0, queued: 1 };
  const jobs = [...S.jobs].sort((a, b) => (order[a.state] ?? 2) - (order[b.state] ?? 2) ||
    ((order[a.state] ?? 2) < 2 ? a.created - b.created : b.created - a.created)).slice(0, 40);
  list.replaceChildren(...jobs.map((j) => el("li", { "data-id": j.id, "data-state": j.state },
    el("div", { class: "top" },
      el("a", { href: "#generate", text: describe(j), onclick: () => { S.follow = j.id; S.shownResult = null; renderAll(); } }),
      el("span", { class: `badge state-${j.state}`, text: j.cancel_requested && j.state === "running" ? "cancelling" : j.state })),
    el("div", { class: "hint", text: `${j.settings.n} × ${j.settings.steps} steps · seed ${j.settings.seed}` +
      (j.state === "running" ? ` · ${j.phase} · ${Math.round(j.progress * 100)}%` : "") }),
    j.state === "running" ? el("div", { class: "mini" }, el("div", { style: `width:${j.progress * 100}%` })) : null,
    j.error ? el("div", { class: "err", text: j.error }) : null,
    ["queued", "running"].includes(j.state) && !j.cancel_requested ?
      el("button", { type: "button", class: "cancel-job", text: "Cancel", onclick: () => cancel(j.id) }) : null)));
  $("#queue-empty").hidden = S.jobs.length > 0;
  const running = S.jobs.filter((j) => j.state === "running").length;
  const waiting = S.jobs.filter((j) => j.state === "queued").length;
  $("#queue-count").textContent = running || waiting ? `${running} running · ${waiting} waiting` : "idle";
  document.title = running ? `(${Math.round((watched() || { progress: 0 }).progress * 100)}%) undiffuse studio` : "undiffuse studio";
}

function renderCurrent() {
  const job = watched();
  const preview = $("#preview"), result = $("#result"), status = $("#status");
  $("#cancel").hidden = !job || !["queued", "running"].includes(job.state) || job.cancel_requested;
  status.className = "status";
  if (!job) { $("#progress").style.width = "0"; return; }
  $("#stage-empty").hidden = true;
  $("#current-title").textContent = describe(job);
  const s = job.settings;
  const seed = `seed ${s.seed}${s.random_seed ? " (drawn at random)" : ""}`;
  $("#progress").style.width = `${(job.state === "done" ? 1 : job.progress) * 100}%`;
  const thumbs = $("#result-images");
  if (job.state !== "done" && thumbs.dataset.job !== job.id) { thumbs.replaceChildren(); thumbs.dataset.job = job.id; }
  if (job.state === "queued") {
    const ahead = S.jobs.filter((j) => (j.state === "queued" && j.created < job.created) || j.state === "running").length;
    status.textContent = `waiting: ${ahead} job${ahead === 1 ? "" : "s"} ahead · ${seed}`;
  } else if (job.state === "running") {
    const eta = job.eta !== null ? ` · about ${seconds(job.eta)} left` : "";
    status.textContent = `${job.phase} · ${Math.round(job.progress * 100)}%${eta} · ${seed}`;
    if (job.preview_version && S.shownPreview !== `${job.id}:${job.preview_version}`) {
      S.shownPreview = `${job.id}:${job.preview_version}`;
      preview.src = `/api/jobs/${job.id}/preview.png?v=${job.preview_version}`;
      preview.alt = `x̂₀ at step ${job.preview_step}`;
      preview.dataset.version = job.preview_version;
    }
    preview.hidden = !job.preview_version;
    result.hidden = true;
  } else if (job.state === "done" && job.result) {
    if (S.shownResult !== job.id) {
      S.shownResult = job.id;
      const r = job.result;
      result.src = r.urls.grid || r.urls.images[0];
      result.dataset.job = job.id;
      thumbs.dataset.job = job.id;
      thumbs.replaceChildren(...r.urls.images.map((u) =>
        el("a", { href: u, target: "_blank" }, el("img", { src: u, alt: u.split("/").pop(), title: u.split("/").pop() }))),
        ...players(r));
    }
    result.hidden = false; preview.hidden = true;
    status.replaceChildren(`done in ${seconds(job.result.seconds)} · ${seed} `,
      el("button", { type: "button", id: "reuse-seed", text: "use this seed", onclick: () => setField("seed", s.seed) }));
  } else if (job.state === "failed") {
    status.className = "status error";
    status.textContent = `failed: ${job.error}`;
    preview.hidden = true;
  } else if (job.state === "cancelled") {
    status.textContent = "cancelled";
    preview.hidden = true;
  }
}

function renderAll() { renderQueue(); renderCurrent(); }

async function cancel(id) {
  try { mergeJob(await api("POST", `/api/jobs/${id}/cancel`)); renderAll(); } catch (e) { showError(e.message); }
}

function listen() {
  if (!window.EventSource) return poll();
  const es = new EventSource("/api/events");
  S.events = es;
  es.addEventListener("jobs", (e) => onJobs(JSON.parse(e.data)));
  es.onerror = () => { if (es.readyState === EventSource.CLOSED) poll(); };
}

function poll() {
  clearInterval(S.pollTimer);
  S.pollTimer = setInterval(async () => { try { onJobs(await api("GET", "/api/jobs")); } catch (e) { /* retry */ } }, 1000);
}

// A sound model's result: a player per clip (its name says seed and class), and one of all of them in a row; a video
// model's: each clip as a looping GIF that opens its MP4.
function players(r) {
  const sounds = r.urls.sounds || [];
  const one = (u, label) => el("figure", { class: "sound" }, el("audio", { controls: "", preload: "metadata", src: u }),
    el("figcaption", { text: label }));
  const clip = (u) => el("figure", { class: "clip" }, el("a", { href: u.replace(/\.gif$/, ".mp4"), target: "_blank" },
    el("img", { src: u, alt: u.split("/").pop() })), el("figcaption", { text: u.split("/").pop().replace(/\.gif$/, "") }));
  return [...(r.urls.all_sounds ? [one(r.urls.all_sounds, "all, in a row")] : []),
    ...sounds.map((u) => one(u, u.split("/").pop().replace(/\.wav$/, ""))), ...(r.urls.videos || []).map(clip)];
}

// ------------------------------------------------------------------ history
function meta(s, r) {
  const parts = [["model", s.model], ["task", s.task !== "generate" ? s.task : null], ["prompt", s.prompt],
    ["class", s.class], ["sampler", `${s.sampler}, ${s.steps} steps, ${s.grid}`],
    ["seed", s.n > 1 ? `${s.seed}–${s.seed + s.n - 1}` : s.seed], ["guidance", s.guidance],
    ["strength", s.strength], ["time", r.seconds !== undefined ? seconds(r.seconds) : null]];
  return parts.filter(([, v]) => v !== null && v !== undefined && v !== "").flatMap(([k, v]) => [el("b", { text: `${k} ` }), `${v}  `]);
}

async function loadHistory(reset = false) {
  if (reset) S.historyOffset = 0;
  let data;
  try { data = await api("GET", `/api/history?offset=${S.historyOffset}&limit=24`); } catch (e) { return; }
  const cards = data.items.map((r) => el("div", { class: "card", "data-id": r.id },
    el("a", { href: r.urls.grid || r.urls.images[0], target: "_blank" },
      el("img", { class: "grid", src: r.urls.grid || r.urls.images[0], alt: r.summary || r.id })),
    ...(r.urls.all_sounds ? [el("audio", { controls: "", preload: "metadata", src: r.urls.all_sounds, class: "all-sounds",
      title: "every clip in a row" })] : []),
    el("div", { class: "meta" }, meta(r.settings, r)),
    el("div", { class: "buttons" },
      el("button", { type: "button", class: "reuse", text: "Use these settings again", onclick: async () => {
        location.hash = "#generate";
        const notes = await applySettings(r.settings, r.urls.inputs);
        const note = $("#recall-note"); note.hidden = false; note.className = "hint";
        note.textContent = `Settings of ${r.id}.` + notes.map((n) => ` Note: ${n}.`).join("");
      } }),
      el("button", { type: "button", class: "delete", text: "Delete", onclick: async () => {
        if (!confirm("Delete this entry and its images?")) return;
        try { await api("DELETE", `/api/history/${r.id}`); loadHistory(true); } catch (e) { alert(e.message); }
      } }))));
  if (reset) $("#history").replaceChildren(...cards); else $("#history").append(...cards);
  S.historyOffset += data.items.length;
  $("#history-total").textContent = `${data.total} result${data.total === 1 ? "" : "s"} in ${S.info ? S.info.out_dir : ""}/history`;
  $("#history-more").hidden = S.historyOffset >= data.total;
  S.historyStale = false;
}

// ------------------------------------------------------------------ training dashboard
function plot(canvas, xs, ys, colour = "#2f6fde") {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 420, h = Math.round(w * 0.42);
  canvas.width = w * dpr; canvas.height = h * dpr;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const pts = xs.map((x, i) => [x, ys[i]]).filter(([x, y]) => x !== null && y !== null && Number.isFinite(y));
  canvas.dataset.points = pts.length;
  ctx.font = "11px system-ui, sans-serif"; ctx.fillStyle = "#6a7282";
  if (!pts.length) { ctx.fillText("no points yet", 10, h / 2); return; }
  const L = 52, R = 8, T = 8, B = 20;
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
  const X = (x) => L + (x - x0) / (x1 - x0) * (w - L - R);
  const Y = (y) => T + (1 - (y - y0) / (y1 - y0)) * (h - T - B);
  ctx.strokeStyle = "#dfe2e8"; ctx.lineWidth = 1;
  for (const f of [0, 0.5, 1]) {
    const y = y0 + f * (y1 - y0);
    ctx.beginPath(); ctx.moveTo(L, Y(y)); ctx.lineTo(w - R, Y(y)); ctx.stroke();
    ctx.fillText(Math.abs(y) < 1e-3 && y !== 0 ? y.toExponential(1) : +y.toPrecision(3), 4, Y(y) + 4);
  }
  ctx.fillText(`step ${x0}`, L, h - 5);
  const last = `${x1}`; ctx.fillText(last, w - R - ctx.measureText(last).width, h - 5);
  ctx.strokeStyle = colour; ctx.lineWidth = 1.6; ctx.beginPath();
  pts.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
  ctx.stroke();
  if (pts.length === 1) { ctx.fillStyle = colour; ctx.beginPath(); ctx.arc(X(pts[0][0]), Y(pts[0][1]), 3, 0, 7); ctx.fill(); }
}

async function loadRuns() {
  let data;
  try { data = await api("GET", "/api/runs"); } catch (e) { return; }
  $("#runs-dir").textContent = data.runs.length ? `under ${data.runs_dir}` : `No runs under ${data.runs_dir || "(none given)"} yet: ` +
    "start one with undiffuse train RECIPE, then it shows here.";
  $("#runs").replaceChildren(...data.runs.map((r) => el("li", {},
    el("a", { href: `#dashboard/${encodeURI(r.id)}`, class: r.id === S.run ? "active" : null, "data-id": r.id },
      el("span", { text: r.name + (r.id !== r.name ? ` (${r.id})` : "") }),
      el("span", { class: `badge state-${r.state}`, text: r.steps ? `${r.step}/${r.steps}` : r.state })))));
}

async function loadRun() {
  if (!S.run) { $("#run-detail").hidden = true; $("#run-empty").hidden = false; return; }
  let r;
  try { r = await api("GET", `/api/runs/${encodeURI(S.run)}`); } catch (e) {
    $("#run-empty").hidden = false; $("#run-empty").textContent = e.message; $("#run-detail").hidden = true; return;
  }
  $("#run-empty").hidden = true; $("#run-detail").hidden = false;
  $("#run-name").textContent = r.name;
  $("#run-state").textContent = r.state; $("#run-state").className = `badge state-${r.state}`;
  const c = r.curves, n = c.step.length;
  const rate = n ? c.img_per_s[n - 1] : null;
  $("#run-progress").textContent = `step ${r.step}${r.steps ? ` of ${r.steps}` : ""}` +
    (r.loss !== null ? ` · loss ${r.loss.toPrecision(4)}` : "") + (rate ? ` · ${Math.round(rate)} images/s` : "") +
    (r.updated ? ` · log written ${seconds(Date.now() / 1000 - r.updated)} ago` : "");
  plot($("#chart-loss"), c.step, c.loss, "#2f6fde");
  plot($("#chart-lr"), c.step, c.lr, "#8e44ad");
  plot($("#chart-img"), c.step, c.img_per_s, "#2e7d32");
  $("#resume").textContent = r.resume_command;
  $("#resume-note").textContent = r.resume_note || (r.recipe ? `recipe: ${r.recipe}` : "");
  const srcs = r.samples.map((u) => `${u}?t=${Math.floor(Date.now() / 5000)}`);
  $("#run-samples").replaceChildren(...(srcs.length ? srcs.map((u) => el("img", { src: u, alt: u.split("/").pop().split("?")[0] }))
    : [el("p", { class: "hint", text: "No sample grids yet (train.sample_every writes them to samples/)." })]));
  $("#run-config").textContent = JSON.stringify(r.config, null, 2);
}

// ------------------------------------------------------------------ views
function route() {
  const [view, ...rest] = (location.hash.slice(1) || "generate").split("/");
  const name = ["generate", "history", "dashboard"].includes(view) ? view : "generate";
  $$(".view").forEach((v) => { v.hidden = v.id !== `view-${name}`; });
  $$("nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === name));
  clearInterval(S.runTimer);
  if (name === "history" && S.historyStale) loadHistory(true);
  if (name === "dashboard") {
    S.run = rest.length ? decodeURI(rest.join("/")) : S.run;
    loadRuns().then(loadRun);
    S.runTimer = setInterval(() => { loadRuns(); loadRun(); }, 2000);
  }
}

async function init() {
  try {
    [S.info, { models: S.models }, { samplers: S.samplers }] = await Promise.all([
      api("GET", "/api/info"), api("GET", "/api/models"), api("GET", "/api/samplers")]);
  } catch (e) { showError(e.message); return; }
  fillSelect($("#sampler"), S.samplers.map((s) => ({ value: s.name, label: s.name })));
  $$("#sampler option").forEach((o) => { o.title = (S.samplers.find((s) => s.name === o.value) || {}).summary || ""; });
  fillSelect($("#grid"), S.info.grids.map((g) => ({ value: g, label: g })));
  fillSelect($("#precision"), S.info.precisions.map((p) => ({ value: p, label: p })), "auto");
  $("#steps").max = S.info.limits.max_steps; $("#n").max = S.info.limits.max_n;
  fillModels();
  onModelChange(true);
  $("#model").addEventListener("change", () => onModelChange(true));
  $("#task").addEventListener("change", onTaskChange);
  $("#form").addEventListener("submit", submit);
  $("#seed-random").addEventListener("click", () => setField("seed", "random"));
  $("#cancel").addEventListener("click", () => { const j = watched(); if (j) cancel(j.id); });
  $("#history-more").addEventListener("click", () => loadHistory(false));
  $("#resume-copy").addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText($("#resume").textContent));
  Mask.init();
  setupDrops();
  window.addEventListener("hashchange", route);
  route();
  try { onJobs(await api("GET", "/api/jobs")); } catch (e) { /* the stream will bring it */ }
  listen();
}

init();
