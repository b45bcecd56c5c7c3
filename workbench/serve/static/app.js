// The chat page: talks to the same /v1/chat/completions endpoint as any OpenAI client.
// Conversations live in this browser's localStorage; nothing is loaded from outside this server.
"use strict";

const $ = (id) => document.getElementById(id);
const STORE = "picochat.conversations";
const SETTINGS = "picochat.settings";
const SETTING_IDS = ["temperature", "top_p", "top_k", "max_tokens", "seed", "system", "api-key"];
const KEPT_CONVERSATIONS = 50;
const MODEL_RETRY_SECONDS = [1, 2, 5, 10]; // then every 10 s
const BOTTOM_SLACK_PX = 24; // a reader this close to the bottom is "at the bottom" and gets followed

// A new element with its class and text, so that markup built here reads as the tree it makes.
function newElement(tag, className = "", text = "") {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text) node.textContent = text;
  return node;
}

let model = null; // the /v1/models card; Send stays off until it has come
let conversations = loadConversations();
let current = null; // the conversation on screen
let controller = null; // AbortController of the answer being streamed
let following = true; // whether the log sticks to the bottom as an answer grows

// ---- storage ----

function load(key, fallback) {
  try { return JSON.parse(localStorage.getItem(key)) ?? fallback; } catch { return fallback; }
}

// Whatever is in storage (an older page's format, another tab's half-written state, hand edits)
// comes back as well-formed conversations or not at all.
function loadConversations() {
  const saved = load(STORE, []);
  if (!Array.isArray(saved)) return [];
  const text = (value) => (typeof value === "string" ? value : "");
  return saved
    .filter((c) => c && typeof c === "object" && Array.isArray(c.messages))
    .map((c, index) => ({
      id: text(c.id) || `saved-${index}`,
      title: text(c.title) || "Untitled",
      named: c.named === true,
      messages: c.messages
        .filter((m) => m && (m.role === "user" || m.role === "assistant") && typeof m.content === "string")
        .map((m) => ({
          role: m.role, content: m.content, reasoning: text(m.reasoning), meta: text(m.meta),
          error: text(m.error), model: text(m.model),
          // an answer still streaming when its tab closed ended there
          state: m.state === "streaming" ? "stopped" : (text(m.state) || "done"),
        })),
    }));
}

function save() {
  try {
    localStorage.setItem(STORE, JSON.stringify(conversations.slice(0, KEPT_CONVERSATIONS)));
  } catch (error) {
    setStatus(`Could not save the chats in this browser: ${error.message}`);
  }
}

function headers() {
  const key = $("api-key").value.trim();
  return { "Content-Type": "application/json", ...(key ? { Authorization: `Bearer ${key}` } : {}) };
}
function setStatus(text) { $("status").textContent = text; }

// ---- the model ----

function formatParams(n) {
  if (!n) return "";
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)}B params`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M params`;
  return `${(n / 1e3).toFixed(1)}K params`;
}

let modelAttempt = 0; // only the latest /v1/models request may set the model
let modelFailures = 0;
let modelRetry = null;

async function loadModel() {
  const attempt = ++modelAttempt;
  clearTimeout(modelRetry);
  model = null;
  updateControls();
  setStatus("Waiting for the model…");
  let response;
  let body = null;
  try {
    response = await fetch("/v1/models", { headers: headers() });
    body = await response.json().catch(() => null);
  } catch (error) {
    if (attempt === modelAttempt) retryModel(`Could not reach the server (${error.message})`);
    return;
  }
  if (attempt !== modelAttempt) return;
  if (response.status === 401) {
    setStatus("This server needs an API key: enter it in Settings.");
    toggleSettings(true);
    return;
  }
  const card = response.ok && body && Array.isArray(body.data) ? body.data[0] : null;
  if (!card || typeof card.id !== "string") {
    retryModel(`The server did not name its model (HTTP ${response.status})`);
    return;
  }
  modelFailures = 0;
  model = card;
  $("model-name").textContent = model.id;
  const context = model.context_length ? ` · context ${model.context_length} tokens` : "";
  $("model-size").textContent = `${formatParams(model.params)}${context}`;
  if (model.context_length) $("max_tokens").max = model.context_length - 1;
  setStatus("");
  updateControls();
}

function retryModel(problem) {
  const seconds = MODEL_RETRY_SECONDS[Math.min(modelFailures++, MODEL_RETRY_SECONDS.length - 1)];
  setStatus(`${problem}; retrying in ${seconds} s…`);
  modelRetry = setTimeout(loadModel, seconds * 1000);
}

function modelName(message) {
  return message.model || (model ? model.id : "picochat");
}

// ---- conversations ----

function newConversation() {
  current = { id: `${Date.now()}-${Math.random().toString(36).slice(2, 8)}`, title: "New chat", named: false,
              messages: [] };
  showConversation();
}

function openConversation(conversation) {
  if (conversation === current) { closeDrawer(); return; }
  if (controller) {
    setStatus("An answer is still coming: press Stop to leave this chat.");
    return;
  }
  current = conversation;
  showConversation();
}

function showConversation() {
  following = true;
  renderMessages();
  renderHistory();
  closeDrawer();
}

function remember() {
  if (!conversations.includes(current)) conversations.unshift(current);
  const first = current.messages.find((m) => m.role === "user");
  if (first && !current.named) current.title = first.content.slice(0, 40);
  save();
  renderHistory();
}

function renderHistory() {
  $("history").replaceChildren(...conversations.map(historyItem));
}

function historyItem(conversation) {
  const item = document.createElement("li");
  item.dataset.id = conversation.id;
  const open = newElement("button", "open", conversation.title);
  open.type = "button";
  open.title = conversation.title;
  if (conversation === current) open.setAttribute("aria-current", "page");
  open.addEventListener("click", () => openConversation(conversation));
  const actions = $("chat-actions").content.cloneNode(true);
  const action = (name, label, handler) => {
    const button = actions.querySelector(`.${name}`);
    button.setAttribute("aria-label", `${label} ${conversation.title}`);
    button.title = label;
    button.addEventListener("click", handler);
  };
  action("rename", "Rename", () => startRename(item, conversation));
  action("copy", "Copy", () => copyText(transcript(conversation)));
  action("delete", "Delete", () => deleteConversation(conversation));
  item.append(open, actions);
  return item;
}

function focusInHistory(conversation, selector) {
  const item = [...$("history").children].find((li) => li.dataset.id === conversation.id);
  if (item) item.querySelector(selector).focus();
}

function startRename(item, conversation) {
  const field = newElement("input", "rename-field");
  field.value = conversation.title;
  field.maxLength = 200;
  field.setAttribute("aria-label", "Chat name");
  item.querySelector(".open").replaceWith(field);
  field.focus();
  field.select();
  let ended = false;
  const end = (keep) => {
    if (ended) return;
    ended = true;
    const title = field.value.trim();
    if (keep && title && title !== conversation.title) {
      conversation.title = title;
      conversation.named = true; // the first question no longer names it
      save();
    }
    renderHistory();
    focusInHistory(conversation, ".rename");
  };
  field.addEventListener("keydown", (event) => {
    if (event.isComposing || event.keyCode === 229) return;
    if (event.key === "Enter") { event.preventDefault(); end(true); }
    if (event.key === "Escape") { event.preventDefault(); event.stopPropagation(); end(false); }
  });
  field.addEventListener("blur", () => end(true));
}

function deleteConversation(conversation) {
  if (controller && conversation === current) {
    setStatus("An answer is still coming: press Stop before deleting this chat.");
    return;
  }
  if (!window.confirm(`Delete the chat “${conversation.title}”?`)) return;
  const index = conversations.indexOf(conversation);
  conversations = conversations.filter((c) => c !== conversation);
  save();
  if (conversation === current) newConversation(); else renderHistory();
  const next = conversations[Math.min(index, conversations.length - 1)];
  if (next) focusInHistory(next, ".open"); else $("new-chat").focus();
  setStatus(`Deleted “${conversation.title}”.`);
}

function transcript(conversation) {
  return conversation.messages
    .map((m) => `${m.role === "user" ? "You" : modelName(m)}: ${m.content}`)
    .join("\n\n");
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // no clipboard API outside secure contexts (a plain-http LAN address): the old way still works
    const scratch = document.createElement("textarea");
    scratch.value = text;
    scratch.setAttribute("readonly", "");
    scratch.className = "visually-hidden";
    document.body.append(scratch);
    scratch.select();
    const copied = document.execCommand("copy");
    scratch.remove();
    if (!copied) { setStatus("This browser would not copy: select the text instead."); return; }
  }
  setStatus("Copied to the clipboard.");
}

// ---- rendering ----

function messageElement(message) {
  const article = newElement("article", `message ${message.role}`);
  article.append(newElement("div", "role", message.role === "user" ? "You" : modelName(message)));
  if (message.role === "assistant") {
    const thought = newElement("details", "thought");
    thought.append(newElement("summary", "", "Thought"), newElement("div", "thought-text"));
    article.append(thought);
  }
  const copy = newElement("button", "copy-message", "Copy");
  copy.type = "button";
  copy.addEventListener("click", () => copyText(message.content));
  const footer = newElement("div", "footer");
  footer.append(newElement("span", "meta muted"), copy);
  article.append(newElement("div", "content"), footer);
  showMessage(article, message);
  return article;
}

// The parts of a message element that change while it streams, except its content.
function showState(element, message) {
  const state = message.state || "done";
  element.dataset.state = state;
  element.setAttribute("aria-busy", String(state === "streaming"));
  element.querySelector(".meta").textContent = message.meta || "";
  element.querySelector(".copy-message").hidden = state === "streaming";
  const thought = element.querySelector(".thought");
  if (thought) {
    thought.hidden = !message.reasoning;
    thought.querySelector(".thought-text").textContent = message.reasoning || "";
  }
}

// The whole message, content included: rendered in one go, or, for an answer that was streaming,
// finished by its StreamView.
function showMessage(element, message, view = null) {
  showState(element, message);
  const content = element.querySelector(".content");
  if (message.role === "user") {
    content.textContent = message.content;
    return;
  }
  if (view) view.finish(message.content);
  else content.innerHTML = Markdown.render(message.content);
  if (message.error) {
    content.append(newElement("div", "error", message.error));
  }
}

function renderMessages() {
  $("messages").replaceChildren(...current.messages.map(messageElement));
  followLatest();
  updateControls();
}

function appendMessage(message) {
  const element = messageElement(message);
  $("messages").append(element);
  return element;
}

// ---- following the latest text ----

function atBottom() {
  const box = $("messages");
  return box.scrollHeight - box.scrollTop - box.clientHeight <= BOTTOM_SLACK_PX;
}

// After the log grew: a reader at the bottom stays there; one who scrolled up is left in peace and
// offered a way down.
function followLatest() {
  if (following) $("messages").scrollTop = $("messages").scrollHeight;
  $("jump-latest").hidden = following || atBottom();
}

function jumpToLatest() {
  following = true;
  followLatest();
}

// ---- talking to the server ----

function requestBody() {
  const number = (id) => ($(id).value === "" ? undefined : Number($(id).value));
  const system = $("system").value.trim();
  const history = current.messages
    .filter((m) => m.state !== "streaming" && m.content.trim())
    .map((m) => ({ role: m.role, content: m.content }));
  return {
    model: model.id,
    messages: system ? [{ role: "system", content: system }, ...history] : history,
    stream: true,
    stream_options: { include_usage: true },
    temperature: number("temperature"),
    top_p: number("top_p"),
    top_k: number("top_k"),
    // never more than the context holds beside a prompt of one token (the server would refuse it)
    max_tokens: model.context_length && number("max_tokens")
      ? Math.min(number("max_tokens"), model.context_length - 1) : number("max_tokens"),
    seed: number("seed"),
  };
}

// Yields each parsed `data:` event of a server-sent-events response until [DONE].
async function* serverEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const event = JSON.parse(data);
        if (event.error) throw new Error(event.error.message);
        yield event;
      }
    }
  }
}

async function generate() {
  const body = requestBody();
  const answer = { role: "assistant", content: "", reasoning: "", state: "streaming", model: model.id };
  current.messages.push(answer);
  remember();
  following = true; // a new question: its answer is what the reader wants to see
  const element = appendMessage(answer);
  const view = new Markdown.StreamView(element.querySelector(".content"));
  followLatest();
  controller = new AbortController();
  updateControls();
  const started = performance.now();
  let firstToken = null;
  // At most one repaint per frame, and each repaint renders only the unfinished last block.
  let frame = 0;
  const draw = () => {
    frame ||= requestAnimationFrame(() => {
      frame = 0;
      view.update(answer.content);
      showState(element, answer);
      followLatest();
    });
  };
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) {
      const problem = await response.json().catch(() => ({}));
      throw new Error(problem.error ? problem.error.message : `HTTP ${response.status}`);
    }
    let finish = null;
    let usage = null;
    for await (const event of serverEvents(response)) {
      if (event.usage) usage = event.usage;
      for (const choice of event.choices) {
        const delta = choice.delta || {};
        if (delta.content || delta.reasoning_content) firstToken ??= performance.now();
        if (delta.content) answer.content += delta.content;
        if (delta.reasoning_content) answer.reasoning += delta.reasoning_content;
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      draw();
    }
    answer.state = "done";
    const seconds = (performance.now() - started) / 1000;
    const parts = [finish === "length" ? "stopped at the token limit" : null];
    if (usage) parts.push(`${usage.completion_tokens} tokens, ${(usage.completion_tokens / seconds).toFixed(1)} tok/s`);
    if (firstToken) parts.push(`first token ${Math.round(firstToken - started)} ms`);
    answer.meta = parts.filter(Boolean).join(" · ");
  } catch (error) {
    if (error.name === "AbortError") {
      answer.state = "stopped";
      answer.meta = "stopped";
    } else {
      answer.state = "error";
      answer.error = error.message;
    }
  } finally {
    cancelAnimationFrame(frame);
    controller = null;
    showMessage(element, answer, view);
    followLatest();
    remember();
    updateControls();
  }
}

function updateControls() {
  const busy = controller !== null;
  $("send").hidden = busy;
  $("send").disabled = !model;
  $("stop").hidden = !busy;
  const last = current && current.messages[current.messages.length - 1];
  $("regenerate").hidden = busy || !model || !(last && last.role === "assistant");
}

// ---- the drawer (phone width: the history slides in over the chat) ----

const phoneWidth = window.matchMedia("(max-width: 40rem)");

function openDrawer() {
  document.body.classList.add("drawer-open");
  $("menu-toggle").setAttribute("aria-expanded", "true");
  $("backdrop").hidden = false;
  document.querySelector("main").inert = true; // Tab stays in the drawer; the chat under it is out of reach
  $("new-chat").focus();
}

function closeDrawer() {
  if (!document.body.classList.contains("drawer-open")) return;
  document.body.classList.remove("drawer-open");
  $("menu-toggle").setAttribute("aria-expanded", "false");
  $("backdrop").hidden = true;
  document.querySelector("main").inert = false;
  $("menu-toggle").focus();
}

// ---- wiring ----

function toggleSettings(open) {
  const panel = $("settings");
  panel.hidden = open === undefined ? !panel.hidden : !open;
  $("settings-toggle").setAttribute("aria-expanded", String(!panel.hidden));
}

function restoreSettings() {
  const saved = load(SETTINGS, {});
  for (const id of SETTING_IDS) {
    if (typeof saved[id] === "string") $(id).value = saved[id];
    $(id).addEventListener("change", () => {
      const now = load(SETTINGS, {});
      now[id] = $(id).value;
      localStorage.setItem(SETTINGS, JSON.stringify(now));
      if (id === "api-key") loadModel();
    });
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller || !model) return;
  $("input").value = "";
  const question = { role: "user", content: text };
  current.messages.push(question);
  appendMessage(question);
  generate();
});
$("input").addEventListener("keydown", (event) => {
  // Enter that picks an input-method candidate (Japanese, Chinese, Korean...) is not a send.
  if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.keyCode === 229) return;
  event.preventDefault();
  $("composer").requestSubmit();
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("regenerate").addEventListener("click", () => {
  if (controller || !model) return;
  const last = current.messages[current.messages.length - 1];
  if (last && last.role === "assistant") {
    current.messages.pop();
    $("messages").lastElementChild.remove();
  }
  generate();
});
$("new-chat").addEventListener("click", () => {
  if (controller) setStatus("An answer is still coming: press Stop to start a new chat.");
  else newConversation();
});
$("messages").addEventListener("scroll", () => {
  following = atBottom();
  $("jump-latest").hidden = following;
});
$("jump-latest").addEventListener("click", jumpToLatest);
$("menu-toggle").addEventListener("click", () => {
  if (document.body.classList.contains("drawer-open")) closeDrawer(); else openDrawer();
});
$("backdrop").addEventListener("click", closeDrawer);
$("sidebar").addEventListener("keydown", (event) => {
  // in the open drawer, Tab goes round its own controls (the page behind is inert)
  if (event.key !== "Tab" || !document.body.classList.contains("drawer-open")) return;
  const stops = [...$("sidebar").querySelectorAll("button, input")];
  const [first, last] = [stops[0], stops[stops.length - 1]];
  if (event.shiftKey && document.activeElement === first) { event.preventDefault(); last.focus(); }
  if (!event.shiftKey && document.activeElement === last) { event.preventDefault(); first.focus(); }
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") closeDrawer();
});
phoneWidth.addEventListener("change", closeDrawer);
$("settings-toggle").addEventListener("click", () => toggleSettings());
$("settings").addEventListener("submit", (event) => event.preventDefault());

restoreSettings();
newConversation();
loadModel();
