// Fine-tuning jobs, newest first, each linking to its page.

import { h, clear, formatTime } from "../dom.js";
import { t } from "../i18n.js";
import { get } from "../api.js";

export default {
  title: "jobs.title",
  async render(main) {
    const page = await get("/v1/fine_tuning/jobs?limit=100");
    clear(main, h("div", { class: "title-row" }, h("h1", {}, t("jobs.title")), h("a", { class: "button", href: "#/jobs/new" }, t("nav.new_job"))),
      h("section", { class: "card" }, page.data.length ? h("table", { class: "table" },
        h("thead", {}, h("tr", {}, ["jobs.job", "jobs.model", "jobs.status", "jobs.result", "common.created"].map((k) => h("th", {}, t(k))))),
        h("tbody", {}, page.data.map((j) => h("tr", {},
          h("td", {}, h("a", { href: `#/jobs/${j.id}`, class: "mono" }, j.id)), h("td", {}, j.model),
          h("td", {}, h("span", { class: `badge ${j.status}` }, t(`status.${j.status}`))),
          h("td", { class: "mono" }, j.fine_tuned_model || ""), h("td", {}, formatTime(j.created_at))))))
        : h("p", { class: "muted" }, t("jobs.none"))));
  },
};
