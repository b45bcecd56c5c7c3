// The chat page: talks to the same /v1/chat/completions endpoint as any OpenAI client.
// Conversations live in this browser's localStorage; nothing is loaded from outside this server.
"use strict";

const $ = (id) => document.getElementById(id);
const STORE = "picochat.conversations";
const SETTINGS = "picochat.settings";
const SETTING_IDS = ["temperature", "top_p", "top_k", "max_tokens", "seed", "system", "api-key"];

let model = null; // the /v1/models card
let conversations = load(STORE, []);
let current = null; // the conversation on screen
let controller = null; // AbortController of the answer being streamed

function load(key, fallback) {
  try { return JSON.parse(localStorage.getItem(key)) ?? fallback; } catch { return fallback; }
}
function save() {
  localStorage.setItem(STORE, JSON.stringify(conversations.slice(0, 50)));
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

async function loadModel() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (response.status === 401) {
    setStatus("This server needs an API key: enter it in Settings.");
    toggleSettings(true);
    return;
  }
  const body = await response.json();
  model = body.data[0];
  $("model-name").textContent = model.id;
  const context = model.context_length ? ` · context ${model.context_length} tokens` : "";
  $("model-size").textContent = `${formatParams(model.params)}${context}`;
  if (model.context_length) $("max_tokens").max = model.context_length;
  setStatus("");
}

// ---- conversations ----

function newConversation() {
  current = { id: `${Date.now()}`, title: "New chat", messages: [] };
  renderMessages();
  renderHistory();
}

function renderHistory() {
  const list = $("history");
  list.replaceChildren();
  for (const conversation of conversations) {
    const item = document.createElement("li");
    item.textContent = conversation.title;
    item.className = current && conversation.id === current.id ? "current" : "";
    item.onclick = () => { if (!controller) { current = conversation; renderMessages(); renderHistory(); } };
    list.append(item);
  }
}

function remember() {
  if (!conversations.includes(current)) conversations.unshift(current);
  const first = current.messages.find((m) => m.role === "user");
  if (first) current.title = first.content.slice(0, 40);
  save();
  renderHistory();
}

// ---- rendering ----

function messageElement(message) {
  const element = document.createElement("div");
  element.className = `message ${message.role}`;
  const role = document.createElement("div");
  role.className = "role";
  role.textContent = message.role === "user" ? "You" : (model ? model.id : "picochat");
  element.append(role);
  if (message.role === "assistant") {
    const thought = document.createElement("details");
    thought.className = "thought";
    thought.innerHTML = "<summary>Thought</summary><div class=\"thought-text\"></div>";
    const content = document.createElement("div");
    content.className = "content";
    const meta = document.createElement("div");
    meta.className = "meta muted";
    element.append(thought, content, meta);
  } else {
    const content = document.createElement("div");
    content.className = "content";
    element.append(content);
  }
  updateMessage(element, message);
  return element;
}

function updateMessage(element, message) {
  element.dataset.state = message.state || "done";
  const content = element.querySelector(".content");
  if (message.role === "user") {
    content.textContent = message.content;
    return;
  }
  content.innerHTML = Markdown.render(message.content);
  const thought = element.querySelector(".thought");
  thought.hidden = !message.reasoning;
  thought.querySelector(".thought-text").textContent = message.reasoning || "";
  const meta = element.querySelector(".meta");
  meta.textContent = message.meta || "";
  if (message.error) {
    const error = document.createElement("div");
    error.className = "error";
    error.textContent = message.error;
    content.append(error);
  }
}

function renderMessages() {
  const box = $("messages");
  box.replaceChildren(...current.messages.map(messageElement));
  box.scrollTop = box.scrollHeight;
  const last = current.messages[current.messages.length - 1];
  $("regenerate").hidden = !(last && last.role === "assistant") || controller !== null;
}

// ---- talking to the server ----

function requestBody() {
  const number = (id) => ($(id).value === "" ? undefined : Number($(id).value));
  const system = $("system").value.trim();
  const history = current.messages
    .filter((m) => m.state !== "streaming" && m.content.trim())
    .map((m) => ({ role: m.role, content: m.content }));
  return {
    model: model ? model.id : "picochat",
    messages: system ? [{ role: "system", content: system }, ...history] : history,
    stream: true,
    stream_options: { include_usage: true },
    temperature: number("temperature"),
    top_p: number("top_p"),
    top_k: number("top_k"),
    // never more than the context holds (the server would refuse it)
    max_tokens: model && model.context_length && number("max_tokens")
      ? Math.min(number("max_tokens"), model.context_length) : number("max_tokens"),
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
  const answer = { role: "assistant", content: "", reasoning: "", state: "streaming" };
  const body = requestBody();
  current.messages.push(answer);
  remember();
  renderMessages();
  const element = $("messages").lastElementChild;
  controller = new AbortController();
  setBusy(true);
  const started = performance.now();
  let firstToken = null;
  let redraw = 0;
  const draw = () => {
    if (redraw) return;
    redraw = requestAnimationFrame(() => {
      redraw = 0;
      updateMessage(element, answer);
      $("messages").scrollTop = $("messages").scrollHeight;
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
    if (redraw) cancelAnimationFrame(redraw);
    redraw = 0;
    controller = null;
    setBusy(false);
    updateMessage(element, answer);
    remember();
    renderMessages();
  }
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  $("regenerate").hidden = true;
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
    if (saved[id] !== undefined) $(id).value = saved[id];
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
  if (!text || controller) return;
  $("input").value = "";
  current.messages.push({ role: "user", content: text });
  generate();
});
$("input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("regenerate").addEventListener("click", () => {
  if (controller) return;
  const last = current.messages[current.messages.length - 1];
  if (last && last.role === "assistant") current.messages.pop();
  generate();
});
$("new-chat").addEventListener("click", () => { if (!controller) newConversation(); });
$("settings-toggle").addEventListener("click", () => toggleSettings());
$("settings").addEventListener("submit", (event) => event.preventDefault());

restoreSettings();
newConversation();
loadModel().catch((error) => setStatus(`Could not reach the server: ${error.message}`));
