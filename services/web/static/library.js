// The library pane: collections (pick, create, delete), their documents, and uploads. Single files go
// to the documents endpoint (upload progress, then "indexed"); zip/tar archives become ingest jobs
// whose progress streams live from /v1/ingest-jobs/{id}/events.

import { api, collectionPath, sse, upload } from "./api.js";
import { showDocument } from "./docview.js";
import { libraryChanged, setCollection, state } from "./state.js";
import { bytes, el, notice, setStatus } from "./ui.js";

const ARCHIVE = /\.(zip|tar|tgz|tar\.gz)$/i;
const PAGE = 100;

export async function loadCollections() {
  const select = document.getElementById("collection");
  try {
    const out = await api("v1/collections");
    state.collections = out.collections;
  } catch (err) {
    if (err.status !== 401) notice(err.message); // a 401 already pointed at the key field
    return;
  }
  const names = state.collections.map((c) => c.name);
  select.replaceChildren(
    ...(names.length ? [] : [el("option", { value: "", text: "no collections yet" })]),
    ...state.collections.map((c) => el("option", { value: c.name, text: `${c.name} (${c.documents} doc${c.documents === 1 ? "" : "s"})` })),
  );
  const wanted = names.includes(state.collection) ? state.collection : names[0] || "";
  select.value = wanted;
  document.getElementById("delete-collection").disabled = !wanted;
  if (wanted === state.collection) await loadDocuments();
  else setCollection(wanted); // its event reloads the documents
}

async function loadDocuments(limit = PAGE) {
  const body = document.querySelector("#documents tbody");
  const more = document.getElementById("documents-more");
  if (!state.collection) {
    body.replaceChildren();
    more.hidden = true;
    return setStatus("documents-status", "No collection selected.");
  }
  try {
    const page = await api(collectionPath(state.collection, `/documents?limit=${limit}`));
    body.replaceChildren(...page.items.map(documentRow));
    more.hidden = page.items.length >= page.total;
    more.onclick = () => loadDocuments(Math.min(limit + PAGE, 500));
    const shown = page.items.length < page.total ? `${page.items.length} of ${page.total}` : `${page.total}`;
    setStatus("documents-status", `${shown} document${page.total === 1 ? "" : "s"}`);
  } catch (err) {
    setStatus("documents-status", err.message, "error");
  }
}

function documentRow(d) {
  const name = d.title || d.source_id;
  return el(
    "tr",
    { dataset: { documentId: d.id, status: d.status } },
    el(
      "td",
      {},
      el("button", { type: "button", class: "linklike", text: name, onclick: () => showDocument(state.collection, d.id) }),
      d.title && d.title !== d.source_id ? el("div", { class: "meta", text: d.source_id }) : null,
    ),
    el("td", { class: `status-${d.status}`, text: d.status, title: d.error || undefined }),
    el("td", { class: "num", text: d.chunks }),
    el("td", { class: "num", text: bytes(d.size_bytes) }),
    el(
      "td",
      {},
      el("button", {
        type: "button",
        class: "danger small",
        text: "Delete",
        "aria-label": `Delete ${name}`,
        onclick: async () => {
          if (!confirm(`Delete "${name}" from ${state.collection}?`)) return;
          try {
            await api(collectionPath(state.collection, `/documents/${d.id}`), { method: "DELETE" });
            libraryChanged();
          } catch (err) {
            notice(err.message);
          }
        },
      }),
    ),
  );
}

function uploadRow(file) {
  const bar = el("progress", { max: 1, value: 0, "aria-label": `Progress of ${file.name}` });
  const text = el("span", { class: "upload-state", text: "waiting" });
  const row = el("li", { class: "upload", dataset: { name: file.name } }, el("span", { class: "upload-name", text: file.name }), bar, text);
  document.getElementById("uploads").prepend(row);
  return {
    row,
    set(message, fraction, kind = "") {
      text.textContent = message;
      row.dataset.state = kind;
      if (fraction === null) bar.removeAttribute("value");
      else bar.value = fraction;
    },
  };
}

async function uploadDocument(collection, file) {
  const ui = uploadRow(file);
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    ui.set("uploading 0%", 0);
    const out = await upload(collectionPath(collection, "/documents"), form, (f) =>
      f < 1 ? ui.set(`uploading ${Math.round(f * 100)}%`, f) : ui.set("indexing…", null),
    );
    const what = out.duplicate ? "already indexed (same content)" : `indexed · ${out.chunks} passages`;
    ui.set(what, 1, "done");
  } catch (err) {
    ui.set(err.message, 0, "error");
  }
}

async function uploadArchive(collection, file) {
  const ui = uploadRow(file);
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    ui.set("uploading 0%", 0);
    const { job_id: id } = await upload(collectionPath(collection, "/ingest-jobs"), form, (f) => ui.set(`uploading ${Math.round(f * 100)}%`, f));
    ui.row.dataset.job = id;
    ui.set("queued", null);
    let refreshed = 0; // the document list follows a long job every few seconds, not per event:
    // with auth on the API allows 120 requests a minute per key by default
    for await (const { event, data } of sse(`v1/ingest-jobs/${encodeURIComponent(id)}/events`)) {
      const counts = `${data.processed}/${data.total} files`;
      if (event === "progress") {
        ui.set(`${data.status} · ${counts}`, data.total ? data.processed / data.total : null);
        if (Date.now() - refreshed > 5000) {
          refreshed = Date.now();
          libraryChanged();
        }
      } else if (event === "done") {
        const parts = [`${data.succeeded} indexed`, `${data.duplicates} duplicates`, `${data.failed} failed`];
        const errors = (data.errors || []).map((e) => `${e.path}: ${e.error}`).join("\n");
        ui.set(`${data.status} · ${parts.join(", ")}`, 1, data.status === "succeeded" ? "done" : "error");
        if (errors) ui.row.append(el("pre", { class: "errors", text: errors }));
      }
    }
  } catch (err) {
    ui.set(err.message, 0, "error");
  }
}

export async function uploadFiles(files) {
  const collection = state.collection;
  if (!collection) return notice("Create or choose a collection before uploading.");
  for (const file of files) {
    await (ARCHIVE.test(file.name) ? uploadArchive(collection, file) : uploadDocument(collection, file));
    libraryChanged();
  }
}

function initDropzone() {
  const zone = document.getElementById("dropzone");
  const input = document.getElementById("file-input");
  input.addEventListener("change", () => {
    uploadFiles([...input.files]);
    input.value = "";
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (e) => {
      e.preventDefault();
      zone.classList.add("over");
    });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    uploadFiles([...(e.dataTransfer?.files || [])]);
  });
}

async function createCollection(event) {
  event.preventDefault();
  const name = document.getElementById("new-collection").value.trim();
  const embedder = document.getElementById("new-embedder").value;
  const button = event.target.querySelector("button[type=submit]");
  button.disabled = true; // the first collection loads its embedder: seconds
  setStatus("documents-status", `Creating ${name}…`);
  try {
    await api("v1/collections", { method: "POST", body: { name, embedder } });
    document.getElementById("new-collection").value = "";
    setCollection(name);
    await loadCollections();
    notice(`Collection "${name}" created.`, "info");
  } catch (err) {
    notice(err.message);
    setStatus("documents-status", "");
  } finally {
    button.disabled = false;
  }
}

async function deleteCollection() {
  const name = state.collection;
  if (!name || !confirm(`Delete the collection "${name}" and all its documents?`)) return;
  try {
    await api(collectionPath(name), { method: "DELETE" });
    setCollection("");
    await loadCollections();
  } catch (err) {
    notice(err.message);
  }
}

export function initLibrary() {
  document.getElementById("collection").addEventListener("change", (e) => setCollection(e.target.value));
  document.getElementById("collection-form").addEventListener("submit", createCollection);
  document.getElementById("delete-collection").addEventListener("click", deleteCollection);
  document.addEventListener("kb:collection", () => {
    document.getElementById("collection").value = state.collection;
    document.getElementById("delete-collection").disabled = !state.collection;
    loadDocuments();
  });
  let pending = null; // coalesce bursts of changes (job progress) into one refresh
  document.addEventListener("kb:library", () => {
    clearTimeout(pending);
    pending = setTimeout(loadCollections, 250);
  });
  initDropzone();
}
