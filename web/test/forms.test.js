// How the page's forms become submit bodies: `node --test test/` (from web/).
import assert from "node:assert/strict";
import { test } from "node:test";

import { DEMO_TASKS, buildSubmission, findTask } from "../src/forms.js";

test("every demo task of the contract has a form", () => {
  assert.deepEqual(
    DEMO_TASKS.map((t) => t.name),
    ["demo.count", "demo.sleep", "demo.fail", "demo.primes"],
  );
});

test("form strings become typed input, queue and priority", () => {
  const { body } = buildSubmission(findTask("demo.count"), {
    steps: "5",
    delay: "0.2",
    queue: "fast",
    priority: "7",
  });
  assert.deepEqual(body, { task: "demo.count", input: { steps: 5, delay: 0.2 }, queue: "fast", priority: 7 });
});

test("an empty queue or priority is left to the server's default", () => {
  const { body } = buildSubmission(findTask("demo.fail"), {
    message: " boom ",
    after: "0",
    queue: "",
    priority: "",
  });
  assert.deepEqual(body, { task: "demo.fail", input: { message: "boom", after: 0 } });
});

test("bad input names the field", () => {
  const spec = findTask("demo.count");
  assert.equal(buildSubmission(spec, { steps: "1.5", delay: "0" }).error.field, "input.steps");
  assert.equal(buildSubmission(spec, { steps: "", delay: "0" }).error.field, "input.steps");
  assert.equal(buildSubmission(spec, { steps: "99999", delay: "0" }).error.field, "input.steps");
  assert.equal(buildSubmission(spec, { steps: "3", delay: "abc" }).error.field, "input.delay");
  assert.equal(buildSubmission(spec, { steps: "3", delay: "0", priority: "12" }).error.field, "priority");
});
