// Draws a form model (forms.js) as a form, reads its raw values back, and shows problems at
// their fields. The rules live in forms.js; this file only knows the DOM.
import { initialRaw, itemId } from "./forms.js";

let formCount = 0;

/** A `<form>` for `model`; `onSubmit(form)` runs on Run. */
export function renderForm(model, { onSubmit }) {
  const n = ++formCount;
  const domId = (fieldId) => `f${n}-${fieldId.replace(/[^A-Za-z0-9_-]+/g, "-")}`;
  const form = el("form", { className: "task-form", dataset: { task: model.name }, noValidate: true });
  form._model = model;
  form._domId = domId;
  const headId = domId("head");
  form.setAttribute("aria-labelledby", headId);
  const head = el("div", { className: "form-head" }, [el("h3", { id: headId }, model.name)]);
  if (model.description) head.append(el("p", { className: "muted about" }, model.description));

  const fields = el("div", { className: "fields" });
  const root = model.root;
  if (root.kind === "object") for (const f of root.fields) fields.append(renderNode(f, domId));
  else fields.append(renderNode(root, domId));

  const extras = el("div", { className: "fields run-options" });
  if (model.queues.length > 1) {
    const id = domId("queue");
    const select = el(
      "select",
      { id, name: "queue" },
      model.queues.map((q) => el("option", { value: q, selected: q === model.queue }, q)),
    );
    extras.append(fieldBox("queue", id, "Queue", select, domId));
  }
  const pid = domId("priority");
  const priority = el("select", { id: pid, name: "priority" }, [
    el("option", { value: "" }, "default"),
    ...Array.from({ length: 10 }, (_, i) => el("option", { value: String(i) }, String(i))),
  ]);
  extras.append(fieldBox("priority", pid, "Priority", priority, domId));

  const queueNote =
    model.queues.length > 1 ? [] : [el("span", { className: "muted queue-note" }, `queue ${model.queue ?? "–"}`)];
  const out = el("output", { className: "form-status", role: "status" });
  form.append(
    head,
    fields,
    extras,
    el("div", { className: "form-foot" }, [
      el("button", { type: "submit", disabled: true, title: "Not connected to the gateway" }, "Run"),
      ...queueNote,
      out,
    ]),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    onSubmit(form);
  });
  return form;
}

function fieldBox(fieldId, inputId, label, control, domId, { help = "", wide = false, kind = "" } = {}) {
  const box = el("div", { className: `field${wide ? " wide" : ""}`, dataset: { field: fieldId, kind } });
  const described = [];
  box.append(el("label", { htmlFor: inputId }, label));
  box.append(control);
  if (help) {
    const hid = `${domId(fieldId)}-help`;
    box.append(el("p", { className: "help muted", id: hid }, help));
    described.push(hid);
  }
  const eid = `${domId(fieldId)}-err`;
  box.append(el("p", { className: "field-error", id: eid, hidden: true }));
  described.push(eid);
  control.setAttribute("aria-describedby", described.join(" "));
  return box;
}

function renderNode(node, domId) {
  const raw = initialRaw(node);
  if (node.kind === "object") return renderObject(node, raw, domId);
  if (node.kind === "list") return renderList(node, raw, domId);
  const id = domId(node.id);
  const control = scalarControl(node, raw, id, node.id);
  if (node.kind === "boolean") {
    const box = el("div", { className: "field check", dataset: { field: node.id, kind: node.kind } });
    const label = el("label", { htmlFor: id }, [control, el("span", {}, node.label)]);
    box.append(label);
    const described = [];
    if (node.help) {
      box.append(el("p", { className: "help muted", id: `${id}-help` }, node.help));
      described.push(`${id}-help`);
    }
    box.append(el("p", { className: "field-error", id: `${id}-err`, hidden: true }));
    described.push(`${id}-err`);
    control.setAttribute("aria-describedby", described.join(" "));
    return box;
  }
  const wide = node.kind === "json" || (node.kind === "string" && node.multiline);
  return fieldBox(node.id, id, labelText(node), control, domId, { help: node.help, wide, kind: node.kind });
}

function labelText(node) {
  return node.required || node.default !== undefined || node.kind === "boolean"
    ? node.label
    : `${node.label} (optional)`;
}

/** One control for a scalar (or json) node; `name` is its path under input. */
function scalarControl(node, raw, id, fieldId) {
  const name = fieldId.replace(/^input\.?/, "") || "input";
  switch (node.kind) {
    case "number": {
      const input = el("input", { id, name, type: "number", value: raw });
      const min = node.minimum ?? node.exclusiveMinimum;
      const max = node.maximum ?? node.exclusiveMaximum;
      if (min !== undefined) input.min = String(min);
      if (max !== undefined) input.max = String(max);
      input.step = node.integer ? String(node.multipleOf ?? 1) : String(node.multipleOf ?? "any");
      input.inputMode = node.integer ? "numeric" : "decimal";
      input.required = node.required && !node.nullable;
      return input;
    }
    case "string": {
      const input = node.multiline
        ? el("textarea", { id, name, rows: 2, value: raw })
        : el("input", { id, name, type: "text", value: raw });
      if (node.maxLength !== undefined) input.maxLength = node.maxLength;
      if (node.minLength !== undefined) input.minLength = node.minLength;
      input.spellcheck = false;
      return input;
    }
    case "boolean":
      return el("input", { id, name, type: "checkbox", checked: raw === true });
    case "enum": {
      const options = node.options.map((v, i) => el("option", { value: String(i) }, String(v)));
      if (node.nullable || !node.required || node.default === undefined) {
        if (node.nullable || !node.required) options.unshift(el("option", { value: "" }, "–"));
      }
      const select = el("select", { id, name }, options);
      select.value = raw;
      return select;
    }
    default: {
      const area = el("textarea", { id, name, rows: 3, value: raw, className: "json" });
      area.spellcheck = false;
      area.placeholder = "JSON";
      return area;
    }
  }
}

function renderObject(node, raw, domId) {
  const set = el("fieldset", { className: "field group wide", dataset: { field: node.id, kind: "object" } });
  set.append(el("legend", {}, node.label));
  if (node.help) set.append(el("p", { className: "help muted" }, node.help));
  let inner = el("div", { className: "fields" });
  for (const f of node.fields) inner.append(renderNode(f, domId));
  if (node.nullable || !node.required) {
    const id = domId(`${node.id}-on`);
    const toggle = el("input", { id, type: "checkbox", checked: raw !== null, className: "group-on" });
    toggle.setAttribute("aria-controls", domId(`${node.id}-body`));
    inner.id = domId(`${node.id}-body`);
    inner.hidden = raw === null;
    toggle.addEventListener("change", () => (inner.hidden = !toggle.checked));
    set.append(el("label", { htmlFor: id, className: "group-toggle" }, [toggle, el("span", {}, "include")]));
  }
  set.append(inner);
  set.append(el("p", { className: "field-error", id: `${domId(node.id)}-err`, hidden: true }));
  return set;
}

function renderList(node, raw, domId) {
  const set = el("fieldset", { className: "field group list wide", dataset: { field: node.id, kind: "list" } });
  const limits = [];
  if (node.minItems) limits.push(`at least ${node.minItems}`);
  if (node.maxItems !== undefined) limits.push(`at most ${node.maxItems}`);
  set.append(el("legend", {}, `${node.label}${limits.length ? ` (${limits.join(", ")})` : ""}`));
  if (node.help) set.append(el("p", { className: "help muted" }, node.help));
  const items = el("ol", { className: "items" });
  const add = el("button", { type: "button", className: "quiet add" }, "Add");
  add.setAttribute("aria-label", `Add ${node.item.label.toLowerCase()}`);
  const sync = () => {
    const rows = [...items.children];
    rows.forEach((row, i) => {
      const fieldId = itemId(node, i);
      const id = domId(fieldId);
      row.dataset.field = fieldId;
      const control = row.querySelector("[data-item]");
      control.id = id;
      control.name = fieldId.replace(/^input\.?/, "");
      control.setAttribute("aria-label", `${node.item.label} ${i + 1}`);
      control.setAttribute("aria-describedby", `${id}-err`);
      row.querySelector(".field-error").id = `${id}-err`;
      const remove = row.querySelector("button.remove");
      remove.setAttribute("aria-label", `Remove ${node.item.label.toLowerCase()} ${i + 1}`);
      remove.disabled = rows.length <= node.minItems;
    });
    add.disabled = node.maxItems !== undefined && rows.length >= node.maxItems;
  };
  const addItem = (value) => {
    const control = scalarControl(node.item, value, "", itemId(node, 0));
    control.dataset.item = "";
    const remove = el("button", { type: "button", className: "quiet remove" }, "Remove");
    remove.addEventListener("click", () => {
      row.remove();
      sync();
    });
    const row = el("li", { className: "item" }, [
      el("div", { className: "item-line" }, [control, remove]),
      el("p", { className: "field-error", hidden: true }),
    ]);
    items.append(row);
    sync();
    return control;
  };
  for (const value of raw) addItem(value);
  add.addEventListener("click", () => addItem(initialRaw({ ...node.item, default: undefined })).focus());
  set.append(items, add, el("p", { className: "field-error", id: `${domId(node.id)}-err`, hidden: true }));
  set._addItem = addItem;
  sync();
  return set;
}

// ---- reading ----------------------------------------------------------------------------

/** The raw values of `form`: `{input, queue, priority}` as forms.buildSubmission takes them. */
export function readForm(form) {
  const model = form._model;
  return {
    input: readNode(form, model.root),
    queue: form.elements.namedItem("queue")?.value ?? "",
    priority: form.elements.namedItem("priority")?.value ?? "",
  };
}

function boxOf(form, fieldId) {
  return [...form.querySelectorAll("[data-field]")].find((b) => b.dataset.field === fieldId) ?? null;
}

function readNode(form, node) {
  const box = boxOf(form, node.id);
  if (node.kind === "object") {
    const toggle = box?.querySelector(":scope > .group-toggle > .group-on");
    if (toggle && !toggle.checked) return null;
    return Object.fromEntries(node.fields.map((f) => [f.key, readNode(form, f)]));
  }
  if (node.kind === "list") {
    return [...(box?.querySelectorAll(":scope > .items > li [data-item]") ?? [])].map((c) => controlValue(c));
  }
  const control = form.querySelector(`#${CSS.escape(form._domId(node.id))}`);
  return control ? controlValue(control) : initialRaw(node);
}

function controlValue(control) {
  return control.type === "checkbox" ? control.checked : control.value;
}

// ---- problems at their fields ------------------------------------------------------------

/** Clear every field's message. */
export function clearErrors(form) {
  for (const p of form.querySelectorAll(".field-error")) {
    p.hidden = true;
    p.textContent = "";
  }
  for (const c of form.querySelectorAll("[aria-invalid]")) c.removeAttribute("aria-invalid");
}

/**
 * Show each `{field, message}` at its field (a node id, an item id, "queue" or "priority"); the
 * first bad control gets the focus. Answers the messages that found no field.
 */
export function showErrors(form, errors, { focus = true } = {}) {
  const unplaced = [];
  let first = null;
  for (const { field, message } of errors) {
    const box = boxOf(form, field);
    const p = box ? [...box.querySelectorAll(".field-error")].at(-1) : null;
    if (!p) {
      unplaced.push(message);
      continue;
    }
    p.textContent = p.textContent ? `${p.textContent}; ${message}` : message;
    p.hidden = false;
    const control =
      box.querySelector(":scope > input, :scope > select, :scope > textarea") ??
      box.querySelector("[data-item], input, select, textarea");
    control?.setAttribute("aria-invalid", "true");
    first ??= control;
  }
  if (focus && first) first.focus({ preventScroll: false });
  return unplaced;
}

// ---- helpers -----------------------------------------------------------------------------

export function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "role") node.setAttribute("role", value);
    else node[key] = value;
  }
  node.append(...(Array.isArray(children) ? children : [children]));
  return node;
}
