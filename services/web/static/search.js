// The search pane: query, mode, result count and a metadata filter; results with highlighted
// excerpts, their place in the source, and links to the original file at the right page.

import { api, collectionPath, fileUrl } from "./api.js";
import { openOriginal, showPassage } from "./docview.js";
import { state } from "./state.js";
import { el, excerpt, highlight, setStatus, terms, where } from "./ui.js";

// "team=ops, source_id=a.pdf|b.pdf" -> {"team": "ops", "source_id": {"in": ["a.pdf", "b.pdf"]}}
export function parseFilter(text) {
  const filter = {};
  for (const part of (text || "").split(",")) {
    if (!part.trim()) continue;
    const eq = part.indexOf("=");
    if (eq <= 0) throw new Error(`filter "${part.trim()}" is not key=value`);
    const key = part.slice(0, eq).trim();
    const values = part
      .slice(eq + 1)
      .split("|")
      .map((v) => v.trim())
      .filter(Boolean);
    if (!values.length) throw new Error(`filter "${key}" has no value`);
    filter[key] = values.length === 1 ? values[0] : { in: values };
  }
  return Object.keys(filter).length ? filter : null;
}

function resultItem(hit, index, query) {
  const words = terms(query);
  const passage = { ...hit, collection: state.collection, query };
  const title = hit.title || hit.source_id;
  const page = hit.page || null;
  return el(
    "li",
    { class: "result", dataset: { documentId: hit.document_id, chunkId: hit.chunk_id } },
    el(
      "h3",
      {},
      el("button", {
        type: "button",
        class: "linklike",
        text: title,
        "aria-label": `Show passage ${index + 1}: ${title}`,
        onclick: () => showPassage(passage),
      }),
    ),
    el("p", { class: "meta", text: [hit.source_id, where(hit), `score ${hit.score.toFixed(3)}`].join(" · ") }),
    el("p", { class: "snippet" }, highlight(excerpt(hit.text, words), words)),
    el(
      "p",
      { class: "links" },
      el("a", {
        class: "source-link",
        href: fileUrl(state.collection, hit.document_id, page),
        target: "_blank",
        rel: "noopener",
        text: page ? `Open source at page ${page}` : "Open source",
        onclick: (e) => {
          e.preventDefault();
          openOriginal(state.collection, hit.document_id, page, () => showPassage(passage));
        },
      }),
    ),
  );
}

async function run(event) {
  event.preventDefault();
  const list = document.getElementById("search-results");
  const query = document.getElementById("search-query").value.trim();
  if (!state.collection) return setStatus("search-status", "Create or choose a collection first.", "error");
  if (!query) return setStatus("search-status", "Type something to search for.", "error");
  let filter;
  try {
    filter = parseFilter(document.getElementById("search-filter").value);
  } catch (err) {
    return setStatus("search-status", err.message, "error");
  }
  const body = {
    query,
    top_k: Number(document.getElementById("search-topk").value) || 5,
    mode: document.getElementById("search-mode").value,
    ...(filter ? { filter } : {}),
  };
  setStatus("search-status", "Searching…");
  list.setAttribute("aria-busy", "true");
  try {
    const out = await api(collectionPath(state.collection, "/search"), { method: "POST", body });
    list.replaceChildren(...out.results.map((hit, i) => resultItem(hit, i, query)));
    const n = out.results.length;
    setStatus("search-status", n ? `${n} result${n > 1 ? "s" : ""} in ${Math.round(out.took_ms)} ms` : "No results.");
  } catch (err) {
    list.replaceChildren();
    setStatus("search-status", err.message, "error");
  } finally {
    list.removeAttribute("aria-busy");
  }
}

export function initSearch() {
  document.getElementById("search-form").addEventListener("submit", run);
  document.addEventListener("kb:collection", () => {
    document.getElementById("search-results").replaceChildren();
    setStatus("search-status", "");
  });
}
