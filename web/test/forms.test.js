// How a task type's input schema becomes a form, and a form's values a submit body:
// `node --test test/` (from web/).
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  buildSubmission,
  cleanDescription,
  fieldFor,
  formModel,
  formModels,
  initialInput,
  labelFor,
  readInput,
  serverErrors,
} from "../src/forms.js";

// demo.report's input as pydantic serves it ($refs inlined, no $defs).
const REPORT = {
  name: "demo.report",
  queue: "fast",
  queues: ["fast", "heavy"],
  description: "Builds a small report with progress; ``rows`` lines.\n    More text.",
  input_schema: {
    $schema: "https://json-schema.org/draft/2020-12/schema",
    type: "object",
    title: "ReportInput",
    additionalProperties: false,
    required: ["rows", "columns", "options"],
    properties: {
      rows: { type: "integer", minimum: 1, maximum: 100000, title: "Rows", description: "How many rows" },
      columns: {
        type: "array",
        title: "Columns",
        items: { type: "string", minLength: 1, maxLength: 64 },
        minItems: 1,
        maxItems: 20,
      },
      options: {
        type: "object",
        title: "ReportOptions",
        additionalProperties: false,
        required: ["format"],
        properties: {
          format: { enum: ["csv", "json"], type: "string", title: "Format" },
          header: { type: "boolean", default: true, title: "Header" },
        },
      },
    },
  },
};

const COUNT = {
  name: "demo.count",
  queue: "fast",
  queues: ["fast"],
  description: "Counts.",
  input_schema: {
    type: "object",
    additionalProperties: false,
    properties: {
      steps: { type: "integer", minimum: 1, maximum: 10000, default: 10, title: "Steps" },
      delay: { type: "number", minimum: 0, maximum: 10, default: 0.1, title: "Delay" },
    },
  },
};

const byKey = (model) => Object.fromEntries(model.fields.map((f) => [f.key, f]));

describe("schema → form model", () => {
  test("numbers keep their bounds; integers are whole", () => {
    const { steps, delay } = byKey(formModel(COUNT));
    assert.equal(steps.kind, "number");
    assert.equal(steps.integer, true);
    assert.deepEqual([steps.minimum, steps.maximum, steps.default], [1, 10000, 10]);
    assert.equal(delay.integer, false);
    assert.equal(steps.id, "input.steps");
  });

  test("demo.report: a list of strings, a nested group with an enum and a boolean", () => {
    const model = formModel(REPORT);
    const { rows, columns, options } = byKey(model);
    assert.equal(rows.kind, "number");
    assert.equal(rows.required, true);
    assert.equal(columns.kind, "list");
    assert.deepEqual([columns.minItems, columns.maxItems], [1, 20]);
    assert.equal(columns.item.kind, "string");
    assert.deepEqual([columns.item.minLength, columns.item.maxLength], [1, 64]);
    assert.equal(options.kind, "object");
    const [format, header] = options.fields;
    assert.equal(format.kind, "enum");
    assert.deepEqual(format.options, ["csv", "json"]);
    assert.equal(format.id, "input.options.format");
    assert.equal(format.required, true);
    assert.equal(header.kind, "boolean");
    assert.equal(header.default, true);
    assert.equal(model.queue, "fast");
    assert.deepEqual(model.queues, ["fast", "heavy"]);
  });

  test("anyOf [X, null] is an optional X; titles and descriptions become label and help", () => {
    const model = formModel({
      name: "t",
      input_schema: {
        type: "object",
        properties: {
          limit: { anyOf: [{ type: "integer", maximum: 5 }, { type: "null" }], default: null, title: "Cap" },
          note: { type: ["string", "null"], description: "Anything" },
          fail_times: { type: "integer" },
        },
      },
    });
    const { limit, note, fail_times } = byKey(model);
    assert.equal(limit.kind, "number");
    assert.equal(limit.nullable, true);
    assert.equal(limit.maximum, 5);
    assert.equal(limit.label, "Cap");
    assert.equal(note.kind, "string");
    assert.equal(note.nullable, true);
    assert.equal(note.help, "Anything");
    assert.equal(fail_times.label, "Fail times");
    assert.deepEqual(readInput(model, { limit: "", note: "", fail_times: "" }).input, { limit: null, note: null });
  });

  test("long or unbounded strings get a multi-line control, short ones a line", () => {
    const model = formModel({
      name: "t",
      input_schema: {
        type: "object",
        properties: { message: { type: "string", maxLength: 1000 }, code: { type: "string", maxLength: 8 } },
      },
    });
    const { message, code } = byKey(model);
    assert.equal(message.multiline, true);
    assert.equal(code.multiline, false);
  });

  test("what has no natural control is a JSON field", () => {
    const model = formModel({
      name: "t",
      input_schema: {
        type: "object",
        properties: {
          matrix: { type: "array", items: { type: "array", items: { type: "number" } } },
          any: {},
          union: { anyOf: [{ type: "string" }, { type: "integer" }] },
          free: { type: "object", additionalProperties: { type: "string" } },
        },
      },
    });
    for (const f of model.fields) assert.equal(f.kind, "json", f.key);
    const read = readInput(model, { matrix: "[[1,2]]", any: "", union: "7", free: "{nope" });
    assert.deepEqual(read.errors, [{ field: "input.free", message: read.errors[0].message }]);
    assert.match(read.errors[0].message, /^not valid JSON/);
    assert.deepEqual(readInput(model, { matrix: "[[1,2]]", union: "7" }).input, { matrix: [[1, 2]], union: 7 });
  });

  test("$ref into $defs and one-element allOf are followed", () => {
    const model = formModel({
      name: "t",
      input_schema: {
        type: "object",
        $defs: { Fmt: { enum: ["a", "b"], type: "string" } },
        properties: { fmt: { allOf: [{ $ref: "#/$defs/Fmt" }], default: "b" } },
      },
    });
    const [fmt] = model.fields;
    assert.equal(fmt.kind, "enum");
    assert.deepEqual(initialInput(model), { fmt: "1" });
  });

  test("every task type gets a form, by name; a docstring reads as plain text", () => {
    const models = formModels({ task_types: [REPORT, COUNT, { name: "demo.add", input_schema: {} }, {}] });
    assert.deepEqual(
      models.map((m) => m.name),
      ["demo.add", "demo.count", "demo.report"],
    );
    assert.equal(cleanDescription(REPORT.description), "Builds a small report with progress; `rows` lines. More text.");
  });
});

describe("form values → input", () => {
  test("defaults are pre-filled and come back as typed input", () => {
    const model = formModel(COUNT);
    const raw = initialInput(model);
    assert.deepEqual(raw, { steps: "10", delay: "0.1" });
    assert.deepEqual(buildSubmission(model, { input: raw }).body, {
      task: "demo.count",
      input: { steps: 10, delay: 0.1 },
    });
  });

  test("demo.report's nested input, queue and priority", () => {
    const model = formModel(REPORT);
    const raw = initialInput(model);
    assert.deepEqual(raw, { rows: "", columns: [""], options: { format: "0", header: true } });
    const { body } = buildSubmission(model, {
      input: { rows: "250", columns: ["id", "name"], options: { format: "1", header: false } },
      queue: "heavy",
      priority: "7",
    });
    assert.deepEqual(body, {
      task: "demo.report",
      input: { rows: 250, columns: ["id", "name"], options: { format: "json", header: false } },
      queue: "heavy",
      priority: 7,
    });
  });

  test("the checks mirror the schema and name each field by its path", () => {
    const model = formModel(REPORT);
    const { errors } = buildSubmission(model, {
      input: { rows: "0", columns: ["ok", "", "x".repeat(65)], options: { format: "" } },
      priority: "12",
      queue: "nowhere",
    });
    assert.deepEqual(errors, [
      { field: "input.rows", message: "at least 1" },
      { field: "input.columns[1]", message: "required" },
      { field: "input.columns[2]", message: "at most 64 characters" },
      { field: "input.options.format", message: "required" },
      { field: "queue", message: "one of fast, heavy" },
      { field: "priority", message: "a whole number from 0 to 9" },
    ]);
  });

  test("list sizes: minItems and maxItems", () => {
    const model = formModel(REPORT);
    const input = (columns) => ({ rows: "1", columns, options: { format: "0", header: true } });
    assert.deepEqual(readInput(model, input([])).errors, [{ field: "input.columns", message: "at least 1 item" }]);
    const many = Array.from({ length: 21 }, (_, i) => `c${i}`);
    assert.deepEqual(readInput(model, input(many)).errors, [
      { field: "input.columns", message: "at most 20 items" },
    ]);
    assert.deepEqual(readInput(model, input(many.slice(0, 20))).errors, []);
  });

  test("numbers: whole, bounds, not a number, required", () => {
    const model = formModel(REPORT);
    const rowsError = (rows) =>
      readInput(model, { rows, columns: ["a"], options: { format: "0" } }).errors[0]?.message;
    assert.equal(rowsError("1.5"), "a whole number");
    assert.equal(rowsError("100001"), "at most 100000");
    assert.equal(rowsError("abc"), "not a number");
    assert.equal(rowsError(""), "required");
    assert.equal(rowsError(" 42 "), undefined);
  });

  test("an optional field left empty is left to the server's default", () => {
    const model = formModel(COUNT);
    assert.deepEqual(readInput(model, { steps: "", delay: "" }), { input: {}, errors: [] });
  });

  test("labels for messages", () => {
    const model = formModel(REPORT);
    assert.equal(labelFor(model, "input.options.format"), "Format");
    assert.equal(labelFor(model, "input.columns[1]"), "Columns item 2");
    assert.equal(labelFor(model, "priority"), "Priority");
  });
});

describe("the server's 422 at its field", () => {
  test("details.field, and details.errors listing several", () => {
    assert.deepEqual(
      serverErrors({ code: "invalid_input", message: "m", details: { field: "input.rows", reason: "too big" } }),
      [{ field: "input.rows", message: "too big" }],
    );
    assert.deepEqual(
      serverErrors({
        message: "m",
        details: {
          field: "input.rows",
          errors: [
            { field: "input.rows", reason: "a" },
            { field: "input.options.format", reason: "b" },
          ],
        },
      }),
      [
        { field: "input.rows", message: "a" },
        { field: "input.options.format", message: "b" },
      ],
    );
    assert.deepEqual(serverErrors({ message: "nope" }), []);
  });

  test("a path finds its field, the nearest enclosing one, or the form", () => {
    const model = formModel(REPORT);
    assert.equal(fieldFor(model, "input.options.format"), "input.options.format");
    assert.equal(fieldFor(model, "input.columns.3"), "input.columns[3]");
    assert.equal(fieldFor(model, "input.columns[0]"), "input.columns[0]");
    assert.equal(fieldFor(model, "input.options.extra"), "input.options");
    assert.equal(fieldFor(model, "input"), "form");
    assert.equal(fieldFor(model, "input.nope"), "form");
    assert.equal(fieldFor(model, "priority"), "priority");
    assert.equal(fieldFor(model, "task"), "form");
  });
});
