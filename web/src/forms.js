// The forms of the page, from `GET /api/task-types`: each task type's input schema (JSON Schema
// 2020-12) becomes a form model, a form's raw values become the `input` of a submit body, and the
// checks the server makes are mirrored here so a bad value is named at its field before anything
// is sent. No DOM here (formview.js draws a model), so node tests can check all of it.
//
// A model node: {kind, key, path, id, label, help, required, nullable, default, ...}
//   kind "number"  integer, minimum, maximum, exclusiveMinimum, exclusiveMaximum, multipleOf
//        "string"  minLength, maxLength, pattern, multiline
//        "enum"    options (the allowed values, any JSON scalars)
//        "boolean"
//        "list"    item (a scalar node), minItems, maxItems, uniqueItems
//        "object"  fields (nodes, in the schema's order)
//        "json"    anything with no natural control: its value is typed as JSON
// `id` is the field's path as the server names it in a 422: "input.options.format"; a list's
// items are "input.columns[0]". Raw values are what a form holds: strings for number, string,
// enum (the option's index) and json; booleans for checkboxes; arrays of item raws for lists;
// objects of raws for objects, or null for an optional object left out.

const SCALAR_KINDS = new Set(["number", "string", "enum", "boolean"]);
// A string longer than this gets a textarea the width of the form.
const MULTILINE_FROM = 80;

/** The form model of one entry of `GET /api/task-types`. */
export function formModel(type) {
  const schema = type?.input_schema ?? {};
  const root = nodeOf(schema, { key: null, path: [], required: true, rootSchema: schema });
  const queues = Array.isArray(type?.queues) && type.queues.length ? [...type.queues] : [];
  const queue = typeof type?.queue === "string" ? type.queue : (queues[0] ?? null);
  if (queue && !queues.includes(queue)) queues.unshift(queue);
  return {
    name: String(type?.name ?? ""),
    description: cleanDescription(type?.description),
    queue,
    queues,
    root,
    fields: root.kind === "object" ? root.fields : [root],
  };
}

/** Form models for every task type of a `GET /api/task-types` body, by name. */
export function formModels(body) {
  const types = Array.isArray(body?.task_types) ? body.task_types : [];
  return types
    .filter((t) => typeof t?.name === "string" && t.name)
    .map(formModel)
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** A docstring made plain: one paragraph, ``code`` as `code`. */
export function cleanDescription(text) {
  if (typeof text !== "string") return "";
  return text.replace(/``([^`]+)``/g, "`$1`").replace(/\s+/g, " ").trim();
}

/** "fail_times" → "Fail times". */
export function humanize(key) {
  const words = String(key)
    .replace(/([a-z0-9])([A-Z])/g, "$1 $2")
    .replace(/[_-]+/g, " ")
    .trim()
    .toLowerCase();
  return words ? words[0].toUpperCase() + words.slice(1) : "Input";
}

// ---- schema → model ----------------------------------------------------------------------

function resolve(schema, rootSchema, depth = 0) {
  if (!schema || typeof schema !== "object" || depth > 20) return schema ?? {};
  let s = schema;
  if (typeof s.$ref === "string" && s.$ref.startsWith("#/")) {
    const target = s.$ref
      .slice(2)
      .split("/")
      .reduce((at, part) => at?.[part.replace(/~1/g, "/").replace(/~0/g, "~")], rootSchema);
    const { $ref: _ref, ...rest } = s;
    s = { ...resolve(target, rootSchema, depth + 1), ...rest };
  }
  // pydantic wraps a $ref that carries its own keywords in a one-element allOf.
  if (Array.isArray(s.allOf) && s.allOf.length === 1) {
    const { allOf, ...rest } = s;
    s = { ...resolve(allOf[0], rootSchema, depth + 1), ...rest };
  }
  return s;
}

/** `anyOf: [X, {type: "null"}]` and `type: [X, "null"]` are an optional X. */
function unwrapNullable(schema, rootSchema) {
  const s = resolve(schema, rootSchema);
  for (const key of ["anyOf", "oneOf"]) {
    if (!Array.isArray(s[key])) continue;
    const parts = s[key].map((p) => resolve(p, rootSchema));
    const others = parts.filter((p) => p.type !== "null");
    if (others.length === 1 && others.length < parts.length) {
      const { [key]: _parts, ...rest } = s;
      return { schema: { ...others[0], ...rest }, nullable: true };
    }
  }
  if (Array.isArray(s.type)) {
    const types = s.type.filter((t) => t !== "null");
    if (types.length === 1) return { schema: { ...s, type: types[0] }, nullable: types.length < s.type.length };
  }
  if (Array.isArray(s.enum) && s.enum.includes(null)) {
    return { schema: { ...s, enum: s.enum.filter((v) => v !== null) }, nullable: true };
  }
  return { schema: s, nullable: false };
}

function typeOf(s) {
  if (Array.isArray(s.enum) && s.enum.length) return "enum";
  if ("const" in s) return "enum";
  if (typeof s.type === "string") return s.type;
  if (s.properties) return "object";
  return null;
}

function nodeOf(raw, { key, path, required, rootSchema, parentDefault }) {
  const { schema: s, nullable } = unwrapNullable(raw, rootSchema);
  const id = idOf(path);
  let def = "default" in s ? s.default : undefined;
  if (def === undefined && parentDefault && typeof parentDefault === "object" && key in parentDefault)
    def = parentDefault[key];
  const base = {
    key,
    path,
    id,
    label: typeof s.title === "string" && s.title ? s.title : key === null ? "Input" : humanize(key),
    help: typeof s.description === "string" ? s.description.trim() : "",
    required,
    nullable,
    default: def,
  };
  const type = typeOf(s);
  if (type === "enum") {
    const options = Array.isArray(s.enum) && s.enum.length ? [...s.enum] : [s.const];
    if (options.every((v) => v === null || ["string", "number", "boolean"].includes(typeof v)))
      return { ...base, kind: "enum", options };
  } else if (type === "integer" || type === "number") {
    return {
      ...base,
      kind: "number",
      integer: type === "integer",
      minimum: num(s.minimum),
      maximum: num(s.maximum),
      exclusiveMinimum: num(s.exclusiveMinimum),
      exclusiveMaximum: num(s.exclusiveMaximum),
      multipleOf: num(s.multipleOf),
    };
  } else if (type === "string") {
    const maxLength = int(s.maxLength);
    return {
      ...base,
      kind: "string",
      minLength: int(s.minLength),
      maxLength,
      pattern: typeof s.pattern === "string" ? s.pattern : undefined,
      format: typeof s.format === "string" ? s.format : undefined,
      multiline: maxLength === undefined || maxLength > MULTILINE_FROM,
    };
  } else if (type === "boolean") {
    return { ...base, kind: "boolean" };
  } else if (type === "array" && s.items && typeof s.items === "object" && !s.prefixItems) {
    const item = nodeOf(s.items, { key: null, path: [...path, 0], required: true, rootSchema });
    if (SCALAR_KINDS.has(item.kind)) {
      const itemLabel =
        typeof resolve(s.items, rootSchema).title === "string" ? item.label : `${base.label} item`;
      return {
        ...base,
        kind: "list",
        item: { ...item, label: itemLabel },
        minItems: int(s.minItems) ?? 0,
        maxItems: int(s.maxItems),
        uniqueItems: s.uniqueItems === true,
      };
    }
  } else if (type === "object" && s.properties && typeof s.properties === "object") {
    const needed = new Set(Array.isArray(s.required) ? s.required : []);
    const fields = Object.entries(s.properties).map(([name, sub]) =>
      nodeOf(sub, {
        key: name,
        path: [...path, name],
        required: needed.has(name),
        rootSchema,
        parentDefault: def,
      }),
    );
    // Properties beyond the declared ones (additionalProperties not false) have no control here.
    return { ...base, kind: "object", fields };
  }
  return { ...base, kind: "json", schema: s };
}

function idOf(path) {
  let out = "input";
  for (const part of path) out += typeof part === "number" ? `[${part}]` : `.${part}`;
  return out;
}

const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : undefined);
const int = (v) => (Number.isInteger(v) && v >= 0 ? v : undefined);

/** The id of a list's i-th item field. */
export function itemId(list, index) {
  return `${list.id}[${index}]`;
}

// ---- initial values ----------------------------------------------------------------------

/** What a form shows before the user types: the schema's `default`, else an empty control. */
export function initialRaw(node) {
  const d = node.default;
  switch (node.kind) {
    case "number":
      return typeof d === "number" ? String(d) : "";
    case "string":
      return typeof d === "string" ? d : "";
    case "boolean":
      return d === true;
    case "enum": {
      const at = node.options.findIndex((v) => v === d);
      if (at >= 0) return String(at);
      // A required enum with no default starts at its first choice, as a select does.
      return node.required && !node.nullable ? "0" : "";
    }
    case "list": {
      const items = Array.isArray(d) ? d : [];
      const out = items.map((v) => initialRaw({ ...node.item, default: v }));
      while (out.length < node.minItems) out.push(initialRaw({ ...node.item, default: undefined }));
      return out;
    }
    case "object":
      if (node.nullable && (d === null || (d === undefined && !node.required))) return null;
      return Object.fromEntries(node.fields.map((f) => [f.key, initialRaw(f)]));
    default:
      return d === undefined ? "" : JSON.stringify(d, null, 2);
  }
}

/** The raw values of a whole model, keyed as `readInput` takes them. */
export function initialInput(model) {
  return initialRaw(model.root);
}

// ---- raw values → input, with the schema's checks ------------------------------------------

const OMIT = Symbol("omit");

/**
 * The `input` object from a form's raw values, and every problem found, each as
 * `{field, message}` with `field` a node id (or an item id). The server checks again.
 */
export function readInput(model, raw) {
  const errors = [];
  const value = readNode(model.root, raw, errors, model.root.id);
  return { input: value === OMIT ? {} : value, errors };
}

function readNode(node, raw, errors, id) {
  const fail = (message) => {
    errors.push({ field: id, message });
    return OMIT;
  };
  switch (node.kind) {
    case "number": {
      const text = raw == null ? "" : String(raw).trim();
      if (text === "") return emptyValue(node, fail);
      const n = Number(text);
      if (!Number.isFinite(n)) return fail("not a number");
      if (node.integer && !Number.isInteger(n)) return fail("a whole number");
      if (node.minimum !== undefined && n < node.minimum) return fail(`at least ${node.minimum}`);
      if (node.maximum !== undefined && n > node.maximum) return fail(`at most ${node.maximum}`);
      if (node.exclusiveMinimum !== undefined && n <= node.exclusiveMinimum)
        return fail(`more than ${node.exclusiveMinimum}`);
      if (node.exclusiveMaximum !== undefined && n >= node.exclusiveMaximum)
        return fail(`less than ${node.exclusiveMaximum}`);
      if (node.multipleOf !== undefined && !isMultiple(n, node.multipleOf))
        return fail(`a multiple of ${node.multipleOf}`);
      return n;
    }
    case "string": {
      const text = raw == null ? "" : String(raw);
      if (text === "" && (node.nullable || !node.required)) return emptyValue(node, fail);
      const length = [...text].length;
      if (node.minLength !== undefined && length < node.minLength)
        return fail(node.minLength === 1 ? "required" : `at least ${node.minLength} characters`);
      if (node.maxLength !== undefined && length > node.maxLength)
        return fail(`at most ${node.maxLength} characters`);
      if (node.pattern !== undefined) {
        let re = null;
        try {
          re = new RegExp(node.pattern, "u");
        } catch {
          re = null; // a pattern JS cannot read: the server decides
        }
        if (re && !re.test(text)) return fail(`must match ${node.pattern}`);
      }
      return text;
    }
    case "boolean":
      return raw === true || raw === "true" || raw === "on";
    case "enum": {
      const text = raw == null ? "" : String(raw);
      if (text === "") return emptyValue(node, fail);
      const at = Number(text);
      if (!Number.isInteger(at) || at < 0 || at >= node.options.length)
        return fail(`one of ${node.options.join(", ")}`);
      return node.options[at];
    }
    case "list": {
      if (raw === null && node.nullable) return null;
      const items = Array.isArray(raw) ? raw : [];
      const out = [];
      let bad = false;
      items.forEach((itemRaw, i) => {
        const before = errors.length;
        const v = readNode(node.item, itemRaw, errors, itemId(node, i));
        if (errors.length > before) bad = true;
        else if (v !== OMIT) out.push(v);
        else if (node.item.kind === "number" || node.item.kind === "enum" || node.item.kind === "string") {
          errors.push({ field: itemId(node, i), message: "required (or remove it)" });
          bad = true;
        }
      });
      if (bad) return OMIT;
      if (out.length === 0 && !node.required && node.minItems > 0 && node.default === undefined)
        return OMIT;
      if (out.length < node.minItems)
        return fail(`at least ${node.minItems} ${node.minItems === 1 ? "item" : "items"}`);
      if (node.maxItems !== undefined && out.length > node.maxItems)
        return fail(`at most ${node.maxItems} ${node.maxItems === 1 ? "item" : "items"}`);
      if (node.uniqueItems && new Set(out.map((v) => JSON.stringify(v))).size < out.length)
        return fail("each item only once");
      return out;
    }
    case "object": {
      if (raw === null || raw === undefined) {
        if (node.nullable) return null;
        if (!node.required) return OMIT;
      }
      const values = raw && typeof raw === "object" ? raw : {};
      const out = {};
      for (const field of node.fields) {
        const v = readNode(field, values[field.key], errors, field.id);
        if (v !== OMIT) out[field.key] = v;
      }
      return out;
    }
    default: {
      const text = raw == null ? "" : String(raw).trim();
      if (text === "") return emptyValue(node, fail);
      try {
        return JSON.parse(text);
      } catch (err) {
        return fail(`not valid JSON (${err.message})`);
      }
    }
  }
}

/** A control left empty: null for an optional X, left out when the server has a default. */
function emptyValue(node, fail) {
  if (node.nullable) return null;
  if (!node.required) return OMIT;
  return fail("required");
}

function isMultiple(n, of) {
  const q = n / of;
  return Math.abs(q - Math.round(q)) < 1e-9;
}

// ---- the submit body ---------------------------------------------------------------------

/**
 * The submit body (as `POST /api/tasks` takes it) for `model` from a form's raw values
 * `{input, queue, priority}`, or `{errors}` naming each bad field (`"priority"`, `"queue"`, or a
 * node id). An empty queue or priority is left to the server's default.
 */
export function buildSubmission(model, { input, queue = "", priority = "" } = {}) {
  const read = readInput(model, input);
  const errors = [...read.errors];
  const body = { task: model.name, input: read.input };
  const q = String(queue ?? "").trim();
  if (q) {
    if (model.queues.length && !model.queues.includes(q))
      errors.push({ field: "queue", message: `one of ${model.queues.join(", ")}` });
    else body.queue = q;
  }
  const p = String(priority ?? "").trim();
  if (p !== "") {
    const n = Number(p);
    if (!Number.isInteger(n) || n < 0 || n > 9)
      errors.push({ field: "priority", message: "a whole number from 0 to 9" });
    else body.priority = n;
  }
  return errors.length ? { errors } : { body };
}

// ---- the server's 422, at its field ------------------------------------------------------

/** The `{field, message}` problems of a submit's error (`details.field`/`reason`, `details.errors`). */
export function serverErrors(error) {
  if (!error || typeof error !== "object") return [];
  const details = error.details && typeof error.details === "object" ? error.details : {};
  const out = [];
  const list = Array.isArray(details.errors) ? details.errors : [];
  for (const e of list) {
    if (e && typeof e.field === "string")
      out.push({ field: e.field, message: String(e.reason ?? e.message ?? error.message ?? "invalid") });
  }
  if (!out.length && typeof details.field === "string")
    out.push({ field: details.field, message: String(details.reason ?? error.message ?? "invalid") });
  return out;
}

/** Every field id of a model (objects included, list items as `input.x[n]` for n < `items`). */
export function fieldIds(model) {
  const out = [];
  const walk = (node) => {
    out.push(node.id);
    if (node.kind === "object") node.fields.forEach(walk);
  };
  walk(model.root);
  return out;
}

/**
 * The field a server-side path names, as a node or item id of `model`: the path itself when the
 * form has it, else the nearest enclosing field; "form" when none encloses it. Paths may name
 * list items either way: `input.columns[2]` or `input.columns.2`.
 */
export function fieldFor(model, path) {
  if (typeof path !== "string" || !path) return "form";
  const parts = splitPath(path);
  if (parts[0] !== "input") return ["queue", "priority"].includes(path) ? path : "form";
  let node = model.root;
  let id = node.id;
  let best = "form";
  if (node.kind !== "object") best = id;
  for (const part of parts.slice(1)) {
    if (node.kind === "object") {
      const next = node.fields.find((f) => f.key === part);
      if (!next) break;
      node = next;
      id = next.id;
      best = id;
    } else if (node.kind === "list" && /^\d+$/.test(part)) {
      best = itemId(node, Number(part));
      break;
    } else break;
  }
  return best === "input" && model.root.kind === "object" ? "form" : best;
}

function splitPath(path) {
  return path
    .replace(/\[(\d+)\]/g, ".$1")
    .split(".")
    .filter((p) => p !== "");
}

/** The label of a field id (an item id names its list's item: "Columns item 2"). */
export function labelFor(model, fieldId) {
  if (fieldId === "queue") return "Queue";
  if (fieldId === "priority") return "Priority";
  let found = null;
  const walk = (node) => {
    if (found) return;
    if (node.id === fieldId) found = node.label;
    else if (node.kind === "list" && fieldId.startsWith(`${node.id}[`)) {
      const i = Number(fieldId.slice(node.id.length + 1, -1));
      found = `${node.item.label} ${i + 1}`;
    } else if (node.kind === "object") node.fields.forEach(walk);
  };
  walk(model.root);
  return found ?? "Input";
}
