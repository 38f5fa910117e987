// Entry point: wires the panes together and handles the API key (stored in localStorage, sent as
// `Authorization: Bearer` by api.js). A 401 anywhere points the user at the key field.

import { getKey, onUnauthorized, setKey } from "./api.js";
import { initChat } from "./chat.js";
import { initDocview } from "./docview.js";
import { initLibrary, loadCollections } from "./library.js";
import { initSearch } from "./search.js";
import { notice } from "./ui.js";

function initKey() {
  const form = document.getElementById("key-form");
  const input = document.getElementById("api-key");
  input.value = getKey();
  let told = false; // say "needs a key" once per key, not once per failed request
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    setKey(input.value.trim());
    told = false;
    form.classList.remove("needed");
    notice(input.value.trim() ? "API key saved in this browser." : "API key removed.", "info");
    loadCollections();
  });
  onUnauthorized((detail) => {
    form.classList.add("needed");
    if (told) return;
    told = true;
    notice(`${getKey() ? "The API key was refused" : "This server needs an API key"}: ${detail || "401"}. Enter it above.`);
    input.focus();
  });
}

initKey();
initDocview();
initSearch();
initChat();
initLibrary();
loadCollections();
