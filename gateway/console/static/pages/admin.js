// Admin view (admin key): organizations and their keys, engines with their loaded adapters, usage as charts.

import { h, clear, field, formatTime } from "../dom.js";
import { t } from "../i18n.js";
import { get, post } from "../api.js";
import { barChart, chartBox } from "../chart.js";

function section(title, ...body) {
  return h("section", { class: "card" }, h("h2", {}, title), body);
}

async function organizations(box) {
  const orgs = (await get("/admin/organizations")).data;
  const name = h("input", { name: "org-name", required: true });
  const rows = orgs.map((org) => {
    const keys = h("td", {}, h("button", { type: "button", class: "small", onclick: () => showKeys(org, keys) }, t("admin.show_keys")));
    return h("tr", {}, h("td", {}, org.name), h("td", { class: "mono" }, org.id), h("td", {}, formatTime(org.created_at)), keys);
  });
  clear(box,
    h("table", { class: "table" }, h("thead", {}, h("tr", {}, h("th", {}, t("admin.org_name")), h("th", {}, "id"),
      h("th", {}, t("common.created")), h("th", {}, t("admin.keys")))), h("tbody", {}, rows)),
    h("form", { class: "inline", onsubmit: async (e) => {
      e.preventDefault();
      await post("/admin/organizations", { name: name.value.trim() });
      organizations(box);
    } }, field(t("admin.new_org"), name), h("button", { type: "submit" }, t("admin.create"))));
}

async function showKeys(org, cell) {
  const keys = (await get(`/admin/organizations/${org.id}/keys`)).data;
  const list = h("ul", { class: "keys" }, keys.map((k) => h("li", {},
    h("span", { class: "mono" }, `${k.prefix}…`), ` ${k.name || ""} `,
    k.revoked_at ? h("span", { class: "badge failed" }, t("admin.revoked"))
      : h("button", { type: "button", class: "small danger", onclick: async () => {
        await post(`/admin/keys/${k.id}/revoke`);
        showKeys(org, cell);
      } }, t("admin.revoke")))));
  clear(cell, list, h("button", { type: "button", class: "small", onclick: async () => {
    const made = await post(`/admin/organizations/${org.id}/keys`, { name: "console" });
    await showKeys(org, cell);
    cell.append(h("p", { class: "secret", role: "status" }, t("admin.secret_once"), " ", h("code", {}, made.secret)));
  } }, t("admin.new_key")));
}

function engines(box, data) {
  if (!data.length) return clear(box, h("p", { class: "muted" }, t("admin.no_engines")));
  clear(box, h("div", { class: "grid" }, data.map((e) => h("article", { class: "engine" },
    h("h3", {}, e.base_model), h("p", {}, h("span", { class: `badge ${e.state}` }, e.state), " ", e.engine, " · ", e.url),
    h("p", { class: "muted" }, t("admin.engine_detail", { pid: e.pid ?? "–", restarts: e.restarts, in_flight: e.in_flight })),
    h("h4", {}, t("admin.adapters", { n: e.adapters.length })),
    e.adapters.length ? h("ul", { class: "adapters" }, e.adapters.map((a) => h("li", { class: "mono" }, a)))
      : h("p", { class: "muted" }, t("admin.no_adapters"))))));
}

function usageCharts(box, totals, orgNames) {
  if (!totals.length) return clear(box, h("p", { class: "muted" }, t("admin.no_usage")));
  const sum = (by) => {
    const out = new Map();
    for (const u of totals) {
      const key = by(u);
      const acc = out.get(key) || { prompt: 0, completion: 0, requests: 0 };
      acc.prompt += u.prompt_tokens; acc.completion += u.completion_tokens; acc.requests += u.requests;
      out.set(key, acc);
    }
    return out;
  };
  const byOrg = sum((u) => orgNames.get(u.organization_id) || u.organization_id);
  const byModel = sum((u) => u.model);
  const orgChart = chartBox(t("admin.usage_by_org"));
  const modelChart = chartBox(t("admin.usage_by_model"));
  orgChart.id = "usage-org";
  modelChart.id = "usage-model";
  clear(box, h("div", { class: "grid two" }, orgChart, modelChart));
  const series = (m) => [
    { label: t("admin.prompt_tokens"), values: [...m.values()].map((v) => v.prompt) },
    { label: t("admin.completion_tokens"), values: [...m.values()].map((v) => v.completion) },
  ];
  const charts = [
    barChart(orgChart, { title: t("admin.usage_by_org"), labels: [...byOrg.keys()], series: series(byOrg) }),
    barChart(modelChart, { title: t("admin.usage_by_model"), labels: [...byModel.keys()], series: series(byModel) }),
  ];
  return () => charts.forEach((c) => c.destroy());
}

export default {
  title: "admin.title",
  async render(main) {
    const orgBox = h("div"), engineBox = h("div", { id: "engines" }), usageBox = h("div", { id: "usage" });
    clear(main, h("h1", {}, t("admin.title")),
      section(t("admin.organizations"), orgBox), section(t("admin.engines"), engineBox), section(t("admin.usage"), usageBox));
    const [orgs, eng, usage] = await Promise.all([get("/admin/organizations"), get("/admin/engines"), get("/admin/usage")]);
    await organizations(orgBox);
    engines(engineBox, eng.data);
    const names = new Map(orgs.data.map((o) => [o.id, o.name]));
    return usageCharts(usageBox, usage.data, names);
  },
};
