// DOM helpers. Every piece of server text goes in through textContent (never innerHTML), so a document
// or a model answer can never inject markup into the page that holds the API key.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const STOP = new Set(["the", "and", "for", "with", "what", "when", "who", "how", "are", "is", "of", "to", "in"]);

export function terms(query) {
  const words = (query || "").toLowerCase().match(/[\p{L}\p{N}]+/gu) || [];
  return [...new Set(words.filter((w) => w.length > 1 && !STOP.has(w)))];
}

function escapeRe(s) {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

function termsRe(words) {
  return words.length ? new RegExp(`(${words.map(escapeRe).join("|")})`, "giu") : null;
}

// A window of `size` characters around the first query term, so long chunks stay readable.
export function excerpt(text, words, size = 320) {
  const clean = (text || "").replace(/\s+/g, " ").trim();
  if (clean.length <= size) return clean;
  const re = termsRe(words);
  const at = re ? clean.search(re) : -1;
  const start = Math.max(0, Math.min(at < 0 ? 0 : at - size / 3, clean.length - size));
  const cut = clean.slice(Math.floor(start), Math.floor(start) + size);
  return `${start > 0 ? "… " : ""}${cut}${start + size < clean.length ? " …" : ""}`;
}

// Text with every query term wrapped in <mark>.
export function highlight(text, words) {
  const frag = document.createDocumentFragment();
  const re = termsRe(words);
  if (!re) {
    frag.append(text);
    return frag;
  }
  let last = 0;
  for (const m of text.matchAll(re)) {
    frag.append(text.slice(last, m.index), el("mark", { text: m[0] }));
    last = m.index + m[0].length;
  }
  frag.append(text.slice(last));
  return frag;
}

export function bytes(n) {
  if (!n && n !== 0) return "";
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function where(hit) {
  const parts = [];
  if (hit.page) parts.push(`page ${hit.page}`);
  if (hit.heading && hit.heading.length) parts.push(hit.heading.join(" › "));
  return parts.join(" · ");
}

let noticeTimer;
// One page-level message area (role=alert): errors and hints that are not tied to a pane.
export function notice(message, kind = "error") {
  const box = document.getElementById("notice");
  box.textContent = message;
  box.dataset.kind = kind;
  box.hidden = !message;
  clearTimeout(noticeTimer);
  if (message && kind !== "error") noticeTimer = setTimeout(() => (box.hidden = true), 6000);
}

export function setStatus(id, message, kind = "") {
  const node = document.getElementById(id);
  node.textContent = message;
  node.dataset.kind = kind;
}
