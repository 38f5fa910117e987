// The chat pane: one server-side session per collection, answers streamed token by token (SSE over
// fetch, so the API key header is sent), then numbered citations that open the cited passage.

import { ApiError, api, sse } from "./api.js";
import { showPassage } from "./docview.js";
import { state } from "./state.js";
import { el, setStatus, where } from "./ui.js";

const sessions = new Map(); // collection name -> chat session id

async function sessionFor(collection) {
  if (!sessions.has(collection)) {
    const created = await api("v1/chat/sessions", { method: "POST", body: { collection } });
    sessions.set(collection, created.id);
  }
  return sessions.get(collection);
}

function passageOf(citation, collection, query) {
  return { ...citation, collection, query, text: citation.snippet, label: `Citation [${citation.n}]` };
}

function citeButton(citation, collection, query, label) {
  const title = citation.title || citation.source_id;
  return el("button", {
    type: "button",
    class: "cite",
    dataset: { n: citation.n },
    text: label,
    "aria-label": `Citation ${citation.n}: ${title}${citation.page ? `, page ${citation.page}` : ""}`,
    onclick: () => showPassage(passageOf(citation, collection, query)),
  });
}

// The answer with every [n] that names a known citation turned into a button.
function answerWithLinks(text, citations, collection, query) {
  const byN = new Map(citations.map((c) => [c.n, c]));
  const frag = document.createDocumentFragment();
  let last = 0;
  for (const m of text.matchAll(/\[(\d+)\]/g)) {
    const c = byN.get(Number(m[1]));
    if (!c) continue;
    frag.append(text.slice(last, m.index), citeButton(c, collection, query, m[0]));
    last = m.index + m[0].length;
  }
  frag.append(text.slice(last));
  return frag;
}

function sourcesList(citations, collection, query) {
  const items = [...citations]
    .sort((a, b) => Number(b.cited) - Number(a.cited) || a.n - b.n)
    .map((c) =>
      el(
        "li",
        { class: c.cited ? "cited" : "uncited" },
        citeButton(c, collection, query, `[${c.n}] ${c.title || c.source_id}`),
        el("span", { class: "meta", text: [where(c), c.cited ? "" : "not cited"].filter(Boolean).join(" · ") }),
      ),
    );
  return el("ol", { class: "citations", "aria-label": "Sources" }, items);
}

function bubble(role, text) {
  const body = el("div", { class: "text", text });
  const node = el("article", { class: `msg ${role}` }, el("h3", { class: "who", text: role === "user" ? "You" : "kb" }), body);
  document.getElementById("chat-log").append(node);
  return { node, body };
}

async function send(event) {
  event.preventDefault();
  const input = document.getElementById("chat-input");
  const content = input.value.trim();
  const collection = state.collection;
  if (!collection) return setStatus("chat-status", "Create or choose a collection first.", "error");
  if (!content) return setStatus("chat-status", "Type a question.", "error");
  const button = document.getElementById("chat-send");
  button.disabled = true;
  input.value = "";
  bubble("user", content);
  const answer = bubble("assistant", "");
  answer.node.setAttribute("aria-busy", "true");
  setStatus("chat-status", "Answering…");
  const log = document.getElementById("chat-log");
  let text = "";
  let citations = [];
  let usage = null;
  let query = content;
  try {
    const sid = await sessionFor(collection);
    const stream = sse(`v1/chat/sessions/${encodeURIComponent(sid)}/messages`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ content, stream: true }),
    });
    for await (const { event: kind, data } of stream) {
      if (kind === "delta") {
        text += data.text;
        answer.body.textContent = text;
        log.scrollTop = log.scrollHeight;
      } else if (kind === "citations") citations = data.citations || [];
      else if (kind === "usage") usage = data;
      else if (kind === "done") query = data.query || content;
      else if (kind === "error") throw new ApiError(data.status || 502, data.detail);
    }
    answer.body.replaceChildren(answerWithLinks(text, citations, collection, query));
    if (citations.length) answer.node.append(sourcesList(citations, collection, query));
    const ttft = usage?.latency?.ttft_ms;
    setStatus("chat-status", usage ? `${usage.completion_tokens} tokens${ttft ? `, first after ${Math.round(ttft)} ms` : ""}` : "");
  } catch (err) {
    if (err.status === 404) sessions.delete(collection); // session gone (deleted, or another database)
    answer.node.classList.add("failed");
    answer.body.textContent = text ? `${text}\n\n` : "";
    answer.body.append(el("strong", { text: `Error: ${err.message}` }));
    setStatus("chat-status", err.message, "error");
  } finally {
    answer.node.removeAttribute("aria-busy");
    button.disabled = false;
    log.scrollTop = log.scrollHeight;
  }
}

function newChat() {
  const sid = sessions.get(state.collection);
  sessions.delete(state.collection);
  if (sid) api(`v1/chat/sessions/${encodeURIComponent(sid)}`, { method: "DELETE" }).catch(() => {});
  document.getElementById("chat-log").replaceChildren();
  setStatus("chat-status", "");
  document.getElementById("chat-input").focus();
}

export function initChat() {
  document.getElementById("chat-form").addEventListener("submit", send);
  document.getElementById("chat-new").addEventListener("click", newChat);
  // Enter sends, Shift+Enter adds a line.
  document.getElementById("chat-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      document.getElementById("chat-form").requestSubmit();
    }
  });
  document.addEventListener("kb:collection", () => {
    document.getElementById("chat-log").replaceChildren();
    setStatus("chat-status", "");
  });
}
