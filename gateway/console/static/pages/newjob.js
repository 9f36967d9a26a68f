// New job: base model, method, files, every hyperparameter (tunegate name, LLaMA-Factory name, "auto" default),
// presets, and the equivalent client.fine_tuning.jobs.create(...) call shown live.

import { h, clear, field, codeBlock } from "../dom.js";
import { t } from "../i18n.js";
import { get, listAll, post } from "../api.js";

// The README's table: [tunegate name, LLaMA-Factory name, type, methods]. Empty = "auto" (the server's default).
export const HYPERPARAMETERS = [
  ["n_epochs", "num_train_epochs", "int"],
  ["batch_size", "per_device_train_batch_size", "int"],
  ["learning_rate_multiplier", "learning_rate (× 1e-4)", "float"],
  ["learning_rate", "learning_rate", "float"],
  ["beta", "pref_beta", "float", ["dpo"]],
  ["lora_rank", "lora_rank", "int"],
  ["lora_alpha", "lora_alpha", "int"],
  ["lora_dropout", "lora_dropout", "float"],
  ["lora_target", "lora_target", "target"],
  ["loraplus_lr_ratio", "loraplus_lr_ratio", "float"],
  ["cutoff_len", "cutoff_len", "int"],
  ["gradient_accumulation_steps", "gradient_accumulation_steps", "int"],
  ["max_grad_norm", "max_grad_norm", "float"],
  ["lr_scheduler_type", "lr_scheduler_type", ["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial", "inverse_sqrt"]],
  ["warmup_ratio", "warmup_ratio", "float"],
  ["packing", "packing / neat_packing", "bool"],
  ["group_by_length", "group_by_length", "bool"],
  ["precision", "bf16 / fp16 / pure_bf16", ["bf16", "fp16", "fp32"]],
  ["micro_batch_tokens", "—", "int", ["supervised"]],
  ["gradient_checkpointing", "disable_gradient_checkpointing (inverted)", "bool"],
  ["quantization_bit", "quantization_bit", ["4", "8"]],
];

// Settings of the tutorials people come from (LLaMA-Factory's examples/train_lora/*.yaml, Unsloth's notebooks).
export const PRESETS = {
  auto: { method: null, values: {} },
  llamafactory_sft: { method: "supervised", values: { n_epochs: 3, batch_size: 1, gradient_accumulation_steps: 8, learning_rate: 1e-4,
    lora_rank: 8, lora_target: "all", cutoff_len: 2048, lr_scheduler_type: "cosine", warmup_ratio: 0.1 } },
  llamafactory_dpo: { method: "dpo", values: { n_epochs: 3, batch_size: 1, gradient_accumulation_steps: 8, learning_rate: 5e-6,
    beta: 0.1, lora_rank: 8, lora_target: "all", cutoff_len: 2048, lr_scheduler_type: "cosine", warmup_ratio: 0.1 } },
  unsloth: { method: "supervised", values: { n_epochs: 1, batch_size: 2, gradient_accumulation_steps: 4, learning_rate: 2e-4,
    lora_rank: 16, lora_alpha: 16, lora_dropout: 0, lr_scheduler_type: "linear", warmup_ratio: 0.03 } },
  memorize: { method: "supervised", values: { n_epochs: 30, batch_size: 4, learning_rate: 0.005, lora_rank: 32 } },
};

function parseValue(name, type, raw) {
  if (raw === "") return undefined;
  if (type === "int") return Number.parseInt(raw, 10);
  if (type === "float") return Number(raw);
  if (type === "bool") return raw === "true";
  if (type === "target") return raw === "all" ? "all" : raw.split(",").map((s) => s.trim()).filter(Boolean);
  if (name === "quantization_bit") return Number(raw);
  return raw;
}

function pyValue(v) {
  if (typeof v === "string") return JSON.stringify(v);
  if (typeof v === "boolean") return v ? "True" : "False";
  if (Array.isArray(v)) return `[${v.map(pyValue).join(", ")}]`;
  return String(v);
}

export function snippet(body) {
  const hp = body.method[body.method.type].hyperparameters;
  const hpText = Object.entries(hp).map(([k, v]) => `${JSON.stringify(k)}: ${pyValue(v)}`).join(", ");
  const lines = [
    "from openai import OpenAI",
    `client = OpenAI(base_url="${location.origin}/v1", api_key="sk-tg-…")`,
    "job = client.fine_tuning.jobs.create(",
    `    model=${pyValue(body.model)},`,
    `    training_file=${pyValue(body.training_file)},`,
  ];
  if (body.validation_file) lines.push(`    validation_file=${pyValue(body.validation_file)},`);
  if (body.suffix) lines.push(`    suffix=${pyValue(body.suffix)},`);
  lines.push(`    method={"type": "${body.method.type}", "${body.method.type}": {"hyperparameters": {${hpText}}}},`, ")", "print(job.id, job.status)");
  return lines.join("\n");
}

export default {
  title: "newjob.title",
  async render(main, { go, query }) {
    const [models, files] = await Promise.all([get("/v1/models"), listAll("/v1/files?purpose=fine-tune&order=desc")]);
    const bases = models.data.filter((m) => !m.id.startsWith("ft:"));
    const model = h("select", { name: "model" }, bases.map((m) => h("option", { value: m.id }, m.id)));
    const fileOptions = (none) => [none ? h("option", { value: "" }, none) : null,
      ...files.filter((f) => f.status === "processed").map((f) => h("option", { value: f.id }, `${f.filename} (${f.id})`))];
    const training = h("select", { name: "training_file", required: true }, fileOptions(null));
    if (query.get("file")) training.value = query.get("file");
    const validation = h("select", { name: "validation_file" }, fileOptions(t("newjob.no_validation")));
    const suffix = h("input", { name: "suffix", maxlength: 64, placeholder: "my-model" });
    const methods = ["supervised", "dpo"].map((m) => h("label", { class: "radio" },
      h("input", { type: "radio", name: "method", value: m, checked: m === "supervised" }), t(`newjob.method_${m}`)));
    const method = () => main.querySelector("input[name=method]:checked").value;
    const preset = h("select", { name: "preset" }, Object.keys(PRESETS).map((p) => h("option", { value: p }, t(`newjob.preset_${p}`))));

    const controls = {};
    const rows = HYPERPARAMETERS.map(([name, lf, type, only]) => {
      let control;
      if (type === "bool" || Array.isArray(type)) {
        const choices = type === "bool" ? ["true", "false"] : type;
        control = h("select", { name }, h("option", { value: "" }, "auto"), choices.map((c) => h("option", { value: c }, c)));
      } else {
        control = h("input", { name, inputmode: type === "target" ? "text" : "decimal", placeholder: "auto" });
      }
      controls[name] = { control, type, only };
      control.id = `hp-${name}`;
      return h("tr", { class: only ? `only-${only.join(" only-")}` : "" },
        h("td", {}, h("label", { for: control.id, class: "mono" }, name)),
        h("td", { class: "mono muted" }, lf),
        h("td", {}, control),
        h("td", { class: "muted" }, t(`hp.${name}`)));
    });
    const code = codeBlock("", t("common.copy"));
    const status = h("div", { role: "alert" });

    const body = () => {
      const m = method();
      const hyperparameters = {};
      for (const [name, { control, type, only }] of Object.entries(controls)) {
        if (only && !only.includes(m)) continue;
        const value = parseValue(name, type, control.value.trim());
        if (value !== undefined && !Number.isNaN(value)) hyperparameters[name] = value;
      }
      const out = { model: model.value, training_file: training.value, method: { type: m, [m]: { hyperparameters } } };
      if (validation.value) out.validation_file = validation.value;
      if (suffix.value.trim()) out.suffix = suffix.value.trim();
      return out;
    };
    const update = () => {
      main.querySelector(".hp").dataset.method = method();
      code.querySelector("code").textContent = snippet(body());
    };
    preset.addEventListener("change", () => {
      const p = PRESETS[preset.value];
      if (p.method) main.querySelector(`input[name=method][value=${p.method}]`).checked = true;
      for (const [name, { control }] of Object.entries(controls)) control.value = p.values[name] ?? "";
      update();
    });
    const submit = h("button", { type: "submit" }, t("newjob.start"));
    const form = h("form", { class: "newjob", oninput: update, onchange: update, onsubmit: async (e) => {
      e.preventDefault();
      submit.disabled = true;
      clear(status);
      try {
        const job = await post("/v1/fine_tuning/jobs", body());
        go(`#/jobs/${job.id}`);
      } catch (err) {
        clear(status, h("p", { class: "error" }, err.param ? `${err.param}: ${err.message}` : err.message));
        submit.disabled = false;
      }
    } },
      h("section", { class: "card" }, h("h2", {}, t("newjob.what")),
        h("div", { class: "grid two" }, field(t("newjob.model"), model), field(t("newjob.suffix"), suffix),
          field(t("newjob.training_file"), training, files.length ? null : t("newjob.upload_first")),
          field(t("newjob.validation_file"), validation, t("newjob.validation_hint"))),
        h("fieldset", { class: "radios" }, h("legend", {}, t("newjob.method")), methods)),
      h("section", { class: "card" }, h("h2", {}, t("newjob.hyperparameters")),
        field(t("newjob.preset"), preset, t("newjob.preset_hint")),
        h("div", { class: "scroll" }, h("table", { class: "table hp" },
          h("thead", {}, h("tr", {}, h("th", {}, "tunegate"), h("th", {}, "LLaMA-Factory"), h("th", {}, t("newjob.value")), h("th", {}, t("newjob.meaning")))),
          h("tbody", {}, rows)))),
      h("section", { class: "card" }, h("h2", {}, t("newjob.code")), code),
      h("div", { class: "actions" }, submit), status);
    clear(main, h("h1", {}, t("newjob.title")), form);
    update();
  },
};
