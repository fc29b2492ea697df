// Sign in with an agent token: posted once, then the session cookie stands for it.

import { signIn } from "../api.js";
import { field, h } from "../dom.js";

export function signInPage(main, onSignedIn) {
  const token = h("input", {
    type: "password",
    name: "token",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    placeholder: "pvm_…",
  });
  const error = h("p", { class: "error", role: "alert", hidden: true });
  const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h(
    "form",
    { class: "sign-in card", "aria-labelledby": "sign-in-title" },
    h("h1", { id: "sign-in-title", tabindex: "-1" }, "Sign in to ProjectVM"),
    h(
      "p",
      { class: "muted" },
      "Use an agent token: you act as that agent, with its access to each project. ",
      "Create one on the server with ",
      h("code", {}, "projectvm agents add NAME"),
      ".",
    ),
    field("Agent token", token, "Sent once; the browser then keeps only a session cookie."),
    error,
    h("div", { class: "actions" }, submit),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    submit.disabled = true;
    try {
      await signIn(token.value.trim());
      token.value = "";
      onSignedIn();
    } catch (failure) {
      error.textContent = failure.message;
      error.hidden = false;
      token.focus();
    } finally {
      submit.disabled = false;
    }
  });
  main.replaceChildren(h("div", { class: "narrow-page" }, form));
  return { dispose() {}, focus: () => token.focus() };
}
