// Evals (/v1/evals): create an eval from a file's fields, run it over one or several models, per-criterion pass
// rates, and a per-item table (failures only on demand) with the generated text next to the reference.

import { h, clear, field, formatTime } from "../dom.js";
import { t } from "../i18n.js";
import { get, listAll, post } from "../api.js";
import { barChart, chartBox } from "../chart.js";

const METRICS = ["rouge_l", "rouge_1", "rouge_2", "bleu"];
const POLL_MS = 1500;
const itemField = (template) => template?.match(/\{\{\s*item\.(\w+)\s*\}\}/)?.[1];

function createForm(onCreated) {
  const name = h("input", { name: "eval-name", required: true, value: "qa" });
  const question = h("input", { name: "question-field", required: true, value: "question" });
  const answer = h("input", { name: "reference-field", required: true, value: "answer" });
  const threshold = h("input", { type: "number", name: "threshold", min: 0, max: 1, step: 0.05, value: 0.5 });
  const metrics = METRICS.map((m, i) => h("label", { class: "check" }, h("input", { type: "checkbox", name: "metric", value: m, checked: i === 0 }), m));
  const status = h("div", { role: "alert" });
  return h("form", { class: "card", onsubmit: async (e) => {
    e.preventDefault();
    const chosen = metrics.map((l) => l.querySelector("input")).filter((c) => c.checked).map((c) => c.value);
    const body = {
      name: name.value.trim(),
      data_source_config: { type: "custom", item_schema: { type: "object", properties: {
        [question.value.trim()]: { type: "string" }, [answer.value.trim()]: { type: "string" } } } },
      testing_criteria: chosen.map((m) => ({ type: "text_similarity", name: m, evaluation_metric: m,
        input: "{{sample.output_text}}", reference: `{{item.${answer.value.trim()}}}`, pass_threshold: Number(threshold.value) })),
      metadata: { question_field: question.value.trim() },  // which field the runs' prompt template asks
    };
    try {
      const made = await post("/v1/evals", body);
      clear(status);
      onCreated(made);
    } catch (err) {
      clear(status, h("p", { class: "error" }, err.message));
    }
  } }, h("h2", {}, t("evals.create")),
    h("div", { class: "grid two" }, field(t("evals.name"), name), field(t("evals.threshold"), threshold),
      field(t("evals.question_field"), question), field(t("evals.reference_field"), answer)),
    h("fieldset", { class: "radios" }, h("legend", {}, t("evals.criteria")), metrics),
    h("button", { type: "submit" }, t("evals.create_button")), status);
}

function runForm(ev, files, models, onRun) {
  const file = h("select", { name: "eval-file", required: true }, files.map((f) => h("option", { value: f.id }, `${f.filename} (${f.id})`)));
  const maxTokens = h("input", { type: "number", name: "eval-max-tokens", min: 1, value: 64 });
  const boxes = models.map((m) => h("label", { class: "check" }, h("input", { type: "checkbox", name: "run-model", value: m }), h("span", { class: "mono" }, m)));
  const status = h("div", { role: "alert" });
  const q = ev.metadata?.question_field || "question";
  return h("form", { class: "card", onsubmit: async (e) => {
    e.preventDefault();
    const chosen = boxes.map((b) => b.querySelector("input")).filter((c) => c.checked).map((c) => c.value);
    if (!chosen.length) return clear(status, h("p", { class: "error" }, t("evals.pick_models")));
    try {
      for (const model of chosen) {
        await post(`/v1/evals/${ev.id}/runs`, { name: model, data_source: {
          type: "completions", model, source: { type: "file_id", id: file.value },
          input_messages: { type: "template", template: [{ role: "user", content: `{{item.${q}}}` }] },
          sampling_params: { max_completion_tokens: Number(maxTokens.value) } } });
      }
      clear(status);
      onRun();
    } catch (err) {
      clear(status, h("p", { class: "error" }, err.message));
    }
  } }, h("h2", {}, t("evals.run_title", { name: ev.name })),
    files.length ? field(t("evals.file"), file, t("evals.file_hint", { field: q })) : h("p", { class: "muted" }, t("evals.no_files")),
    field(t("playground.max_tokens"), maxTokens),
    h("fieldset", { class: "models" }, h("legend", {}, t("evals.models")), boxes),
    h("button", { type: "submit", disabled: !files.length }, t("evals.run_button")), status);
}

function passRate(c) {
  const n = c.passed + c.failed;
  return n ? c.passed / n : null;
}

function runsView(ev, runs, showItems) {
  if (!runs.length) return [h("p", { class: "muted" }, t("evals.no_runs"))];
  const figure = chartBox(t("evals.pass_rates"));
  figure.id = "chart-pass-rates";
  const table = h("table", { class: "table runs" },
    h("thead", {}, h("tr", {}, ["evals.model", "jobs.status", "evals.passed", "evals.failed", "evals.errored", "common.created", "common.actions"].map((k) => h("th", {}, t(k))))),
    h("tbody", {}, runs.map((r) => h("tr", { dataset: { runId: r.id } },
      h("td", { class: "mono" }, r.model), h("td", {}, h("span", { class: `badge ${r.status}` }, t(`status.${r.status}`))),
      h("td", { class: "num" }, r.result_counts.passed), h("td", { class: "num" }, r.result_counts.failed),
      h("td", { class: "num" }, r.result_counts.errored), h("td", {}, formatTime(r.created_at)),
      h("td", {}, h("button", { type: "button", class: "small", onclick: () => showItems(r) }, t("evals.items")))))));
  const criteria = ev.testing_criteria.map((c) => c.name);
  const done = runs.filter((r) => r.result_counts.total);
  const chart = done.length ? () => barChart(figure, { title: t("evals.pass_rates"), labels: criteria,
    series: done.map((r) => ({ label: r.model, values: criteria.map((name) => {
      const c = r.per_testing_criteria_results.find((x) => x.testing_criteria === name);
      return c ? passRate(c) : null;
    }) })) }) : null;
  return [table, done.length ? figure : null, chart];
}

async function itemsView(box, ev, run, failuresOnly) {
  const items = await listAll(`/v1/evals/${ev.id}/runs/${run.id}/output_items?order=asc${failuresOnly ? "&status=fail" : ""}`);
  const q = ev.metadata?.question_field || "question";
  const ref = itemField(ev.testing_criteria[0]?.reference) || "answer";
  const only = h("input", { type: "checkbox", id: "failures-only", checked: failuresOnly,
    onchange: (e) => itemsView(box, ev, run, e.target.checked) });
  clear(box, h("h2", {}, t("evals.items_of", { model: run.model })),
    h("label", { class: "check", for: "failures-only" }, only, t("evals.failures_only")),
    h("div", { class: "scroll" }, h("table", { class: "table items" },
      h("thead", {}, h("tr", {}, ["evals.input", "evals.generated", "evals.reference", "evals.scores", "jobs.status"].map((k) => h("th", {}, t(k))))),
      h("tbody", {}, items.map((it) => h("tr", { class: `item ${it.status}` },
        h("td", {}, String(it.datasource_item?.[q] ?? JSON.stringify(it.datasource_item))),
        h("td", { class: "generated" }, it.sample?.output?.[0]?.content ?? it.sample?.error?.message ?? ""),
        h("td", { class: "reference" }, String(it.datasource_item?.[ref] ?? "")),
        h("td", { class: "mono" }, it.results.map((r) => `${r.name} ${Number(r.score).toFixed(3)}`).join("\n")),
        h("td", {}, h("span", { class: `badge ${it.status}` }, t(`status.${it.status}`)))))))),
    items.length ? null : h("p", { class: "muted" }, t("evals.no_items")));
}

export default {
  title: "evals.title",
  async render(main, { params: [evalId, runId] }) {
    const [files, models] = await Promise.all([listAll("/v1/files?purpose=evals&order=desc"), get("/v1/models")]);
    const modelIds = models.data.map((m) => m.id);
    const listBox = h("div"), runBox = h("div"), runsBox = h("section", { class: "card", id: "runs" }), itemsBox = h("section", { class: "card", id: "items" });
    let current = null, timer = null, chart = null, stopped = false;
    const select = async (ev) => {
      current = ev;
      clear(runBox, runForm(ev, files, modelIds, () => refreshRuns()));
      clear(itemsBox);
      await refreshRuns();
    };
    const refreshRuns = async () => {
      clearTimeout(timer);
      if (!current || stopped) return;
      const runs = (await get(`/v1/evals/${current.id}/runs?limit=100&order=desc`)).data;
      chart?.destroy();
      const [table, figure, makeChart] = runsView(current, runs, (run) => itemsView(itemsBox, current, run, false));
      clear(runsBox, h("h2", {}, t("evals.runs")), table, figure);
      chart = makeChart ? makeChart() : null;
      if (runs.some((r) => r.status === "queued" || r.status === "in_progress")) timer = setTimeout(refreshRuns, POLL_MS);
    };
    const refreshList = async (pick) => {
      const evals = (await get("/v1/evals?limit=100&order=desc")).data;
      clear(listBox, h("section", { class: "card" }, h("h2", {}, t("evals.list")), evals.length ? h("ul", { class: "evals-list" },
        evals.map((ev) => h("li", {}, h("button", { type: "button", class: "link", "aria-pressed": String(ev.id === current?.id),
          onclick: () => { select(ev); refreshList(); } }, ev.name), " ", h("small", { class: "mono muted" }, ev.id))))
        : h("p", { class: "muted" }, t("evals.none"))));
      if (pick) await select(pick);
    };
    clear(main, h("h1", {}, t("evals.title")),
      h("div", { class: "grid two" }, createForm((ev) => refreshList(ev)), listBox), runBox, runsBox, itemsBox);
    await refreshList(evalId ? await get(`/v1/evals/${evalId}`) : null);
    if (evalId && runId) await itemsView(itemsBox, current, await get(`/v1/evals/${evalId}/runs/${runId}`), false);
    return () => { stopped = true; clearTimeout(timer); chart?.destroy(); };
  },
};
