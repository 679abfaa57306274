// The auricle web page: upload or record audio, show top tags and an events timeline;
// or stream the microphone to /v1/stream. With an audio-language model (MiDashengLM) the chosen
// sound is described, and questions about it are asked, instead. Plain JS, no external resources.
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = ["#ff6b6b", "#ffd93d", "#6bcb77", "#4d96ff", "#c77dff", "#ff9f45", "#2ec4b6", "#f15bb5"];

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

// A failed upload: the previous file's result would read as this one's, so it goes, and the
// error shows where the result was.
function failed(message) {
  $("result-panel").hidden = true;
  showError(message);
}

function setStatus(text) { $("status").textContent = text || ""; }

function options() {
  const params = new URLSearchParams();
  params.set("top_k", $("top-k").value || "5");
  params.set("window", $("window").value || "10");
  params.set("hop", $("hop").value || "2");
  if ($("threshold").value) params.set("threshold", $("threshold").value);
  params.set("events", "true");
  params.set("spectrogram", "true");
  for (const spec of $("classes").value.split(";").map((s) => s.trim()).filter(Boolean)) {
    params.append("classes", spec);
  }
  return params;
}

function tagRow(tag) {
  const item = document.createElement("li");
  item.className = "tag";
  const label = document.createElement("span");
  label.textContent = tag.label;
  const bar = document.createElement("div");
  bar.className = "bar";
  const fill = document.createElement("span");
  fill.style.width = `${Math.round(tag.score * 100)}%`;
  bar.appendChild(fill);
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = tag.score.toFixed(3);
  item.append(label, bar, score);
  return item;
}

// POST a form; the JSON answer, or null once the failure has been shown.
async function postForm(url, form) {
  let response;
  try {
    response = await fetch(url, { method: "POST", body: form });
  } catch (error) {
    setStatus("");
    failed(`request failed: ${error}`);
    return null;
  }
  const body = await response.json().catch(() => ({}));
  setStatus("");
  if (!response.ok) {
    failed(`${response.status}: ${body.detail ? JSON.stringify(body.detail) : response.statusText}`);
    return null;
  }
  return body;
}

async function tagBlob(blob, name) {
  showError("");
  setStatus(`tagging ${name}…`);
  const form = new FormData();
  form.append("file", blob, name);
  const params = options();
  const started = performance.now();
  const body = await postForm(`/v1/tag?${params}`, form);
  if (body === null) return;
  showResult(body, (performance.now() - started) / 1000);
}

// -- an audio-language server: describe the sound, or ask about it -------------------------
let language = false;
let lastSound = null; // {blob, name}: what the ask box asks about

function segmentRow(segment, spans) {
  const item = document.createElement("li");
  const text = segment.skipped ? `(${segment.skipped})` : segment.text;
  item.textContent = spans ? `${segment.start.toFixed(2)}–${segment.end.toFixed(2)} s  ${text}` : text;
  return item;
}

async function askBlob(blob, name) {
  lastSound = { blob, name };
  $("ask-button").disabled = false;
  const question = $("question").value.trim();
  showError("");
  setStatus(question ? `asking about ${name}…` : `describing ${name}…`);
  const form = new FormData();
  form.append("file", blob, name);
  const url = question ? `/v1/ask?${new URLSearchParams({ question })}` : "/v1/describe";
  const started = performance.now();
  const body = await postForm(url, form);
  if (body === null) return;
  const seconds = (performance.now() - started) / 1000;
  $("result-panel").hidden = false;
  $("result-title").textContent = body.file;
  $("result-meta").textContent =
    `${body.duration.toFixed(2)} s · ${body.model} · ${body.tokens} token(s) · ${seconds.toFixed(2)} s`;
  $("tags").replaceChildren();
  $("timeline-block").hidden = true;
  $("answer-block").hidden = false;
  $("answer-question").textContent = body.prompt;
  $("answer").replaceChildren(...body.segments.map((s) => segmentRow(s, body.segments.length > 1)));
}

function chosen(blob, name) {
  if (language) askBlob(blob, name); else tagBlob(blob, name);
}

function showResult(result, seconds) {
  $("answer-block").hidden = true;
  $("result-panel").hidden = false;
  $("result-title").textContent = result.file;
  $("result-meta").textContent =
    `${result.duration.toFixed(2)} s · ${result.model} · ${result.windows.length} window(s) · ${seconds.toFixed(2)} s`;
  const list = $("tags");
  list.replaceChildren(...result.tags.map(tagRow));
  const events = result.events || [];
  const longer = result.windows.length > 1;
  $("timeline-block").hidden = !longer;
  if (longer) drawTimeline(result, events);
  $("event-list").replaceChildren(...events.map((e) => {
    const item = document.createElement("li");
    item.textContent = `${e.onset.toFixed(2)}–${e.offset.toFixed(2)} s  ${e.label}  (max ${e.max_score.toFixed(2)})`;
    return item;
  }));
}

function colormap(value) {
  // A dark-blue-to-yellow ramp (like "viridis"), value in 0..255.
  const stops = [[13, 8, 60], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const x = (value / 255) * (stops.length - 1);
  const i = Math.min(Math.floor(x), stops.length - 2);
  const t = x - i;
  return stops[i].map((c, k) => Math.round(c + (stops[i + 1][k] - c) * t));
}

function drawTimeline(result, events) {
  const canvas = $("timeline");
  const ctx = canvas.getContext("2d");
  const labels = [...new Set(events.map((e) => e.label))];
  const lane = 22;
  const axis = 20;
  const specHeight = 160;
  canvas.height = specHeight + axis + Math.max(1, labels.length) * lane + 8;
  const width = canvas.width;
  ctx.fillStyle = "#111";
  ctx.fillRect(0, 0, width, canvas.height);
  const spec = result.spectrogram;
  if (spec) {
    const bytes = Uint8Array.from(atob(spec.data), (c) => c.charCodeAt(0));
    const image = ctx.createImageData(spec.columns, spec.mels);
    for (let m = 0; m < spec.mels; m++) {
      for (let c = 0; c < spec.columns; c++) {
        const [r, g, b] = colormap(bytes[m * spec.columns + c]);
        const p = ((spec.mels - 1 - m) * spec.columns + c) * 4; // low bands at the bottom
        image.data.set([r, g, b, 255], p);
      }
    }
    const scratch = document.createElement("canvas");
    scratch.width = spec.columns;
    scratch.height = spec.mels;
    scratch.getContext("2d").putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(scratch, 0, 0, width * Math.min(1, spec.columns * spec.seconds_per_column / result.duration),
                  specHeight);
  }
  const x = (seconds) => (seconds / result.duration) * width;
  ctx.fillStyle = "#ddd";
  ctx.font = "11px system-ui, sans-serif";
  const step = niceStep(result.duration);
  for (let t = 0; t <= result.duration + 1e-9; t += step) {
    ctx.fillRect(x(t), specHeight, 1, 5);
    ctx.fillText(`${t.toFixed(step < 1 ? 1 : 0)} s`, Math.min(x(t) + 2, width - 30), specHeight + 15);
  }
  labels.forEach((label, row) => {
    const top = specHeight + axis + row * lane;
    const color = COLORS[row % COLORS.length];
    for (const event of events.filter((e) => e.label === label)) {
      ctx.fillStyle = color;
      ctx.globalAlpha = 0.85;
      ctx.fillRect(x(event.onset), top + 3, Math.max(2, x(event.offset) - x(event.onset)), lane - 6);
      ctx.globalAlpha = 0.35; // the event's span over the spectrogram
      ctx.fillRect(x(event.onset), specHeight - 6, Math.max(2, x(event.offset) - x(event.onset)), 6);
      ctx.globalAlpha = 1;
    }
    ctx.fillStyle = "rgba(0, 0, 0, 0.6)"; // keep the label readable over its bars
    ctx.fillRect(2, top + 3, ctx.measureText(label).width + 6, lane - 6);
    ctx.fillStyle = "#fff";
    ctx.fillText(label, 5, top + lane / 2 + 4);
  });
  if (!labels.length) {
    ctx.fillStyle = "#aaa";
    ctx.fillText("no events above the threshold", 4, specHeight + axis + 14);
  }
}

function niceStep(duration) {
  for (const step of [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600]) if (duration / step <= 12) return step;
  return 1200;
}

// The microphone, or null (with the reason shown) when the browser refuses it.
async function microphone() {
  showError("");
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (error) {
    showError(`microphone unavailable: ${error.message || error}`);
    return null;
  }
}

// -- recording: MediaRecorder, then upload like a file ------------------------------------
let recorder = null;

async function toggleRecord() {
  const button = $("record-button");
  if (recorder) { recorder.stop(); return; }
  const stream = await microphone();
  if (!stream) return;
  const chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (event) => chunks.push(event.data);
  recorder.onstop = () => {
    stream.getTracks().forEach((track) => track.stop());
    button.classList.remove("active");
    button.textContent = "● Record";
    const type = recorder.mimeType || "audio/webm";
    recorder = null;
    const extension = type.includes("ogg") ? "ogg" : type.includes("mp4") ? "m4a" : "webm";
    chosen(new Blob(chunks, { type }), `recording.${extension}`);
  };
  recorder.start();
  button.classList.add("active");
  button.textContent = "■ Stop";
  setStatus("recording…");
}

// -- live: microphone PCM over the WebSocket -----------------------------------------------
let live = null;

async function toggleLive() {
  if (live) { live.stop(); return; }
  const media = await microphone();
  if (!media) return;
  const context = new AudioContext();
  const source = context.createMediaStreamSource(media);
  // ScriptProcessor is old but needs no extra module file; 4096 frames is ~85 ms at 48 kHz.
  const processor = context.createScriptProcessor(4096, 1, 1);
  const protocol = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${protocol}://${location.host}/v1/stream`);
  socket.binaryType = "arraybuffer";
  const button = $("live-button");
  $("live-panel").hidden = false;
  $("live-events").replaceChildren();
  const stop = () => {
    processor.disconnect();
    source.disconnect();
    media.getTracks().forEach((track) => track.stop());
    context.close();
    if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "end" }));
    button.classList.remove("active");
    button.textContent = "Live";
    live = null;
  };
  live = { stop };
  socket.onopen = () => {
    const settings = {
      sample_rate: context.sampleRate, format: "f32le", channels: 1,
      window: parseFloat($("window").value || "10"), hop: parseFloat($("hop").value || "1"),
      top_k: parseInt($("top-k").value || "5", 10),
      threshold: $("threshold").value ? parseFloat($("threshold").value) : null,
      classes: $("classes").value.split(";").map((s) => s.trim()).filter(Boolean),
    };
    socket.send(JSON.stringify(settings));
  };
  socket.onmessage = (message) => {
    const data = JSON.parse(message.data);
    if (data.type === "error") { showError(data.detail); stop(); return; }
    if (data.type === "ready") {
      source.connect(processor);
      processor.connect(context.destination);
      processor.onaudioprocess = (event) => {
        if (socket.readyState === WebSocket.OPEN) socket.send(event.inputBuffer.getChannelData(0).slice().buffer);
      };
      setStatus("listening…");
      return;
    }
    if (data.type === "report") {
      $("live-window").textContent = `window ${data.start.toFixed(1)}–${data.end.toFixed(1)} s`;
      $("live-tags").replaceChildren(...data.tags.map(tagRow));
    }
    for (const event of data.started || []) liveEvent(`${event.onset.toFixed(1)} s  start  ${event.label}`);
    for (const event of data.ended || []) {
      liveEvent(`${event.offset.toFixed(1)} s  end  ${event.label} (${event.onset.toFixed(1)}–${event.offset.toFixed(1)} s)`);
    }
  };
  socket.onclose = () => { if (live) stop(); setStatus(""); };
  button.classList.add("active");
  button.textContent = "■ Stop live";
}

function liveEvent(text) {
  const item = document.createElement("li");
  item.textContent = text;
  $("live-events").prepend(item);
}

async function loadModelInfo() {
  try {
    const info = await (await fetch("/v1/models")).json();
    language = info.model.kind === "audio-language";
    $("model-info").textContent = language ? `${info.model.name} · audio-language model`
      : `${info.model.name} · ${info.model.classes} classes`;
    // A language server answers in words: no tagging options, no live tags (its /v1/stream refuses).
    $("ask-box").hidden = !language;
    $("tag-options").hidden = language;
    $("live-button").hidden = language;
  } catch (error) {
    $("model-info").textContent = "model info unavailable";
  }
}

$("file-input").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) chosen(file, file.name);
  event.target.value = "";
});
$("ask-button").addEventListener("click", () => { if (lastSound) askBlob(lastSound.blob, lastSound.name); });
$("question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && lastSound) askBlob(lastSound.blob, lastSound.name);
});
$("record-button").addEventListener("click", toggleRecord);
$("live-button").addEventListener("click", toggleLive);
loadModelInfo();
