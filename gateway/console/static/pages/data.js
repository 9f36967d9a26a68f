// Data: upload (drag and drop, progress), the API's validation problems by line, a preview of the first examples
// as chats, the file list with purpose, size and delete.

import { h, clear, field, formatBytes, formatTime, withThinking } from "../dom.js";
import { t } from "../i18n.js";
import { del, headLines, listAll, upload } from "../api.js";

const PREVIEW_EXAMPLES = 5;

// The API's 400 message lists problems as "- line 3 (example 2): [invalid_json] Not valid JSON…" lines.
export function problemsOf(message) {
  const lines = message.split("\n");
  const problems = lines.slice(1).filter((l) => l.startsWith("- ")).map((l) => {
    const m = l.slice(2).match(/^(?:(.*?): )?\[(\w+)\] (.*)$/);
    if (!m) return { where: "", line: null, category: "", message: l.slice(2) };
    const line = m[1]?.match(/line (\d+)/);
    return { where: m[1] || "", line: line ? Number(line[1]) : null, category: m[2], message: m[3] };
  });
  return { head: lines[0], problems };
}

function problemTable(message) {
  const { head, problems } = problemsOf(message);
  return h("div", { class: "problems", role: "alert" }, h("p", { class: "error" }, head),
    problems.length ? h("table", { class: "table" },
      h("thead", {}, h("tr", {}, h("th", {}, t("data.line")), h("th", {}, t("data.where")), h("th", {}, t("data.category")), h("th", {}, t("data.message")))),
      h("tbody", {}, problems.map((p) => h("tr", { class: "problem" },
        h("td", { class: "num" }, p.line ?? "–"), h("td", {}, p.where), h("td", { class: "mono" }, p.category), h("td", {}, p.message)))))
      : null);
}

function turn(role, content, extra) {
  const text = typeof content === "string" ? content
    : Array.isArray(content) ? content.map((c) => c.text ?? "").join("") : content == null ? "" : JSON.stringify(content);
  return h("div", { class: `turn ${role}` }, h("span", { class: "role" }, t(`role.${role}`) || role),
    h("div", { class: "content" }, withThinking(text, t("common.reasoning")), extra));
}

function chat(messages) {
  return messages.map((m) => turn(m.role, m.content,
    m.tool_calls ? h("pre", { class: "tool-call" }, m.tool_calls.map((c) => `${c.function?.name}(${c.function?.arguments})`).join("\n")) : null));
}

// One normalized example (chat or DPO) rendered as a conversation.
export function example(row) {
  if (row.messages) return h("div", { class: "chat" }, chat(row.messages));
  if (row.input?.messages) {
    const pick = (o) => o?.[0] ?? o;
    return h("div", { class: "chat" }, chat(row.input.messages),
      h("div", { class: "dpo" }, h("div", { class: "preferred" }, h("h4", {}, t("data.preferred")), chat([pick(row.preferred_output)])),
        h("div", { class: "rejected" }, h("h4", {}, t("data.rejected")), chat([pick(row.non_preferred_output)]))));
  }
  return h("pre", { class: "json" }, JSON.stringify(row.item ?? row, null, 2));
}

async function preview(file, box) {
  const format = file.purpose === "fine-tune" ? "?format=normalized" : "";
  clear(box, h("p", { class: "muted" }, t("common.loading")));
  const rows = (await headLines(`/v1/files/${file.id}/content${format}`, PREVIEW_EXAMPLES)).map((l) => JSON.parse(l));
  clear(box, h("h3", {}, t("data.preview_of", { name: file.filename, n: rows.length })),
    rows.map((row, i) => h("article", { class: "example" }, h("h4", {}, t("data.example_n", { n: i + 1 })), example(row))));
  box.scrollIntoView({ block: "nearest" });
}

function fileTable(files, refresh, previewBox) {
  if (!files.length) return h("p", { class: "muted" }, t("data.no_files"));
  return h("table", { class: "table files" },
    h("thead", {}, h("tr", {}, ["data.filename", "data.purpose", "data.size", "data.status", "common.created", "common.actions"]
      .map((k) => h("th", {}, t(k))))),
    h("tbody", {}, files.map((f) => h("tr", { dataset: { fileId: f.id } },
      h("td", {}, h("span", { class: "filename" }, f.filename), h("br"), h("small", { class: "mono muted" }, f.id)),
      h("td", {}, f.purpose), h("td", { class: "num" }, formatBytes(f.bytes)), h("td", {}, f.status),
      h("td", {}, formatTime(f.created_at)),
      h("td", { class: "actions" },
        h("button", { type: "button", class: "small", onclick: () => preview(f, previewBox) }, t("data.preview")),
        h("button", { type: "button", class: "small danger", "aria-label": t("data.delete_named", { name: f.filename }), onclick: async () => {
          if (!confirm(t("data.confirm_delete", { name: f.filename }))) return;
          await del(`/v1/files/${f.id}`);
          refresh();
        } }, t("common.delete")))))));
}

export default {
  title: "data.title",
  async render(main) {
    const listBox = h("div"), previewBox = h("div", { class: "preview", id: "preview" }), result = h("div", { id: "upload-result" });
    const input = h("input", { type: "file", id: "file-input", accept: ".jsonl,.json", class: "visually-hidden" });
    const purpose = h("select", { id: "purpose" }, ["fine-tune", "evals"].map((p) => h("option", { value: p }, p)));
    const progress = h("progress", { max: 1, value: 0, hidden: true, "aria-label": t("data.progress") });
    const refresh = async () => {
      const files = await listAll("/v1/files?order=desc");
      clear(listBox, fileTable(files, refresh, previewBox));
    };
    const send = async (file) => {
      const form = new FormData();
      form.append("purpose", purpose.value);
      form.append("file", file, file.name);
      progress.hidden = false;
      progress.value = 0;
      clear(result, h("p", { class: "muted" }, t("data.uploading", { name: file.name })));
      try {
        const made = await upload("/v1/files", form, (fraction) => { progress.value = fraction; });
        clear(result, h("p", { class: "ok", role: "status" }, t("data.uploaded", { name: made.filename, id: made.id })));
        await refresh();
        preview(made, previewBox);
      } catch (err) {
        clear(result, problemTable(err.message));
      } finally {
        progress.hidden = true;
      }
    };
    input.addEventListener("change", () => input.files[0] && send(input.files[0]).finally(() => { input.value = ""; }));
    const zone = h("label", { class: "dropzone", for: "file-input", tabindex: "0",
      onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } },
      ondragover: (e) => { e.preventDefault(); zone.classList.add("over"); },
      ondragleave: () => zone.classList.remove("over"),
      ondrop: (e) => { e.preventDefault(); zone.classList.remove("over"); if (e.dataTransfer.files[0]) send(e.dataTransfer.files[0]); },
    }, h("strong", {}, t("data.drop")), h("span", { class: "muted" }, t("data.formats")));
    clear(main, h("h1", {}, t("data.title")),
      h("section", { class: "card" }, h("h2", {}, t("data.upload")), field(t("data.purpose"), purpose), zone, input, progress, result),
      h("section", { class: "card" }, h("h2", {}, t("data.files")), listBox),
      h("section", { class: "card" }, previewBox));
    await refresh();
  },
};
