// The console's shell: header, navigation, a hash router (#/data, #/jobs/ftjob-…), language switch.
// Each page module exports { nav, render(main, ctx) } and may return a cleanup function (timers, streams).

import { h, clear } from "./dom.js";
import { LANGUAGES, lang, loadLanguage, t } from "./i18n.js";
import { session } from "./api.js";
import signin from "./pages/signin.js";
import admin from "./pages/admin.js";
import data from "./pages/data.js";
import jobs from "./pages/jobs.js";
import newjob from "./pages/newjob.js";
import job from "./pages/job.js";
import playground from "./pages/playground.js";
import evals from "./pages/evals.js";
import exports from "./pages/export.js";

const ROUTES = [
  { path: /^\/signin$/, page: signin, role: null },
  { path: /^\/admin$/, page: admin, role: "admin", nav: "nav.admin", href: "#/admin" },
  { path: /^\/data$/, page: data, role: "org", nav: "nav.data", href: "#/data" },
  { path: /^\/jobs\/new$/, page: newjob, role: "org", nav: "nav.new_job", href: "#/jobs/new" },
  { path: /^\/jobs$/, page: jobs, role: "org", nav: "nav.jobs", href: "#/jobs" },
  { path: /^\/jobs\/([^/]+)$/, page: job, role: "org" },
  { path: /^\/playground$/, page: playground, role: "org", nav: "nav.playground", href: "#/playground" },
  // #/evals/<eval>/runs/<run>: an eval run's report_url (gateway/openai/evals/protocol.py)
  { path: /^\/evals(?:\/([^/]+)(?:\/runs\/([^/]+))?)?$/, page: evals, role: "org", nav: "nav.evals", href: "#/evals" },
  { path: /^\/export$/, page: exports, role: "org", nav: "nav.export", href: "#/export" },
];
const HOME = { admin: "#/admin", org: "#/data" };

let cleanup = null;

export function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function parse() {
  const [path, query = ""] = (location.hash.slice(1) || "/").split("?");
  return { path, query: new URLSearchParams(query) };
}

function header(current) {
  const role = session.role;
  const links = ROUTES.filter((r) => r.nav && r.role === role).map((r) =>
    h("a", { href: r.href, "aria-current": r === current ? "page" : null }, t(r.nav)));
  const select = h("select", { id: "lang", "aria-label": t("nav.language"),
    onchange: async (e) => { await loadLanguage(e.target.value); route(); } },
    Object.entries(LANGUAGES).map(([code, name]) => h("option", { value: code, selected: code === lang }, name)));
  return h("header", { class: "top" },
    h("a", { class: "brand", href: role ? HOME[role] : "#/signin" }, h("span", { class: "logo", "aria-hidden": "true" }, "▚"), t("app.name")),
    h("nav", { "aria-label": t("nav.main") }, links),
    h("div", { class: "tools" }, select,
      role ? h("button", { type: "button", class: "ghost", onclick: () => { session.clear(); go("#/signin"); } }, t("nav.sign_out")) : null));
}

async function route() {
  cleanup?.();
  cleanup = null;
  const { path, query } = parse();
  let match = null, params = [];
  for (const r of ROUTES) {
    const m = path.match(r.path);
    if (m) { match = r; params = m.slice(1).map((p) => p && decodeURIComponent(p)); break; }
  }
  const role = session.role;
  if (!role && match?.page !== signin) return go("#/signin");
  if (!match || (match.role && match.role !== role)) return go(role ? HOME[role] : "#/signin");
  const main = h("main", { id: "main", tabindex: "-1" });
  clear(document.getElementById("app"), h("a", { class: "skip", href: "#main", onclick: (e) => { e.preventDefault(); main.focus(); } }, t("nav.skip")),
        header(match), main);
  document.title = `${t(match.page.title)} · ${t("app.name")}`;
  try {
    cleanup = (await match.page.render(main, { params, query, go })) || null;
  } catch (err) {
    clear(main, h("p", { class: "error", role: "alert" }, err.message));
  }
}

window.addEventListener("hashchange", route);
await loadLanguage();
route();
