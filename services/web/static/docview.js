// The document view: a modal dialog with a passage (search hit or chat citation) and its place in
// the source, plus "open the original at page N" when the uploaded file was kept. Originals are
// fetched with the API key and opened as a blob, so the link also works when auth is on.

import { api, collectionPath, fileUrl, raw } from "./api.js";
import { bytes, el, highlight, notice, terms, where } from "./ui.js";

const dialog = () => document.getElementById("docview");

function filePath(collection, documentId) {
  return collectionPath(collection, `/documents/${documentId}/file`);
}

function filenameOf(response, fallback) {
  const cd = response.headers.get("content-disposition") || "";
  const star = cd.match(/filename\*=utf-8''([^;]+)/i);
  if (star) return decodeURIComponent(star[1]);
  const plain = cd.match(/filename="?([^";]+)"?/i);
  return plain ? plain[1] : fallback;
}

// PDFs and plain text open in a new tab (PDF viewers honour #page=N); other types are downloaded,
// never rendered: an uploaded HTML page must not run on this origin.
// `fallback` runs instead when no original is stored (a batch-job document): show its passage.
export async function openOriginal(collection, documentId, page, fallback = null) {
  const win = window.open("about:blank", "_blank");
  try {
    const response = await raw(filePath(collection, documentId));
    const type = (response.headers.get("content-type") || "").split(";")[0].trim();
    const blob = new Blob([await response.blob()], { type });
    const href = URL.createObjectURL(blob);
    setTimeout(() => URL.revokeObjectURL(href), 120000);
    if (type === "application/pdf" || type === "text/plain") {
      const target = page && type === "application/pdf" ? `${href}#page=${page}` : href;
      if (win) win.location.href = target;
      else el("a", { href: target, target: "_blank", rel: "noopener" }).click();
    } else {
      win?.close();
      el("a", { href, download: filenameOf(response, `document-${documentId}`) }).click();
    }
  } catch (err) {
    win?.close();
    if (err.status === 404 && fallback) fallback();
    else notice(err.status === 404 ? "The original file of this document is not stored." : err.message);
  }
}

function originalLink(collection, documentId, page) {
  const label = page ? `Open the original at page ${page}` : "Open the original file";
  const link = el("a", {
    id: "docview-open",
    href: fileUrl(collection, documentId, page),
    target: "_blank",
    rel: "noopener",
    text: label,
    onclick: (event) => {
      event.preventDefault();
      openOriginal(collection, documentId, page);
    },
  });
  const holder = el("p", { class: "docview-original" }, link);
  // Batch-job documents have no stored original: say so instead of offering a dead link.
  raw(filePath(collection, documentId), { method: "HEAD" }).catch((err) => {
    if (err.status === 404) {
      holder.replaceChildren(
        "The original file is not stored for this document (batch-job dumps are not kept); " +
          "the passage above is the stored text.",
      );
    }
  });
  return holder;
}

function render(title, ...children) {
  const box = dialog();
  box.querySelector("#docview-title").textContent = title;
  box.querySelector("#docview-body").replaceChildren(...children);
  if (!box.open) box.showModal();
  box.querySelector("#docview-close").focus();
}

// A passage: {collection, document_id, title, source_id, page, heading, text, query, label}
export function showPassage(p) {
  const meta = [p.source_id, where(p)].filter(Boolean).join(" · ");
  render(
    p.title || p.source_id || `Document ${p.document_id}`,
    el("p", { class: "meta", id: "docview-meta", text: meta }),
    p.label ? el("p", { class: "help", text: p.label }) : null,
    el(
      "blockquote",
      { id: "docview-text", dataset: { page: p.page ?? "", chunk: p.chunk_id ?? "" } },
      highlight(p.text || "", terms(p.query)),
    ),
    originalLink(p.collection, p.document_id, p.page),
  );
}

export async function showDocument(collection, documentId) {
  try {
    const d = await api(collectionPath(collection, `/documents/${documentId}`));
    const rows = [
      ["Source", d.source_id],
      ["Type", d.mime_type],
      ["Status", d.error ? `${d.status}: ${d.error}` : d.status],
      ["Passages", d.chunks],
      ["Size", bytes(d.size_bytes)],
      ["Version", d.version],
      ["Updated", new Date(d.updated_at).toLocaleString()],
      ...Object.entries(d.metadata || {}).map(([k, v]) => [k, typeof v === "string" ? v : JSON.stringify(v)]),
    ];
    const list = el("dl", { class: "facts" }, rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
    render(d.title || d.source_id, list, originalLink(collection, documentId, null));
  } catch (err) {
    notice(err.message);
  }
}

export function initDocview() {
  const box = dialog();
  box.querySelector("#docview-close").addEventListener("click", () => box.close());
  box.addEventListener("click", (e) => e.target === box && box.close()); // a click on the backdrop
}
