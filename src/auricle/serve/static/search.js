// The search box of the auricle web page (auricle serve --index): words, class names, or a file to sound
// like; each result plays its best-matching segment from GET /v1/search/audio. Shown only when the server
// has an index (GET /v1/search/index). Plain JS, no external resources; its own scope, apart from app.js.
"use strict";
(() => {
  const byId = (id) => document.getElementById(id);
  const number = (value, digits) => Number(value).toFixed(digits);

  function showSearchError(message) {
    byId("search-error").textContent = message || "";
    byId("search-error").hidden = !message;
    if (message) byId("search-results").replaceChildren();
  }

  // The segment to play: the best of the class segments and the captions that matched.
  function bestSpan(hit) {
    const spans = [...(hit.segments || []), ...(hit.captions || [])];
    spans.sort((a, b) => b.score - a.score);
    return spans[0] || { start: 0, end: Math.min(hit.duration, 30) };
  }

  function reason(hit) {
    const parts = [];
    if (hit.matched && hit.matched.length) {
      parts.push(`classes: ${hit.matched.map((m) => `${m.label} ${number(m.score, 2)}`).join(", ")}`);
    }
    for (const said of hit.captions || []) {
      parts.push(`caption ${number(said.start, 1)}–${number(said.end, 1)} s: “${said.text}”`);
    }
    if (!parts.length && hit.segments && hit.segments.length) parts.push(hit.segments[0].labels.join(", "));
    return parts.join(" · ");
  }

  function resultItem(hit) {
    const item = document.createElement("li");
    item.className = "search-hit";
    const head = document.createElement("div");
    head.className = "head";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = number(hit.score, 3);
    const file = document.createElement("span");
    file.className = "file";
    file.textContent = hit.file.split("/").pop();
    file.title = hit.file;
    const span = bestSpan(hit);
    const where = document.createElement("span");
    where.className = "muted span";
    where.textContent = `${number(span.start, 1)}–${number(span.end, 1)} s of ${number(hit.duration, 1)} s`;
    head.append(score, file, where);
    const why = document.createElement("div");
    why.className = "why muted";
    why.textContent = reason(hit);
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.preload = "none";
    const params = new URLSearchParams({ file: hit.file, start: String(span.start), end: String(span.end) });
    audio.src = `/v1/search/audio?${params}`;
    item.append(head, why, audio);
    return item;
  }

  async function runSearch(request, label) {
    showSearchError("");
    byId("search-status").textContent = `searching ${label}…`;
    let response;
    try {
      response = await fetch(...request);
    } catch (error) {
      byId("search-status").textContent = "";
      showSearchError(`request failed: ${error}`);
      return;
    }
    const body = await response.json().catch(() => ({}));
    byId("search-status").textContent = "";
    if (!response.ok) {
      showSearchError(`${response.status}: ${body.detail || response.statusText}`);
      return;
    }
    const hits = body.hits || [];
    byId("search-status").textContent = [
      hits.length ? `${hits.length} result(s) for ${label}` : `nothing in the index matches ${label}`,
      ...(body.warnings || []),
    ].join(" · ");
    byId("search-results").replaceChildren(...hits.map(resultItem));
  }

  async function start() {
    let info;
    try {
      const response = await fetch("/v1/search/index");
      if (!response.ok) return; // no --index: no search box
      info = await response.json();
    } catch (error) {
      return;
    }
    byId("search-panel").hidden = false;
    byId("search-info").textContent =
      `${info.files} file(s) · ${info.model || "empty"}${info.captioned ? ` · ${info.captioned} captioned` : ""}`;
    byId("search-like-label").hidden = !info.like;
    byId("search-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const query = byId("search-query").value;
      runSearch([`/v1/search?${new URLSearchParams({ q: query, top: "10" })}`], `“${query}”`);
    });
    byId("search-like").addEventListener("change", (event) => {
      const chosen = event.target.files[0];
      event.target.value = "";
      if (!chosen) return;
      const form = new FormData();
      form.append("file", chosen, chosen.name);
      runSearch(["/v1/search?top=10", { method: "POST", body: form }], `sounds like ${chosen.name}`);
    });
  }

  start();
})();
