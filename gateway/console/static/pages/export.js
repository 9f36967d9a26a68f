// Export: format and quant, progress, a download of each file, the Modelfile shown, the ollama / llama-server
// commands to copy. Exports are ordinary /v1/exports jobs; their files are ordinary /v1/files.

import { h, clear, field, codeBlock, formatBytes, formatTime } from "../dom.js";
import { t } from "../i18n.js";
import { download, get, post, text } from "../api.js";

const FORMATS = ["gguf", "gguf_adapter", "safetensors"];
const QUANTS = ["q4_k_m", "q8_0", "q6_k", "q5_k_m", "q4_0", "q3_k_m", "q2_k", "f16", "bf16", "f32"];
const POLL_MS = 1000;

function commands(exp) {
  const name = exp.model.split(":").slice(-2, -1)[0] || "my-model";
  const ggufs = exp.output_files.filter((f) => f.filename.endsWith(".gguf"));
  const out = [];
  if (exp.output_files.some((f) => f.filename === "Modelfile")) out.push(`ollama create ${name} -f Modelfile && ollama run ${name}`);
  if (exp.format === "gguf" && ggufs[0]) out.push(`llama-server -m ${ggufs[0].filename} --jinja`);
  if (exp.format === "gguf_adapter" && ggufs.length === 2) {
    const lora = ggufs.find((f) => f.filename.includes("-lora-")) || ggufs[1];
    const base = ggufs.find((f) => f !== lora);
    out.push(`llama-server -m ${base.filename} --lora ${lora.filename} --jinja`);
  }
  if (exp.format === "safetensors") out.push(`tar xf ${exp.output_files[0]?.filename ?? "…"}`);
  return out.join("\n");
}

async function exportCard(exp) {
  const pct = Math.round((exp.progress || 0) * 100);
  const card = h("article", { class: "card export", dataset: { exportId: exp.id, status: exp.status } },
    h("div", { class: "title-row" }, h("h3", { class: "mono" }, `${exp.format}${exp.quant ? ` · ${exp.quant}` : ""}`),
      h("span", { class: `badge ${exp.status}` }, t(`status.${exp.status}`))),
    h("p", { class: "mono muted" }, exp.model, " · ", exp.id, " · ", formatTime(exp.created_at)),
    ["queued", "running"].includes(exp.status) ? [
      h("progress", { max: 100, value: pct, "aria-label": t("export.progress") }), h("span", {}, ` ${pct}% ${exp.stage || ""}`),
      h("button", { type: "button", class: "small danger", onclick: () => post(`/v1/exports/${exp.id}/cancel`) }, t("job.cancel")),
    ] : null,
    exp.error ? h("p", { class: "error" }, `${exp.error.code}: ${exp.error.message}`) : null,
    (exp.warnings || []).map((w) => h("p", { class: "warning" }, w)));
  if (exp.status !== "succeeded") return card;
  const modelfile = exp.output_files.find((f) => f.filename === "Modelfile");
  card.append(h("h4", {}, t("export.files")), h("ul", { class: "files" }, exp.output_files.map((f) => h("li", {},
    h("button", { type: "button", class: "small", onclick: () => download(`/v1/files/${f.id}/content`, f.filename) }, t("export.download")),
    " ", h("span", { class: "mono" }, f.filename), " ", h("small", { class: "muted" }, formatBytes(f.bytes))))),
  h("h4", {}, t("export.commands")), codeBlock(commands(exp), t("common.copy")));
  if (modelfile) card.append(h("details", { class: "modelfile", open: true }, h("summary", {}, "Modelfile"),
    codeBlock(await text(`/v1/files/${modelfile.id}/content`), t("common.copy"))));
  return card;
}

export default {
  title: "export.title",
  async render(main, { query }) {
    const models = (await get("/v1/models")).data.map((m) => m.id).filter((id) => id.startsWith("ft:"));
    const model = h("select", { name: "export-model" }, models.map((m) => h("option", { value: m }, m)));
    if (query.get("model")) model.value = query.get("model");
    const format = h("select", { name: "format" }, FORMATS.map((f) => h("option", { value: f }, t(`export.format_${f}`))));
    const quant = h("select", { name: "quant" }, QUANTS.map((q) => h("option", { value: q }, q)));
    const system = h("input", { name: "system", placeholder: t("export.system_hint") });
    format.addEventListener("change", () => { quant.disabled = format.value === "safetensors"; });
    const status = h("div", { role: "alert" });
    const list = h("div", { id: "exports" });
    let timer = null, stopped = false, seen = null;
    const refresh = async () => {
      clearTimeout(timer);
      const page = await get("/v1/exports?limit=20");
      if (stopped) return;
      const now = JSON.stringify(page.data);
      if (now !== seen) clear(list, await Promise.all(page.data.map(exportCard)));
      seen = now;
      if (page.data.some((e) => ["queued", "running"].includes(e.status))) timer = setTimeout(refresh, POLL_MS);
    };
    const form = h("form", { class: "card", onsubmit: async (e) => {
      e.preventDefault();
      const body = { model: model.value, format: format.value };
      if (format.value !== "safetensors") body.quant = quant.value;
      if (system.value.trim()) body.system = system.value.trim();
      try {
        await post("/v1/exports", body);
        clear(status);
        refresh();
      } catch (err) {
        clear(status, h("p", { class: "error" }, err.param ? `${err.param}: ${err.message}` : err.message));
      }
    } }, h("h2", {}, t("export.new")),
      models.length ? null : h("p", { class: "muted" }, t("export.no_models")),
      h("div", { class: "grid two" }, field(t("export.model"), model), field(t("export.format"), format),
        field(t("export.quant"), quant, t("export.quant_hint")), field(t("export.system"), system)),
      h("button", { type: "submit", disabled: !models.length }, t("export.start")), status);
    clear(main, h("h1", {}, t("export.title")), form, h("h2", {}, t("export.list")), list);
    await refresh();
    return () => { stopped = true; clearTimeout(timer); };
  },
};
