// HTTP helpers shared by every pane: the API key header on every request (fetch, XHR upload and
// the SSE streams alike), JSON error details turned into readable messages, and a small SSE reader.
// EventSource is not used on purpose: it cannot send an Authorization header.

const KEY_STORE = "kb.apiKey";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
  }
}

export function getKey() {
  return localStorage.getItem(KEY_STORE) || "";
}

export function setKey(value) {
  if (value) localStorage.setItem(KEY_STORE, value);
  else localStorage.removeItem(KEY_STORE);
}

export function authHeaders(extra = {}) {
  const key = getKey();
  return key ? { ...extra, authorization: `Bearer ${key}` } : { ...extra };
}

// Relative to the page, so kb also works behind a reverse proxy under a path prefix.
export function url(path) {
  return new URL(path.replace(/^\//, ""), document.baseURI).toString();
}

export function collectionPath(name, rest = "") {
  return `v1/collections/${encodeURIComponent(name)}${rest}`;
}

export function fileUrl(collection, documentId, page) {
  const base = url(collectionPath(collection, `/documents/${documentId}/file`));
  return page ? `${base}#page=${page}` : base;
}

const unauthorized = new Set();
export function onUnauthorized(fn) {
  unauthorized.add(fn);
}

async function errorFrom(response) {
  let detail = "";
  try {
    const body = await response.json();
    detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail ?? body);
  } catch {
    detail = response.statusText;
  }
  if (response.status === 401) unauthorized.forEach((fn) => fn(detail));
  return new ApiError(response.status, `${detail || "request failed"} (HTTP ${response.status})`);
}

export async function raw(path, options = {}) {
  const response = await fetch(url(path), { ...options, headers: authHeaders(options.headers) });
  if (!response.ok) throw await errorFrom(response);
  return response;
}

export async function api(path, { method = "GET", body, signal } = {}) {
  const options = { method, signal, headers: {} };
  if (body !== undefined) {
    options.headers["content-type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await raw(path, options);
  return response.status === 204 ? null : response.json();
}

// Server-sent events over fetch: yields {event, data} with data parsed as JSON when it is JSON.
export async function* sse(path, options = {}) {
  const headers = { accept: "text/event-stream", ...(options.headers || {}) };
  const response = await raw(path, { ...options, headers });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const parsed = parseFrame(frame);
        if (parsed) yield parsed;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function parseFrame(frame) {
  let event = "message";
  const data = [];
  for (const line of frame.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  const text = data.join("\n");
  try {
    return { event, data: JSON.parse(text) };
  } catch {
    return { event, data: text };
  }
}

// Multipart upload through XHR, the only browser API that reports upload progress.
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url(path));
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress?.(e.loaded / e.total);
    xhr.onerror = () => reject(new ApiError(0, "network error: the server could not be reached"));
    xhr.onload = () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        /* not JSON */
      }
      if (xhr.status >= 200 && xhr.status < 300) return resolve(body);
      const detail = body && typeof body.detail === "string" ? body.detail : xhr.statusText;
      if (xhr.status === 401) unauthorized.forEach((fn) => fn(detail));
      reject(new ApiError(xhr.status, `${detail || "upload failed"} (HTTP ${xhr.status})`));
    };
    xhr.send(form);
  });
}
