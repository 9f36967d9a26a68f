// Sign in with an API key: the admin credential opens the admin view, an organization key the workflow pages.

import { h, clear, field } from "../dom.js";
import { t } from "../i18n.js";
import { ApiError, get, session } from "../api.js";

// Which kind of key this is, asked of the API itself: /admin answers only the admin key, /v1 only org keys.
async function roleOf(key) {
  try {
    await get("/admin/organizations", { key });
    return "admin";
  } catch (err) {
    if (!(err instanceof ApiError) || (err.status !== 401 && err.status !== 403)) throw err;
  }
  await get("/v1/models", { key });
  return "org";
}

export default {
  title: "signin.title",
  render(main, { go }) {
    const input = h("input", { type: "password", name: "key", autocomplete: "off", required: true, spellcheck: "false",
                               placeholder: "sk-tg-…" });
    const status = h("p", { class: "error", role: "alert", "aria-live": "assertive" });
    const button = h("button", { type: "submit" }, t("signin.submit"));
    const form = h("form", { class: "card signin", onsubmit: async (e) => {
      e.preventDefault();
      status.textContent = "";
      button.disabled = true;
      const key = input.value.trim();
      try {
        const role = await roleOf(key);
        session.set(key, role);
        go(role === "admin" ? "#/admin" : "#/data");
      } catch (err) {
        status.textContent = err.status === 401 ? t("signin.wrong_key", { message: err.message }) : err.message;
        button.disabled = false;
        input.select();
      }
    } },
      h("h1", {}, t("signin.title")),
      h("p", { class: "muted" }, t("signin.intro")),
      field(t("signin.key"), input, t("signin.key_hint")),
      button, status);
    clear(main, form);
    input.focus();
  },
};
