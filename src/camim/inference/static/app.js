// The camim page: collects the post, the two entity marks, the image and the caption, posts them to
// /api/predict as JSON and shows the ranked relations. Plain JS, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const marks = { head: null, tail: null }; // character spans [start, end) chosen by selection
const KEY = "camim-api-key"; // a server started with --api-key-env: the key, asked once, kept for this tab
let afterKey = null; // what to do again once the key is given

// fetch() with the API key (when one was given); a 401 asks for the key, then `again` runs.
async function api(path, options, again) {
  const key = sessionStorage.getItem(KEY);
  const headers = { ...((options && options.headers) || {}), ...(key ? { Authorization: `Bearer ${key}` } : {}) };
  const resp = await fetch(path, { ...(options || {}), headers });
  if (resp.status === 401) {
    sessionStorage.removeItem(KEY);
    afterKey = again;
    $("auth").hidden = false;
    $("api-key").focus();
    showError(key ? "The API key was refused: enter the right one above." : "This server needs an API key: enter it above.");
  }
  return resp;
}

function useKey() {
  const key = $("api-key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY, key);
  $("api-key").value = "";
  $("auth").hidden = true;
  hideError();
  const again = afterKey;
  afterKey = null;
  if (again) again();
}

function markSelection(which) {
  const post = $("post");
  const [s, e] = [post.selectionStart, post.selectionEnd];
  const chosen = post.value.slice(s, e);
  if (e <= s || !chosen.trim()) {
    showError(`Select the ${which} mention in the post first, then press Mark.`);
    return;
  }
  marks[which] = [s, e];
  $(which).value = chosen.trim();
  $(`${which}-span`).textContent = `marked characters ${s}-${e}`;
  hideError();
}

function entitySpec(which) {
  if (marks[which]) return { char: marks[which] };
  const name = $(which).value.trim();
  if (!name) throw new Error(`Give the ${which} entity: select it in the post and press Mark, or type it.`);
  return { name };
}

function readImage() {
  const file = $("image").files[0];
  if (!file) return Promise.resolve(null);
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error("Could not read the image file."));
    reader.readAsDataURL(file);
  });
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}
function hideError() { $("error").hidden = true; }

function escapeHtml(s) {
  return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function showResult(r) {
  $("relation").textContent = r.relation;
  $("probability").textContent = `(${(100 * r.probability).toFixed(1)}%)`;
  $("marked").innerHTML = r.tokens.map((tok, i) => {
    const t = escapeHtml(tok);
    if (i >= r.head.pos[0] && i < r.head.pos[1]) return `<mark class="h" title="head">${t}</mark>`;
    if (i >= r.tail.pos[0] && i < r.tail.pos[1]) return `<mark class="t" title="tail">${t}</mark>`;
    return t;
  }).join(" ");
  $("caption-used").textContent = r.caption
    ? `${r.caption} (${r.caption_source})`
    : "none - the model ran without a caption";
  $("notes").innerHTML = r.notes.map((n) => `<li>${escapeHtml(n)}</li>`).join("");
  const top = r.distribution[0].probability || 1;
  $("distribution").querySelector("tbody").innerHTML = r.distribution.map((d, i) =>
    `<tr><td>${i + 1}</td><td class="rel">${escapeHtml(d.relation)}</td>` +
    `<td class="p">${d.probability.toFixed(4)}</td>` +
    `<td class="barcell"><div class="bar" style="width:${(100 * d.probability / top).toFixed(1)}%"></div></td></tr>`
  ).join("");
  $("result").hidden = false;
}

async function submit(event) {
  event.preventDefault();
  hideError();
  let body;
  try {
    body = { text: $("post").value, head: entitySpec("head"), tail: entitySpec("tail") };
    const caption = $("caption").value.trim();
    if (caption) body.caption = caption;
    const image = await readImage();
    if (image) body.image = image;
  } catch (err) {
    showError(err.message);
    return;
  }
  $("submit").disabled = true;
  try {
    const resp = await api("/api/predict", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    }, () => $("form").requestSubmit());
    if (resp.status === 401) { $("result").hidden = true; return; } // api() asked for the key
    const data = await resp.json().catch(() => ({ error: `HTTP ${resp.status}` }));
    if (!resp.ok) { $("result").hidden = true; showError(data.error || `HTTP ${resp.status}`); return; }
    showResult(data);
  } catch (err) {
    showError(`Request failed: ${err.message}`);
  } finally {
    $("submit").disabled = false;
  }
}

function init() {
  $("mark-head").addEventListener("click", () => markSelection("head"));
  $("mark-tail").addEventListener("click", () => markSelection("tail"));
  for (const which of ["head", "tail"]) {
    $(which).addEventListener("input", () => { marks[which] = null; $(`${which}-span`).textContent = ""; });
  }
  // Editing the post invalidates character marks.
  $("post").addEventListener("input", () => {
    for (const which of ["head", "tail"]) { marks[which] = null; $(`${which}-span`).textContent = ""; }
  });
  $("image").addEventListener("change", () => {
    const file = $("image").files[0];
    const img = $("preview");
    if (file) { img.src = URL.createObjectURL(file); img.hidden = false; } else { img.hidden = true; }
  });
  $("form").addEventListener("submit", submit);
  $("api-key-save").addEventListener("click", useKey);
  $("api-key").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); useKey(); } });
  loadInfo();
}

function loadInfo() {
  api("/api/info", {}, loadInfo).then((r) => (r.ok ? r.json() : null)).then((info) => {
    if (!info) return;
    const need = info.required_modalities.length ? info.required_modalities.join(", ") : "text only";
    $("model-info").textContent = `Model: ${info.model} - ${info.labels.length} relations - reads: ${need}` +
      (info.captioner ? ` - captioner: ${info.captioner}` : "");
  }).catch(() => {});
}

init();
