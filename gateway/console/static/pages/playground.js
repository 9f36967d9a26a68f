// Playground: the same prompt to up to three models side by side (base, fine-tuned, a checkpoint), streamed;
// temperature / max tokens; reasoning folded; the request as Python.

import { h, clear, field, codeBlock, withThinking } from "../dom.js";
import { t } from "../i18n.js";
import { get, stream } from "../api.js";

const MAX_COLUMNS = 3;

function requestCode(model, body) {
  return [
    "from openai import OpenAI",
    `client = OpenAI(base_url="${location.origin}/v1", api_key="sk-tg-…")`,
    "for chunk in client.chat.completions.create(",
    `    model=${JSON.stringify(model)},`,
    `    messages=${JSON.stringify(body.messages, null, 1).replace(/\n\s*/g, " ")},`,
    `    temperature=${body.temperature}, max_tokens=${body.max_tokens}, stream=True,`,
    "):",
    "    if chunk.choices:",
    "        print(chunk.choices[0].delta.content or \"\", end=\"\")",
  ].join("\n");
}

// ft:{base}:{org}:{suffix}:{id}[:ckpt-step-N] → "{base} · {suffix}:{id} · ckpt-step-N": the parts that differ.
export function shortName(id) {
  if (!id.startsWith("ft:")) return id;
  const [, base, , suffix, tag, ckpt] = id.split(":");
  return [base, `${suffix}:${tag}`, ckpt].filter(Boolean).join(" · ");
}

class Column {
  constructor(models, initial, onRemove) {
    this.history = [];
    const names = initial && !models.includes(initial) ? [...models, initial] : models;
    this.select = h("select", { class: "model" }, names.map((m) => h("option", { value: m, title: m }, shortName(m))));
    if (initial) this.select.value = initial;
    this.log = h("div", { class: "chat log", "aria-live": "polite" });
    this.el = h("section", { class: "card column" },
      h("div", { class: "column-head" }, field(t("playground.model"), this.select),
        onRemove ? h("button", { type: "button", class: "small ghost", "aria-label": t("playground.remove"), onclick: () => onRemove(this) }, "✕") : null),
      this.log);
  }

  async send(prompt, system, params, signal) {
    const messages = [...(system ? [{ role: "system", content: system }] : []), ...this.history, { role: "user", content: prompt }];
    const body = { model: this.select.value, messages, ...params, stream_options: { include_usage: true } };
    const reasoning = h("div", { class: "think-body" });
    const fold = h("details", { class: "think", hidden: true }, h("summary", {}, t("common.reasoning")), reasoning);
    const content = h("div", { class: "content answer" });
    const usage = h("small", { class: "muted" });
    this.log.append(h("div", { class: "turn user" }, h("span", { class: "role" }, t("role.user")), h("div", { class: "content" }, prompt)),
      h("div", { class: "turn assistant" }, h("span", { class: "role" }, t("role.assistant")), fold, content, usage));
    let text = "";
    try {
      for await (const chunk of stream("/v1/chat/completions", body, signal)) {
        const delta = chunk.choices?.[0]?.delta;
        if (delta?.reasoning_content) { fold.hidden = false; reasoning.textContent += delta.reasoning_content; }
        if (delta?.content) { text += delta.content; clear(content, withThinking(text, t("common.reasoning"))); }
        if (chunk.usage) usage.textContent = t("playground.usage", { prompt: chunk.usage.prompt_tokens, completion: chunk.usage.completion_tokens });
      }
      content.dataset.done = "true";
      this.history.push({ role: "user", content: prompt }, { role: "assistant", content: text });
    } catch (err) {
      content.append(h("p", { class: "error", role: "alert" }, err.message));
      content.dataset.done = "error";
    }
    return requestCode(body.model, body);
  }

  reset() { this.history = []; clear(this.log); }
}

async function servable() {
  const models = (await get("/v1/models")).data.map((m) => m.id);
  return models.sort((a, b) => Number(a.startsWith("ft:")) - Number(b.startsWith("ft:")));
}

export default {
  title: "playground.title",
  async render(main, { query }) {
    const models = await servable();
    const wanted = (query.get("models") || "").split(",").filter(Boolean);
    const columnsBox = h("div", { class: "columns" });
    const columns = [];
    const addColumn = (initial) => {
      if (columns.length >= MAX_COLUMNS) return;
      const col = new Column(models, initial, columns.length ? (c) => { columns.splice(columns.indexOf(c), 1); c.el.remove(); sync(); } : null);
      columns.push(col);
      columnsBox.append(col.el);
      sync();
    };
    const add = h("button", { type: "button", class: "ghost", onclick: () => addColumn(models[columns.length] ?? models[0]) }, t("playground.add"));
    const sync = () => { add.disabled = columns.length >= MAX_COLUMNS; columnsBox.dataset.n = String(columns.length); };
    const prompt = h("textarea", { name: "prompt", rows: 3, required: true, placeholder: t("playground.placeholder") });
    const system = h("input", { name: "system", placeholder: t("playground.system_hint") });
    const temperature = h("input", { type: "number", name: "temperature", min: 0, max: 2, step: 0.1, value: 0 });
    const maxTokens = h("input", { type: "number", name: "max_tokens", min: 1, max: 4096, step: 1, value: 128 });
    const code = codeBlock("", t("common.copy"));
    const codeBox = h("details", { class: "card" }, h("summary", {}, t("playground.code")), code);
    const send = h("button", { type: "submit" }, t("playground.send"));
    let controller = null;
    const form = h("form", { class: "card prompt", onsubmit: async (e) => {
      e.preventDefault();
      if (!prompt.value.trim()) return;
      controller = new AbortController();
      send.disabled = true;
      const params = { temperature: Number(temperature.value), max_tokens: Number(maxTokens.value) };
      const codes = await Promise.all(columns.map((c) => c.send(prompt.value, system.value.trim(), params, controller.signal)));
      code.querySelector("code").textContent = codes.join("\n\n");
      prompt.value = "";
      send.disabled = false;
      prompt.focus();
    } },
      field(t("playground.prompt"), prompt),
      h("div", { class: "grid three" }, field(t("playground.system"), system), field(t("playground.temperature"), temperature), field(t("playground.max_tokens"), maxTokens)),
      h("div", { class: "actions" }, send,
        h("button", { type: "button", class: "ghost", onclick: () => controller?.abort() }, t("playground.stop")),
        h("button", { type: "button", class: "ghost", onclick: () => columns.forEach((c) => c.reset()) }, t("playground.clear")), add));
    prompt.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit(); });
    clear(main, h("h1", {}, t("playground.title")), form, columnsBox, codeBox);
    (wanted.length ? wanted : models.slice(0, 1)).slice(0, MAX_COLUMNS).forEach((m) => addColumn(m));
    return () => controller?.abort();
  },
};
