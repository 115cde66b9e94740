// clipserve playground: plain JS, no build step, no third-party code. Every request goes to this page's own
// origin (relative URLs); the API key lives in this tab's sessionStorage and travels only as a Bearer header.
"use strict";
(() => {
  const KEY = "clipserve.key";
  const $ = (id) => document.getElementById(id);
  const state = { info: null, tab: "score", query: null, shown: 0, hits: [], itemUrls: [], model: null };

  // --- talking to the service ------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      const err = (body && body.error) || {};
      super(err.message || `HTTP ${status}`);
      this.status = status;
      this.code = err.code || String(status);
    }
  }

  function headers(json) {
    const h = {};
    const key = sessionStorage.getItem(KEY);
    if (key) h.Authorization = `Bearer ${key}`;
    if (json) h["Content-Type"] = "application/json";
    return h;
  }

  async function api(path, body) {
    const init = body === undefined ? { headers: headers(false) }
      : { method: "POST", headers: headers(true), body: JSON.stringify(body) };
    const response = await fetch(path, init);
    const data = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  function showError(err) {
    if (err instanceof ApiError && err.status === 401) return askForKey("The key was refused (401): check it.");
    $("error").textContent = err instanceof ApiError ? `${err.code}: ${err.message}` : String(err.message || err);
  }

  function busy(text) {
    $("error").textContent = "";
    $("status").textContent = text;
  }

  async function run(label, work) {
    busy(label);
    try {
      await work();
      $("status").textContent = "";
    } catch (err) {
      $("status").textContent = "";
      showError(err);
    }
  }

  // --- start: the key, then what the service offers ---------------------------------------------

  async function start() {
    try {
      state.info = await api("./");
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        return askForKey(sessionStorage.getItem(KEY) ? "The key was refused (401): check it." : "");
      }
      $("model").textContent = `The service did not answer: ${err.message}`;
      return;
    }
    $("key-form").hidden = true;
    $("app").hidden = false;
    $("forget-key").hidden = !sessionStorage.getItem(KEY);
    const m = state.info.model;
    $("model").textContent = m ? `${m.variant} · ${m.architecture} · ${m.dim}-d · ${m.precision} on ${m.device}`
      : `model ${state.info.status}`;
    buildModelPicker(state.info.models || []);
    const search = state.info.search;
    $("tab-search").hidden = !search;
    if (search) buildColumnOptions(search.columns || {});
    readUrl();
    selectTab(state.tab, false);
    if (state.tab === "search" && state.query) runSearch(state.query, false);
  }

  function askForKey(message) {
    $("app").hidden = true;
    $("key-form").hidden = false;
    $("key-error").textContent = message || "";
    $("model").textContent = "This service needs an API key.";
    $("key").focus();
  }

  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $("key").value.trim());
    $("key").value = "";
    start();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    location.reload();
  });

  // --- tabs and the URL -------------------------------------------------------------------------

  const tabs = () => Array.from(document.querySelectorAll("[role=tab]")).filter((t) => !t.hidden);

  function selectTab(name, focus) {
    if (name === "search" && !state.info.search) name = "score";
    state.tab = name;
    for (const tab of document.querySelectorAll("[role=tab]")) {
      const on = tab.dataset.tab === name;
      tab.setAttribute("aria-selected", String(on));
      tab.tabIndex = on ? 0 : -1;
      $(tab.getAttribute("aria-controls")).hidden = !on;
      if (on && focus) tab.focus();
    }
    noteModel();
    writeUrl();
  }

  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.addEventListener("click", () => selectTab(tab.dataset.tab, false));
    tab.addEventListener("keydown", (e) => {
      const all = tabs();
      const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
      if (!step) return;
      const next = all[(all.indexOf(tab) + step + all.length) % all.length];
      selectTab(next.dataset.tab, true);
    });
  }

  // --- models: one picker for every tab (search always uses the model its index was built with) ----------

  function buildModelPicker(models) {
    const select = $("model-select");
    select.replaceChildren(...models.map((m) => {
      const facts = [m.dim && `${m.dim}-d`, m.score_kind, m.license, m.state !== "ready" && m.state].filter(Boolean);
      return el("option", { value: m.id, textContent: `${m.id}${m.default ? " (default)" : ""} · ${facts.join(" · ")}` });
    }));
    $("model-pick").hidden = models.length < 2;
    select.addEventListener("change", () => { state.model = select.value; noteModel(); writeUrl(); });
  }

  function noteModel() {
    const index = state.info.search && state.info.search.index;
    const built = index ? index.model : null;
    $("model-note").textContent = state.tab === "search" && built ? `search uses ${built}, the index's model` : "";
    $("model-select").disabled = state.tab === "search";
  }

  // What every embedding or scoring request carries: the picked model (nothing when there is one model).
  const withModel = (body) => (state.model ? { ...body, model: state.model } : body);

  function readUrl() {
    const p = new URLSearchParams(location.search);
    const known = (state.info.models || []).map((m) => m.id);
    if (known.includes(p.get("model"))) { state.model = p.get("model"); $("model-select").value = state.model; }
    state.tab = p.get("tab") || (state.info.search ? "search" : "score");
    if (p.get("top_k")) $("top-k").value = p.get("top_k");
    if (p.get("threshold")) $("threshold").value = p.get("threshold");
    if (p.get("filter")) $("filter-json").value = p.get("filter");
    if (p.get("q")) { $("q").value = p.get("q"); state.query = { text: p.get("q") }; }
    if (p.get("id")) state.query = { id: p.get("id") };
    if (p.get("url")) { $("search-url").value = p.get("url"); state.query = { image: p.get("url") }; }
  }

  function writeUrl() {
    const p = new URLSearchParams({ tab: state.tab });
    if (state.model) p.set("model", state.model);
    if (state.tab === "search") {
      const q = state.query || {};
      if (q.text) p.set("q", q.text);
      if (q.id) p.set("id", q.id);
      if (q.image && /^https?:/.test(q.image)) p.set("url", q.image);
      p.set("top_k", $("top-k").value);
      if ($("threshold").value) p.set("threshold", $("threshold").value);
      if ($("filter-json").value.trim()) p.set("filter", $("filter-json").value.trim());
    }
    history.replaceState(null, "", `?${p}`);
  }

  // --- images: file, drop, paste, URL -----------------------------------------------------------

  const readAsDataUrl = (file) => new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });

  function imageFrom(transfer) {
    const items = Array.from((transfer && transfer.files) || []);
    return items.find((f) => f.type.startsWith("image/")) || null;
  }

  function imageInput({ file, drop, onImage }) {
    $(file).addEventListener("change", async () => {
      if ($(file).files[0]) onImage(await readAsDataUrl($(file).files[0]));
    });
    const zone = $(drop);
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", async (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      const image = imageFrom(e.dataTransfer);
      if (image) onImage(await readAsDataUrl(image));
    });
    zone.addEventListener("paste", async (e) => {
      const image = imageFrom(e.clipboardData);
      if (image) { e.preventDefault(); onImage(await readAsDataUrl(image)); }
    });
  }

  // --- search -----------------------------------------------------------------------------------

  const pageSize = () => Math.max(1, Math.min(1000, parseInt($("top-k").value, 10) || 12));

  function currentFilter() {
    const text = $("filter-json").value.trim();
    $("filter-error").textContent = "";
    if (!text) return undefined;
    try {
      return JSON.parse(text);
    } catch (err) {
      $("filter-error").textContent = `The filter is not JSON: ${err.message}`;
      throw new Error("fix the filter first");
    }
  }

  function runSearch(query, fresh = true) {
    state.query = query;
    if (fresh) {
      state.shown = 0;
      state.hits = [];
      $("results").replaceChildren();
      state.itemUrls.forEach((url) => URL.revokeObjectURL(url));
      state.itemUrls = [];
    }
    writeUrl();
    const body = { ...query, top_k: state.shown + pageSize() };
    const threshold = $("threshold").value;
    if (threshold !== "") body.score_threshold = Number(threshold);
    return run("Searching…", async () => {
      const filter = currentFilter();
      if (filter) body.filter = filter;
      const answer = await api("search", body);
      const more = answer.results.slice(state.shown);
      state.index = answer.index;
      state.hits.push(...more);
      for (const hit of more) $("results").append(card(hit));
      state.shown = answer.results.length;
      $("load-more").hidden = answer.results.length < body.top_k;
      $("query-note").textContent = `${state.shown} results from ${answer.index.name} ${answer.index.version}` +
        ` (${answer.index.count} items) for ${describeQuery(query)}`;
    });
  }

  function describeQuery(q) {
    if (q.text) return `“${q.text}”`;
    if (q.id) return `items like ${q.id}`;
    if (q.image && /^https?:/.test(q.image)) return "the image URL";
    return "the image";
  }

  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if ($("q").value.trim()) runSearch({ text: $("q").value.trim() });
  });
  $("search-url-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if ($("search-url").value.trim()) runSearch({ image: $("search-url").value.trim() });
  });
  imageInput({ file: "search-file", drop: "search-drop", onImage: (image) => runSearch({ image }) });
  $("load-more").addEventListener("click", () => runSearch(state.query, false));
  document.addEventListener("paste", async (e) => {  // paste anywhere on the search tab
    if (state.tab !== "search" || e.target.closest("input, textarea, .drop")) return;
    const image = imageFrom(e.clipboardData);
    if (image) { e.preventDefault(); runSearch({ image: await readAsDataUrl(image) }); }
  });

  const IMAGE_KEYS = ["thumbnail", "thumbnail_url", "image_url", "url", "image", "img"];
  const CAPTION_KEYS = ["caption", "text", "title", "name", "description", "label"];

  function caption(metadata) {
    const key = CAPTION_KEYS.find((k) => typeof metadata[k] === "string");
    return key ? metadata[key] : "";
  }

  function imageUrl(metadata) {
    const key = IMAGE_KEYS.find((k) => typeof metadata[k] === "string" && /^https?:\/\//.test(metadata[k]));
    return key ? metadata[key] : null;
  }

  // The index's thumbnail when it has one, else an http(s) image URL from the item's metadata, else "no image".
  async function showImage(img, hit) {
    const hide = () => { img.hidden = true; img.nextElementSibling.hidden = false; };
    img.addEventListener("error", hide);
    if (state.info.search.thumbnails) {
      const v = encodeURIComponent(state.index.version);
      const response = await fetch(`items/${encodeURIComponent(hit.id)}/thumbnail?v=${v}`, { headers: headers(false) });
      if (response.ok) {
        const url = URL.createObjectURL(await response.blob());
        state.itemUrls.push(url);
        img.src = url;
        return;
      }
    }
    const url = imageUrl(hit.metadata || {});
    if (url) img.src = url; else hide();
  }

  function el(tag, props = {}, children = []) {
    const node = Object.assign(document.createElement(tag), props);
    node.append(...children);
    return node;
  }

  function card(hit) {
    const img = el("img", { alt: caption(hit.metadata || {}) || hit.id, loading: "lazy" });
    const missing = el("div", { className: "noimage", textContent: "no image", hidden: true });
    showImage(img, hit);
    const more = el("button", { type: "button", className: "more", textContent: "More like this" });
    more.addEventListener("click", () => runSearch({ id: hit.id }));
    const details = el("button", { type: "button", className: "details", textContent: "Details" });
    details.addEventListener("click", () => openDetail(hit));
    const node = el("article", { className: "card" }, [
      img, missing,
      el("span", { className: "id", textContent: hit.id }),
      el("span", { className: "score", textContent: `score ${hit.score.toFixed(4)} · clip ${hit.clip_score.toFixed(1)}` }),
      el("span", { className: "caption", textContent: caption(hit.metadata || {}) }),
      el("div", { className: "actions" }, [more, details]),
    ]);
    node.dataset.id = hit.id;
    return node;
  }

  // --- the detail view --------------------------------------------------------------------------

  function openDetail(hit) {
    state.detail = hit;
    $("detail-title").textContent = hit.id;
    const rows = Object.entries(hit.metadata || {}).map(([k, v]) =>
      el("tr", {}, [el("th", { textContent: k }), el("td", { textContent: typeof v === "string" ? v : JSON.stringify(v) })]));
    $("detail-table").replaceChildren(
      el("tr", {}, [el("th", { textContent: "score" }), el("td", { textContent: String(hit.score) })]), ...rows);
    const thumb = document.querySelector(`.card[data-id="${CSS.escape(hit.id)}"] img`);
    $("detail-image").hidden = !(thumb && thumb.src && !thumb.hidden);
    if (thumb && thumb.src) $("detail-image").src = thumb.src;
    $("detail").showModal();
  }

  $("detail-close").addEventListener("click", () => $("detail").close());
  $("detail-more").addEventListener("click", () => { $("detail").close(); runSearch({ id: state.detail.id }); });
  $("copy-id").addEventListener("click", () => copy(state.detail.id));
  $("copy-item-curl").addEventListener("click", () => copy(curl("search", { id: state.detail.id, top_k: pageSize() })));

  // --- the filter editor: conditions -> Qdrant JSON (shown, editable) -----------------------------

  const OPS = {
    str: [["is", "match"], ["is one of (comma-separated)", "any"], ["is not", "not"]],
    int: [["=", "match"], ["≥", "gte"], ["≤", "lte"], [">", "gt"], ["<", "lt"], ["is not", "not"]],
    float: [["≥", "gte"], ["≤", "lte"], [">", "gt"], ["<", "lt"]],
    bool: [["is", "match"]],
  };
  let columnTypes = {};

  function buildColumnOptions(columns) {
    columnTypes = Object.fromEntries(Object.entries(columns).filter(([, t]) => OPS[t]));
    $("filter-editor").hidden = false;
    $("add-condition").disabled = Object.keys(columnTypes).length === 0;
  }

  function addCondition() {
    const names = Object.keys(columnTypes);
    const key = el("select", { className: "key", ariaLabel: "Column" },
      names.map((n) => el("option", { value: n, textContent: `${n} (${columnTypes[n]})` })));
    const op = el("select", { className: "op", ariaLabel: "Condition" });
    const value = el("input", { className: "value", ariaLabel: "Value" });
    const remove = el("button", { type: "button", className: "quiet", textContent: "Remove" });
    const row = el("div", { className: "condition" }, [key, op, value, remove]);
    const fillOps = () => op.replaceChildren(...OPS[columnTypes[key.value]].map(([t, v]) => el("option", { value: v, textContent: t })));
    key.addEventListener("change", () => { fillOps(); syncFilter(); });
    op.addEventListener("change", syncFilter);
    value.addEventListener("input", syncFilter);
    remove.addEventListener("click", () => { row.remove(); syncFilter(); });
    fillOps();
    $("conditions").append(row);
    key.focus();
  }

  function typed(text, type) {
    if (type === "int") return parseInt(text, 10);
    if (type === "float") return parseFloat(text);
    if (type === "bool") return /^(true|yes|1)$/i.test(text.trim());
    return text;
  }

  function syncFilter() {
    const must = [];
    const mustNot = [];
    for (const row of document.querySelectorAll("#conditions .condition")) {
      const key = row.querySelector(".key").value;
      const op = row.querySelector(".op").value;
      const raw = row.querySelector(".value").value;
      const type = columnTypes[key];
      if (raw.trim() === "") continue;
      if (op === "match") must.push({ key, match: { value: typed(raw, type) } });
      else if (op === "not") mustNot.push({ key, match: { value: typed(raw, type) } });
      else if (op === "any") must.push({ key, match: { any: raw.split(",").map((s) => s.trim()).filter(Boolean) } });
      else must.push({ key, range: { [op]: typed(raw, type) } });
    }
    const filter = {};
    if (must.length) filter.must = must;
    if (mustNot.length) filter.must_not = mustNot;
    $("filter-json").value = Object.keys(filter).length ? JSON.stringify(filter) : "";
    writeUrl();
  }

  $("add-condition").addEventListener("click", addCondition);
  $("filter-json").addEventListener("change", writeUrl);
  $("top-k").addEventListener("change", writeUrl);
  $("threshold").addEventListener("change", writeUrl);

  // --- zero-shot / score ------------------------------------------------------------------------

  let scoreImage = null;
  const setScoreImage = (image) => {
    scoreImage = image;
    $("score-preview").src = image;
    $("score-preview").hidden = false;
  };
  imageInput({ file: "score-file", drop: "score-drop", onImage: setScoreImage });
  $("score-url").addEventListener("change", () => setScoreImage($("score-url").value.trim()));
  const mode = (name) => document.querySelector(`input[name=${name}]:checked`).value;
  for (const radio of document.querySelectorAll("input[name=score-mode]")) {
    radio.addEventListener("change", () => {
      $("score-labels-mode").hidden = mode("score-mode") !== "labels";
      $("score-images-mode").hidden = mode("score-mode") !== "images";
      $("bars").replaceChildren();
    });
  }

  function bar(label, share, detail) {
    const fill = el("span", { className: "fill" });
    fill.style.width = `${Math.max(0, Math.min(1, share)) * 100}%`;
    const li = el("li", {}, [fill, el("span", { className: "label", textContent: label }),
      el("span", { className: "value", textContent: detail })]);
    li.dataset.label = label;
    li.dataset.share = String(share);
    return li;
  }

  $("score-run").addEventListener("click", () => run("Scoring…", async () => {
    if (mode("score-mode") === "labels") {
      const labels = $("labels").value.split("\n").map((s) => s.trim()).filter(Boolean);
      if (!scoreImage) throw new Error("choose an image first");
      if (!labels.length) throw new Error("write at least one label");
      const template = $("template").value.includes("{}") ? $("template").value : "{}";
      const answer = await api("score", withModel({ images: [scoreImage], texts: labels, templates: [template] }));
      if (!answer.probs[0]) throw new Error(answer.errors.map((e) => e.message).join("; "));
      $("probs-kind").textContent = answer.probs_kind === "sigmoid"
        ? "Sigmoid probabilities (SigLIP): each label on its own, so several can be likely, or none."
        : "Softmax probabilities (CLIP): shared out over these labels, so they sum to 100%.";
      $("probs-kind").hidden = false;
      $("bars").replaceChildren(...labels.map((label, i) => bar(label, answer.probs[0][i],
        `${(answer.probs[0][i] * 100).toFixed(1)}% · clip ${answer.clip_score[0][i].toFixed(1)}`)));
    } else {
      const text = $("score-text").value.trim();
      const files = Array.from($("score-files").files);
      if (!text || !files.length) throw new Error("write a text and choose images");
      const images = await Promise.all(files.map(readAsDataUrl));
      const answer = await api("score", withModel({ images, texts: [text] }));
      $("probs-kind").hidden = true;
      $("bars").replaceChildren(...files.map((f, i) => answer.clip_score[i] === null
        ? bar(f.name, 0, "failed") : bar(f.name, answer.clip_score[i][0] / 100,
          `clip ${answer.clip_score[i][0].toFixed(1)} · cosine ${answer.cosine[i][0].toFixed(4)}`)));
    }
  }));

  // --- embed ------------------------------------------------------------------------------------

  let embedded = null;
  for (const radio of document.querySelectorAll("input[name=embed-mode]")) {
    radio.addEventListener("change", () => {
      $("embed-text-mode").hidden = mode("embed-mode") !== "text";
      $("embed-image-mode").hidden = mode("embed-mode") !== "image";
    });
  }

  $("embed-run").addEventListener("click", () => run("Embedding…", async () => {
    let path, body;
    if (mode("embed-mode") === "text") {
      path = "embed/text";
      body = { texts: [$("embed-text").value] };
    } else {
      const file = $("embed-file").files[0];
      const image = file ? await readAsDataUrl(file) : $("embed-url").value.trim();
      if (!image) throw new Error("choose an image or give its URL");
      path = "embed/image";
      body = { images: [image] };
    }
    body = withModel(body);
    const started = performance.now();
    const answer = await api(path, body);
    const ms = performance.now() - started;
    const vector = answer.embeddings[0];
    if (!vector) throw new Error(answer.errors.map((e) => e.message).join("; "));
    embedded = { path, body, vector };
    $("embed-dim").textContent = String(vector.length);
    $("embed-ms").textContent = ms.toFixed(0);
    $("embed-head").textContent = `[${vector.slice(0, 8).map((x) => x.toFixed(4)).join(", ")}, …]`;
    $("embed-out").hidden = false;
  }));

  function curl(path, body) {
    const auth = sessionStorage.getItem(KEY) ? ` -H "Authorization: Bearer $CLIPSERVE_KEY"` : "";
    const json = JSON.stringify(body).replace(/'/g, "'\\''");
    return `curl -s ${new URL(path, location.href.split("?")[0].replace(/ui$/, ""))}${auth} ` +
      `-H "Content-Type: application/json" -d '${json}'`;
  }

  function python() {
    const base = new URL("v1", location.href.split("?")[0].replace(/ui$/, ""));
    const model = embedded.body.model || (state.info.model ? state.info.model.variant : "english");
    const text = embedded.path === "embed/text";
    const input = JSON.stringify(text ? embedded.body.texts : embedded.body.images);
    return ["from openai import OpenAI", "",
      `client = OpenAI(base_url="${base}", api_key=os.environ.get("CLIPSERVE_KEY", "unused"))`,
      `result = client.embeddings.create(model="${model}", input=${input}${text ? "" : ', extra_body={"modality": "image"}'})`,
      "vector = result.data[0].embedding", ""].join("\n").replace("from openai", "import os\nfrom openai");
  }

  $("copy-vector").addEventListener("click", () => copy(JSON.stringify(embedded.vector)));
  $("copy-curl").addEventListener("click", () => copy(curl(embedded.path, embedded.body)));
  $("copy-python").addEventListener("click", () => copy(python()));

  async function copy(text) {
    try {
      await navigator.clipboard.writeText(text);
      $("copied").textContent = "Copied";
    } catch (err) {
      $("copied").textContent = "The browser refused the clipboard";
    }
    setTimeout(() => { $("copied").textContent = ""; }, 2000);
  }

  start();
})();
