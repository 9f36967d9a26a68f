// All strings live in i18n/<lang>.json, one file per language; t("page.key", {name}) looks one up.

const LANG = "tunegate.lang";
export const LANGUAGES = { en: "English", zh: "中文" };
let strings = {};
let fallback = {};
export let lang = "en";

async function fetchStrings(code) {
  const response = await fetch(new URL(`./i18n/${code}.json`, import.meta.url));
  return response.json();
}

export async function loadLanguage(code) {
  code = code || localStorage.getItem(LANG) || (navigator.language?.startsWith("zh") ? "zh" : "en");
  if (!(code in LANGUAGES)) code = "en";
  if (!Object.keys(fallback).length) fallback = await fetchStrings("en");
  strings = code === "en" ? fallback : await fetchStrings(code);
  lang = code;
  localStorage.setItem(LANG, code);
  document.documentElement.lang = code === "zh" ? "zh-CN" : "en";
}

export function t(key, vars = {}) {
  const template = strings[key] ?? fallback[key] ?? key;
  return template.replace(/\{(\w+)\}/g, (_, name) => (name in vars ? vars[name] : `{${name}}`));
}
