// A modal confirmation (the browser's <dialog>: focus moves in, Escape cancels, focus returns).

import { h } from "./dom.js";

/** Resolves true when the person confirms. */
export function confirmAction({ title, message, confirmLabel, danger = true }) {
  return new Promise((resolve) => {
    const opener = document.activeElement;
    const cancel = h("button", { type: "button", class: "quiet" }, "Cancel");
    const confirm = h("button", { type: "button", class: danger ? "danger" : "primary" }, confirmLabel);
    const titleId = `dialog-title-${Date.now()}`;
    const dialog = h(
      "dialog",
      { class: "confirm", "aria-labelledby": titleId },
      h("h2", { id: titleId }, title),
      h("p", {}, message),
      h("div", { class: "actions" }, cancel, confirm),
    );
    let answer = false;
    cancel.addEventListener("click", () => dialog.close());
    confirm.addEventListener("click", () => {
      answer = true;
      dialog.close();
    });
    dialog.addEventListener("close", () => {
      dialog.remove();
      if (opener instanceof HTMLElement && opener.isConnected) opener.focus();
      resolve(answer);
    });
    document.body.append(dialog);
    dialog.showModal();
    cancel.focus(); // the safe choice first
  });
}
