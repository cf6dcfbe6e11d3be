// The anybind chat page: a client of the server's own OpenAI-compatible stream
// (POST /v1/chat/completions, stream: true). The conversation lives here, in `messages`,
// and is sent whole with each question, as OpenAI clients do.
"use strict";

const config = JSON.parse(document.getElementById("config").textContent);
const $ = (id) => document.getElementById(id);
const transcript = $("transcript"), prompt = $("prompt"), filesInput = $("files");
const sendButton = $("send"), stopButton = $("stop"), pendingList = $("pending");

let messages = [];      // the conversation, in OpenAI's format
let pending = [];       // attachments for the next message: {name, size, type, url}
let running = null;     // the AbortController of the answer being streamed
let apiKey = sessionStorage.getItem("anybind-key") || "";

// --- what can be attached --------------------------------------------------------------
const reads = config.reads || {};
const kinds = Object.entries(reads).filter(([m]) => m !== "text")
  .map(([m, suffixes]) => `${m} (${suffixes.join(" ")})`);
$("model").textContent = `${config.model} · ${config.backbone}`;
$("hint").textContent = (kinds.length ? `Attach ${kinds.join(", ")}` : "This model reads no attachments")
  + (config.makes && config.makes.length ? `. It can make: ${config.makes.join(", ")}.` : ".")
  + ` Up to ${Math.round(config.max_upload_bytes / 2 ** 20)} MB a file.`;
const suffixes = Object.values(reads).flat();
filesInput.accept = [...new Set(suffixes.map((s) => "." + s.split(".").pop()))].join(",");

function modalityOf(name) {
  const lower = name.toLowerCase();
  let best = null, length = 0;
  for (const [m, list] of Object.entries(reads)) {
    for (const s of list) if (lower.endsWith(s) && s.length > length) { best = m; length = s.length; }
  }
  return best;
}

// --- attachments -----------------------------------------------------------------------
function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function attach(fileList) {
  for (const file of fileList) {
    const url = await readFile(file);
    pending.push({ name: file.name, size: file.size, type: file.type, url });
  }
  showPending();
}

function showPending() {
  pendingList.replaceChildren(...pending.map((item, i) => {
    const chip = document.createElement("span");
    chip.className = "chip";
    const kind = modalityOf(item.name);
    chip.textContent = `${item.name} · ${kind || "unknown kind"} · ${(item.size / 1024).toFixed(1)} KB`;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = `Remove ${item.name}`;
    remove.onclick = () => { pending.splice(i, 1); showPending(); };
    chip.append(remove);
    return chip;
  }));
}

filesInput.addEventListener("change", async () => { await attach(filesInput.files); filesInput.value = ""; });

let dragDepth = 0;
window.addEventListener("dragenter", (e) => { e.preventDefault(); dragDepth++; $("drop").hidden = false; });
window.addEventListener("dragleave", () => { if (--dragDepth <= 0) { dragDepth = 0; $("drop").hidden = true; } });
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", async (e) => {
  e.preventDefault();
  dragDepth = 0;
  $("drop").hidden = true;
  if (e.dataTransfer && e.dataTransfer.files.length) await attach(e.dataTransfer.files);
});

// --- the transcript --------------------------------------------------------------------
function bubble(role) {
  const div = document.createElement("div");
  div.className = `message ${role}`;
  transcript.append(div);
  return div;
}

function media(mime, src, label) {
  let element;
  if (mime.startsWith("image/")) {
    element = document.createElement("img");
    element.alt = label;
  } else if (mime.startsWith("audio/") || mime.startsWith("video/")) {
    element = document.createElement(mime.startsWith("audio/") ? "audio" : "video");
    element.controls = true;
  } else {
    element = document.createElement("a");
    element.download = label;
    element.textContent = label;
  }
  element[element.tagName === "A" ? "href" : "src"] = src;
  element.className = "output";
  return element;
}

function showUser(text, attachments) {
  const div = bubble("user");
  for (const item of attachments) {
    const mime = item.url.slice(5, item.url.indexOf(";"));
    if (mime.startsWith("image/") || mime.startsWith("audio/")) div.append(media(mime, item.url, item.name));
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.textContent = item.name;
    div.append(chip);
  }
  const p = document.createElement("p");
  p.textContent = text;
  div.append(p);
  div.scrollIntoView({ block: "end" });
  return div;
}

function showError(message, after) {
  const div = document.createElement("div");
  div.className = "message error";
  div.setAttribute("role", "alert");
  div.textContent = message;
  (after || transcript.lastChild) ? (after || transcript.lastChild).after(div) : transcript.append(div);
  div.scrollIntoView({ block: "end" });
}

// --- asking ----------------------------------------------------------------------------
function headers() {
  const h = { "Content-Type": "application/json" };
  if (apiKey) h.Authorization = `Bearer ${apiKey}`;
  return h;
}

async function errorOf(response) {
  try {
    const body = await response.json();
    return body.error ? body.error.message : JSON.stringify(body);
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

function setRunning(controller) {
  running = controller;
  sendButton.hidden = !!controller;
  stopButton.hidden = !controller;
  prompt.disabled = !!controller;
}

async function ask(text) {
  const attachments = pending;
  const content = [{ type: "text", text }].concat(attachments.map((item) => (
    { type: "file", file: { filename: item.name, file_data: item.url } })));
  const userDiv = showUser(text, attachments);
  pending = [];
  showPending();
  const controller = new AbortController();
  setRunning(controller);
  const answer = bubble("assistant");
  answer.classList.add("streaming");
  let said = "", textNode = null, outputs = 0, finished = false;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({ model: config.model, messages: messages.concat([{ role: "user", content }]), stream: true }),
    });
    if (!response.ok) {
      answer.remove();
      if (response.status === 401) {
        $("key").hidden = false;
        $("key-input").focus();
      }
      userDiv.classList.add("failed");
      showError(await errorOf(response), userDiv);
      // nothing is lost: the question and its attachments are back in the composer
      // (the message names the file at fault; remove it with its ×, or fix the key, and send again)
      prompt.value = text;
      pending = attachments.concat(pending);
      showPending();
      return;
    }
    messages.push({ role: "user", content });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    while (!finished) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of block.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") { finished = true; break; }
          const chunk = JSON.parse(data);
          if (chunk.error) { showError(chunk.error.message, answer); continue; }
          const delta = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta) || {};
          const extra = delta.anybind || {};
          if (extra.notice) {
            const note = document.createElement("p");
            note.className = "notice";
            note.textContent = extra.notice;
            answer.append(note);
          }
          if (delta.content) said += delta.content;
          if (extra.outputs) {
            for (const out of extra.outputs) {
              answer.append(media(out.mime, `data:${out.mime};base64,${out.data}`, `${out.type} ${out.index + 1}`));
              outputs++;
            }
            textNode = null;
          } else if (delta.content) {
            if (!textNode) { textNode = document.createElement("span"); textNode.className = "text"; answer.append(textNode); }
            textNode.textContent += delta.content;
          }
          answer.scrollIntoView({ block: "end" });
        }
      }
    }
  } catch (error) {
    if (error.name === "AbortError") {
      const note = document.createElement("p");
      note.className = "notice";
      note.textContent = "(stopped)";
      answer.append(note);
    } else {
      showError(`The connection failed: ${error.message}`, answer);
    }
  } finally {
    answer.classList.remove("streaming");
    if (said || outputs) messages.push({ role: "assistant", content: said });
    if (running === controller) setRunning(null);
    prompt.focus();
  }
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = prompt.value.trim();
  if (running || (!text && !pending.length)) return;
  prompt.value = "";
  ask(text);
});
prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
});
stopButton.addEventListener("click", () => running && running.abort());
$("new").addEventListener("click", () => {
  if (running) running.abort();
  messages = [];
  pending = [];
  showPending();
  transcript.replaceChildren();
  prompt.focus();
});
$("key-input").addEventListener("change", (e) => {
  apiKey = e.target.value.trim();
  sessionStorage.setItem("anybind-key", apiKey);
});
prompt.focus();
