// The one piece of state the panes share: the selected collection (kept across reloads).

const STORE = "kb.collection";

export const state = { collection: localStorage.getItem(STORE) || "", collections: [] };

export function setCollection(name) {
  if (name === state.collection) return;
  state.collection = name;
  if (name) localStorage.setItem(STORE, name);
  else localStorage.removeItem(STORE);
  document.dispatchEvent(new CustomEvent("kb:collection", { detail: name }));
}

// Uploads and deletes announce themselves so the collection list and counts refresh.
export function libraryChanged() {
  document.dispatchEvent(new CustomEvent("kb:library"));
}
