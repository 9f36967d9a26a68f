// One job: status, live curves (loss, accuracy, learning rate) from its metrics events, the events stream,
// checkpoints with their metrics, pause / resume / cancel, results CSV, end-of-job ROUGE/BLEU tuned vs base.

import { h, clear, formatTime } from "../dom.js";
import { t } from "../i18n.js";
import { download, get, post } from "../api.js";
import { barChart, chartBox, lineChart } from "../chart.js";

const POLL_MS = 1500;
const ENDED = new Set(["succeeded", "failed", "cancelled"]);
const SCORES = ["predict_rouge-1", "predict_rouge-2", "predict_rouge-l", "predict_bleu-4"];

// Events oldest first: the first load pages through all; later polls take the newest page until a known id.
class EventLog {
  constructor(jobId) { this.jobId = jobId; this.events = []; this.ids = new Set(); }

  async refresh() {
    const fresh = [];
    let after = null;
    for (;;) {
      const page = await get(`/v1/fine_tuning/jobs/${this.jobId}/events?limit=100${after ? `&after=${after}` : ""}`);
      const unseen = page.data.filter((e) => !this.ids.has(e.id));
      fresh.push(...unseen);
      if (!page.has_more || unseen.length < page.data.length || !page.data.length) break;
      after = page.data[page.data.length - 1].id;
    }
    fresh.reverse();
    for (const e of fresh) this.ids.add(e.id);
    this.events.push(...fresh);
    return fresh.length;
  }

  get metrics() { return this.events.filter((e) => e.type === "metrics" && e.data?.step != null).map((e) => e.data); }
}

function curves(box) {
  const charts = {
    loss: [t("job.loss"), ["train_loss", "valid_loss"]],
    accuracy: [t("job.accuracy"), ["train_mean_token_accuracy", "valid_mean_token_accuracy"]],
    lr: [t("job.learning_rate"), ["learning_rate"]],
  };
  const made = Object.entries(charts).map(([id, [title, keys]]) => {
    const figure = chartBox(title);
    figure.id = `chart-${id}`;
    box.append(figure);
    return { keys, chart: lineChart(figure, { title, series: keys.map((k) => ({ label: t(`metric.${k}`) })) }) };
  });
  return {
    update(metrics) {
      const byStep = new Map();
      for (const m of metrics) byStep.set(m.step, { ...byStep.get(m.step), ...m });
      const steps = [...byStep.keys()].sort((a, b) => a - b);
      for (const { keys, chart } of made) {
        chart.setData(steps, keys.map((k) => steps.map((s) => byStep.get(s)[k] ?? null)));
      }
    },
    destroy() { made.forEach((m) => m.chart.destroy()); },
  };
}

function header(job, actions) {
  const est = job.estimated_finish ? t("job.eta", { time: formatTime(job.estimated_finish) }) : null;
  return h("div", { class: "card job-head" },
    h("div", { class: "title-row" }, h("h1", { class: "mono" }, job.id),
      h("span", { class: `badge ${job.status}`, id: "job-status" }, t(`status.${job.status}`))),
    h("dl", { class: "facts" },
      h("dt", {}, t("jobs.model")), h("dd", {}, job.model),
      h("dt", {}, t("jobs.result")), h("dd", { class: "mono", id: "fine-tuned-model" }, job.fine_tuned_model || "–"),
      h("dt", {}, t("job.method")), h("dd", {}, job.method?.type),
      h("dt", {}, t("job.trained_tokens")), h("dd", {}, job.trained_tokens ?? "–"),
      est ? [h("dt", {}, t("job.finish")), h("dd", {}, est)] : null),
    job.error?.message ? h("p", { class: "error", role: "alert" }, `${job.error.code}: ${job.error.message}`) : null,
    h("details", {}, h("summary", {}, t("job.hyperparameters")),
      h("pre", { class: "json" }, JSON.stringify(job.method?.[job.method?.type]?.hyperparameters ?? job.hyperparameters, null, 2))),
    actions);
}

function controls(job, act) {
  const button = (name, enabled, cls = "") => h("button", { type: "button", class: cls, disabled: !enabled, onclick: () => act(name) }, t(`job.${name}`));
  const running = ["validating_files", "queued", "running"].includes(job.status);
  const links = job.fine_tuned_model ? [
    h("a", { class: "button ghost", href: `#/playground?models=${encodeURIComponent(`${job.model},${job.fine_tuned_model}`)}` }, t("job.chat")),
    h("a", { class: "button ghost", href: `#/export?model=${encodeURIComponent(job.fine_tuned_model)}` }, t("job.export")),
  ] : [];
  return h("div", { class: "actions" }, button("pause", job.status === "running"), button("resume", job.status === "paused"),
    button("cancel", running || job.status === "paused", "danger"),
    job.result_files?.length ? h("button", { type: "button", onclick: () => download(`/v1/files/${job.result_files[0]}/content`, `${job.id}-results.csv`) }, t("job.results_csv")) : null,
    links);
}

function eventList(events) {
  return h("ol", { class: "events", reversed: true }, events.slice(-200).reverse().map((e) =>
    h("li", { class: e.level }, h("time", {}, formatTime(e.created_at)), " ", h("span", { class: "mono" }, e.message))));
}

function checkpointTable(checkpoints) {
  if (!checkpoints.length) return h("p", { class: "muted" }, t("job.no_checkpoints"));
  const keys = ["train_loss", "valid_loss", "valid_mean_token_accuracy", "predict_rouge-l", "predict_bleu-4"];
  return h("table", { class: "table" },
    h("thead", {}, h("tr", {}, h("th", {}, t("job.step")), h("th", {}, t("job.checkpoint")), keys.map((k) => h("th", {}, t(`metric.${k}`))), h("th", {}))),
    h("tbody", {}, checkpoints.map((c) => h("tr", { dataset: { model: c.fine_tuned_model_checkpoint } }, h("td", { class: "num" }, c.step_number),
      h("td", { class: "mono", title: c.fine_tuned_model_checkpoint }, `…:${c.fine_tuned_model_checkpoint.split(":").pop()}`),
      keys.map((k) => h("td", { class: "num" }, c.metrics?.[k] != null ? Number(c.metrics[k]).toFixed(4) : "–")),
      h("td", {}, h("a", { class: "button small ghost", href: `#/playground?models=${encodeURIComponent(c.fine_tuned_model_checkpoint)}` }, t("job.chat")))))));
}

function scores(box, data) {
  const last = [...data].reverse().find((m) => SCORES.some((k) => k in m));
  if (!last) return null;
  const figure = chartBox(t("job.scores"));
  figure.id = "chart-scores";
  clear(box, h("h2", {}, t("job.scores")), figure,
    h("table", { class: "table scores" }, h("thead", {}, h("tr", {}, h("th", {}), SCORES.map((k) => h("th", { class: "num" }, k.replace("predict_", ""))))),
      h("tbody", {}, [["job.tuned", ""], ["job.base", "base_"]].map(([label, prefix]) =>
        h("tr", {}, h("th", {}, t(label)), SCORES.map((k) => h("td", { class: "num" }, last[prefix + k] ?? "–")))))));
  return barChart(figure, { labels: SCORES.map((k) => k.replace("predict_", "")),
    series: [{ label: t("job.tuned"), values: SCORES.map((k) => last[k] ?? null) },
             { label: t("job.base"), values: SCORES.map((k) => last[`base_${k}`] ?? null) }] });
}

export default {
  title: "job.title",
  async render(main, { params: [jobId] }) {
    const log = new EventLog(jobId);
    const head = h("div"), chartsBox = h("div", { class: "grid charts" }), eventsBox = h("div", { class: "events-box", "aria-live": "off" });
    const ckptBox = h("div"), scoreBox = h("section", { class: "card", id: "scores" });
    clear(main, head, h("section", { class: "card" }, h("h2", {}, t("job.curves")), chartsBox),
      scoreBox,
      h("div", { class: "grid two" }, h("section", { class: "card" }, h("h2", {}, t("job.events")), eventsBox),
        h("section", { class: "card" }, h("h2", {}, t("job.checkpoints")), ckptBox)));
    const plot = curves(chartsBox);
    let scoreChart = null, timer = null, stopped = false, lastStatus = null, lastJob = null, lastCkpts = null;
    const act = async (name) => {
      await post(`/v1/fine_tuning/jobs/${jobId}/${name}`);
      tick();
    };
    const tick = async () => {
      clearTimeout(timer);
      try {
        const [job, ckpts, fresh] = await Promise.all([get(`/v1/fine_tuning/jobs/${jobId}`),
          get(`/v1/fine_tuning/jobs/${jobId}/checkpoints?limit=100`), log.refresh()]);
        if (stopped) return;
        const seen = JSON.stringify(job);
        if (seen !== lastJob) clear(head, header(job, controls(job, act)));  // unchanged: keep focus where it is
        lastJob = seen;
        if (fresh || lastStatus === null) {
          plot.update(log.metrics);
          clear(eventsBox, eventList(log.events));
          if (!scoreChart) scoreChart = scores(scoreBox, log.events.map((e) => e.data || {}));
        }
        const ckptSeen = JSON.stringify(ckpts.data);
        if (ckptSeen !== lastCkpts) clear(ckptBox, checkpointTable(ckpts.data));
        lastCkpts = ckptSeen;
        scoreBox.hidden = !scoreChart;
        lastStatus = job.status;
        if (!ENDED.has(job.status)) timer = setTimeout(tick, POLL_MS);
      } catch (err) {
        if (!stopped) clear(head, h("p", { class: "error", role: "alert" }, err.message));
      }
    };
    await tick();
    return () => { stopped = true; clearTimeout(timer); plot.destroy(); scoreChart?.destroy(); };
  },
};
