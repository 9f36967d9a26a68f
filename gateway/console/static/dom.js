// Tiny DOM helpers: h() builds elements, never from HTML strings (everything shown is text, so nothing injects).

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2).toLowerCase(), value);
    else if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let i = -1;
  do { n /= 1024; i++; } while (n >= 1024 && i < units.length - 1);
  return `${n.toFixed(n < 10 ? 1 : 0)} ${units[i]}`;
}

export function formatTime(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "";
}

let ids = 0;
export function uid(prefix = "f") { return `${prefix}-${++ids}`; }

// A labelled form field: <div class="field"><label for=…>…</label><control id=…><small>hint</small></div>
export function field(label, control, hint) {
  control.id = control.id || uid();
  return h("div", { class: "field" }, h("label", { for: control.id }, label), control,
           hint ? h("small", { class: "hint" }, hint) : null);
}

// Text with <think>…</think> blocks folded into <details> (reasoning shown folded).
export function withThinking(text, summary) {
  const parts = [];
  const re = /<think>([\s\S]*?)(<\/think>|$)/g;
  let last = 0, m;
  while ((m = re.exec(text)) !== null) {
    if (m.index > last) parts.push(h("span", {}, text.slice(last, m.index)));
    parts.push(thinking(m[1], summary));
    last = re.lastIndex;
    if (m[0].length === 0) break;
  }
  if (last < text.length) parts.push(h("span", {}, text.slice(last)));
  return parts;
}

export function thinking(text, summary) {
  return h("details", { class: "think" }, h("summary", {}, summary), h("div", { class: "think-body" }, text));
}

export function copyButton(label, text) {
  return h("button", { type: "button", class: "small", onclick: (e) => {
    navigator.clipboard?.writeText(typeof text === "function" ? text() : text);
    e.target.blur();
  } }, label);
}

export function codeBlock(text, copyLabel) {
  const code = h("code", {}, text);
  return h("div", { class: "code" }, h("pre", {}, code), copyLabel ? copyButton(copyLabel, () => code.textContent) : null);
}
