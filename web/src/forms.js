// The demo tasks the page offers, with their inputs, and how a form's values become the body of a
// `submit` (the same body as `POST /api/tasks`). No DOM here, so node tests can check it.

export const QUEUES = Object.freeze(["fast", "heavy"]);

export const DEMO_TASKS = Object.freeze([
  {
    name: "demo.count",
    queue: "fast",
    about: "Counts steps, reporting progress at each one.",
    fields: [
      { name: "steps", label: "Steps", type: "int", value: 20, min: 1, max: 10000 },
      { name: "delay", label: "Delay (s)", type: "float", value: 0.25, min: 0, max: 10, step: 0.05 },
    ],
  },
  {
    name: "demo.sleep",
    queue: "fast",
    about: "Sleeps with progress; stops when cancelled.",
    fields: [{ name: "seconds", label: "Seconds", type: "float", value: 30, min: 0, max: 3600, step: 0.5 }],
  },
  {
    name: "demo.fail",
    queue: "fast",
    about: "Fails on purpose after some steps.",
    fields: [
      {
        name: "message",
        label: "Error message",
        type: "str",
        value: "something went wrong",
        maxLength: 1000,
      },
      { name: "after", label: "Fail after steps", type: "int", value: 3, min: 0, max: 10000 },
    ],
  },
  {
    name: "demo.primes",
    queue: "heavy",
    about: "Counts primes below a limit (CPU-bound).",
    fields: [{ name: "limit", label: "Limit", type: "int", value: 5000000, min: 2, max: 50000000 }],
  },
]);

export function findTask(name) {
  return DEMO_TASKS.find((t) => t.name === name);
}

/**
 * The submit body for `spec` from raw form values (strings, as a form gives them), or
 * `{error: {field, message}}` naming the first bad input. The server checks again.
 */
export function buildSubmission(spec, values) {
  const input = {};
  for (const field of spec.fields) {
    const raw = values[field.name];
    const parsed = parseField(field, raw);
    if (parsed.error)
      return { error: { field: `input.${field.name}`, message: `${field.label}: ${parsed.error}` } };
    input[field.name] = parsed.value;
  }
  const body = { task: spec.name, input };
  const queue = (values.queue ?? "").trim();
  if (queue) body.queue = queue;
  const priorityRaw = (values.priority ?? "").toString().trim();
  if (priorityRaw !== "") {
    const priority = Number(priorityRaw);
    if (!Number.isInteger(priority) || priority < 0 || priority > 9) {
      return { error: { field: "priority", message: "Priority: a whole number from 0 to 9" } };
    }
    body.priority = priority;
  }
  return { body };
}

function parseField(field, raw) {
  const text = raw === undefined || raw === null ? "" : String(raw).trim();
  if (field.type === "str") {
    if (field.maxLength && text.length > field.maxLength)
      return { error: `at most ${field.maxLength} characters` };
    return { value: text };
  }
  if (text === "") return { error: "required" };
  const n = Number(text);
  if (!Number.isFinite(n)) return { error: "not a number" };
  if (field.type === "int" && !Number.isInteger(n)) return { error: "a whole number" };
  if (field.min !== undefined && n < field.min) return { error: `at least ${field.min}` };
  if (field.max !== undefined && n > field.max) return { error: `at most ${field.max}` };
  return { value: n };
}
