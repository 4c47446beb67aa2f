// The client's state rules, with node's own test runner: `node --test test/` (from web/).
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  TaskStore,
  WorkflowStore,
  busyIds,
  canCancel,
  classifyConnectError,
  describeElapsed,
  describeError,
  describePhase,
  describeResult,
  describeWorkflow,
  formatClock,
  formatDuration,
  isTerminal,
  maxAttemptsByType,
  peekToken,
  takeTokenFromUrl,
} from "../src/state.js";

function snap(seq, over = {}) {
  return {
    task_id: "t1",
    task: "demo.count",
    queue: "fast",
    status: "RUNNING",
    seq,
    progress: { percent: 0, message: null, data: {} },
    result: null,
    error: null,
    created_at: 100,
    started_at: 101,
    finished_at: null,
    ...over,
  };
}

describe("ordering by seq", () => {
  test("applies rising seqs and drops any seq not above the last applied", () => {
    const store = new TaskStore();
    assert.equal(store.apply(snap(1, { status: "PENDING", started_at: null })), "applied");
    assert.equal(store.apply(snap(3, { progress: { percent: 40, message: "b" } })), "applied");
    assert.equal(store.apply(snap(2, { progress: { percent: 20, message: "a" } })), "stale");
    assert.equal(store.apply(snap(3, { progress: { percent: 99, message: "dup" } })), "stale");
    const t = store.get("t1");
    assert.equal(t.seq, 3);
    assert.equal(t.progress.message, "b");
    assert.equal(t.percent, 40);
    assert.deepEqual(store.counts, { applied: 2, stale: 2, final: 0, invalid: 0 });
  });

  test("a gap is fine: the snapshot is the whole state, not a delta", () => {
    const store = new TaskStore();
    store.apply(snap(1, { status: "PENDING" }));
    assert.equal(store.apply(snap(9, { progress: { percent: 70 } })), "applied");
    assert.equal(store.get("t1").percent, 70);
  });

  test("tasks are independent", () => {
    const store = new TaskStore();
    store.apply(snap(5));
    assert.equal(store.apply(snap(1, { task_id: "t2" })), "applied");
    assert.equal(store.size, 2);
  });

  test("the bar never goes back, even when a newer update reports less", () => {
    const store = new TaskStore();
    store.apply(snap(2, { progress: { percent: 60 } }));
    store.apply(snap(3, { status: "RETRYING", progress: { percent: 10 } }));
    const t = store.get("t1");
    assert.equal(t.status, "RETRYING");
    assert.equal(t.percent, 60);
    assert.equal(t.progress.percent, 10);
  });

  test("percent is clamped to 0..100 and garbage counts as 0", () => {
    const store = new TaskStore();
    store.apply(snap(1, { progress: { percent: 250 } }));
    assert.equal(store.get("t1").percent, 100);
    store.apply(snap(1, { task_id: "t2", progress: { percent: "lots" } }));
    assert.equal(store.get("t2").percent, 0);
    store.apply(snap(1, { task_id: "t3", progress: null }));
    assert.equal(store.get("t3").percent, 0);
  });

  test("invalid snapshots are ignored", () => {
    const store = new TaskStore();
    for (const bad of [
      null,
      3,
      {},
      snap(0),
      snap(1.5),
      snap(2, { status: "WHATEVER" }),
      snap(1, { task_id: "" }),
    ]) {
      assert.equal(store.apply(bad), "invalid");
    }
    assert.equal(store.size, 0);
  });
});

describe("terminal states", () => {
  test("statuses", () => {
    for (const s of ["COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"]) {
      assert.ok(isTerminal(s));
      assert.ok(!canCancel(s));
    }
    for (const s of ["PENDING", "RUNNING", "RETRYING"]) {
      assert.ok(!isTerminal(s));
      assert.ok(canCancel(s));
    }
    assert.ok(!canCancel("NOPE"));
  });

  test("COMPLETED fills the bar", () => {
    const store = new TaskStore();
    store.apply(snap(4, { status: "COMPLETED", progress: { percent: 80 }, result: { counted: 4 } }));
    assert.equal(store.get("t1").percent, 100);
  });

  test("a terminal status never changes, whatever seq comes after it", () => {
    const store = new TaskStore();
    store.apply(snap(5, { status: "CANCELLED", finished_at: 110 }));
    assert.equal(store.apply(snap(6, { status: "RUNNING", progress: { percent: 90 } })), "final");
    assert.equal(store.apply(snap(7, { status: "COMPLETED" })), "final");
    const t = store.get("t1");
    assert.equal(t.status, "CANCELLED");
    assert.equal(t.seq, 5);
  });

  test("FAILED keeps its error and its bar", () => {
    const store = new TaskStore();
    store.apply(snap(3, { progress: { percent: 50 } }));
    store.apply(snap(4, { status: "FAILED", error: { type: "DemoFailure", message: "boom" } }));
    const t = store.get("t1");
    assert.equal(t.percent, 50);
    assert.equal(describeError(t.error), "DemoFailure: boom");
  });

  test("watchMap lists only tasks that may still change, with their last seq", () => {
    const store = new TaskStore();
    store.apply(snap(3));
    store.apply(snap(1, { task_id: "t2", status: "PENDING" }));
    store.apply(snap(9, { task_id: "t3", status: "COMPLETED" }));
    assert.deepEqual(store.watchMap(), { t1: 3, t2: 1 });
  });
});

describe("coalescing", () => {
  test("many updates between two renders leave one dirty entry holding the latest", () => {
    const store = new TaskStore();
    for (let seq = 1; seq <= 50; seq++) store.apply(snap(seq, { progress: { percent: seq * 2 } }));
    store.apply(snap(1, { task_id: "t2" }));
    assert.deepEqual(store.takeDirty().sort(), ["t1", "t2"]);
    assert.equal(store.get("t1").percent, 100);
    assert.deepEqual(store.takeDirty(), []);
  });

  test("stale updates do not make a task dirty", () => {
    const store = new TaskStore();
    store.apply(snap(5));
    store.takeDirty();
    store.apply(snap(4));
    store.apply(snap(5));
    assert.deepEqual(store.takeDirty(), []);
  });

  test("the submit ack adds a placeholder that the first snapshot replaces", () => {
    const store = new TaskStore();
    assert.ok(
      store.addSubmitted(
        { task_id: "t1", status: "PENDING", seq: 1 },
        { task: "demo.count", queue: "fast", now: 100 },
      ),
    );
    let t = store.get("t1");
    assert.equal(t.seq, 0);
    assert.ok(t.placeholder);
    assert.equal(store.apply(snap(1, { status: "PENDING", started_at: null })), "applied");
    t = store.get("t1");
    assert.equal(t.seq, 1);
    assert.ok(!t.placeholder);
  });

  test("an ack that arrives after the first snapshot changes nothing", () => {
    const store = new TaskStore();
    store.apply(snap(2));
    assert.ok(!store.addSubmitted({ task_id: "t1" }, { task: "demo.count" }));
    assert.equal(store.get("t1").seq, 2);
  });

  test("the list is newest first and pruning drops the oldest ended tasks first", () => {
    const store = new TaskStore({ limit: 3 });
    store.apply(snap(1, { task_id: "old-done", status: "COMPLETED", created_at: 1 }));
    store.apply(snap(1, { task_id: "old-running", created_at: 2 }));
    store.apply(snap(1, { task_id: "mid-done", status: "FAILED", created_at: 3 }));
    store.apply(snap(1, { task_id: "new", created_at: 4 }));
    assert.deepEqual(
      store.list().map((t) => t.task_id),
      ["new", "mid-done", "old-running"],
    );
    store.remove("mid-done");
    assert.equal(store.size, 2);
    assert.ok(store.takeDirty().includes("mid-done"));
  });

  test("clear() forgets every task and marks each for the next render", () => {
    const store = new TaskStore();
    store.apply(snap(1));
    store.apply(snap(1, { task_id: "t2" }));
    store.takeDirty();
    store.clear();
    assert.equal(store.size, 0);
    assert.deepEqual(store.takeDirty().sort(), ["t1", "t2"]);
    assert.equal(store.apply(snap(1)), "applied");
  });

  test("a cleared task stays cleared when the server replays it (as it does on reconnect)", () => {
    const store = new TaskStore();
    store.apply(snap(7, { status: "COMPLETED" }));
    store.remove("t1");
    assert.equal(store.apply(snap(7, { status: "COMPLETED" })), "stale");
    assert.equal(store.size, 0);
  });
});

describe("display helpers", () => {
  test("elapsed: queued, running, took, never ran", () => {
    assert.equal(
      describeElapsed({ status: "PENDING", created_at: 100, started_at: null }, 102),
      "queued 2.0 s",
    );
    assert.equal(
      describeElapsed({ status: "RUNNING", created_at: 100, started_at: 101 }, 104.5),
      "running 3.5 s",
    );
    assert.equal(
      describeElapsed({ status: "COMPLETED", created_at: 100, started_at: 101, finished_at: 171 }, 999),
      "took 1 min 10 s",
    );
    assert.equal(
      describeElapsed({ status: "CANCELLED", created_at: 100, started_at: null, finished_at: 101 }, 200),
      "did not run",
    );
    assert.equal(formatDuration(3 * 3600 + 120), "3 h 02 min");
    assert.equal(formatDuration(null), "–");
  });

  test("results are shown as JSON, cut short when long", () => {
    assert.equal(describeResult({ counted: 3 }), '{"counted":3}');
    assert.equal(describeResult(null), "");
    const long = describeResult({ x: "y".repeat(1000) }, 50);
    assert.equal(long.length, 50);
    assert.ok(long.endsWith("…"));
  });

  test("a token in the address bar is taken out of it", () => {
    assert.deepEqual(takeTokenFromUrl("http://h:1/?token=abc.def&x=1#top"), {
      token: "abc.def",
      cleanUrl: "/?x=1#top",
    });
    assert.deepEqual(takeTokenFromUrl("http://h:1/?token=abc"), { token: "abc", cleanUrl: "/" });
    assert.deepEqual(takeTokenFromUrl("http://h:1/?token="), { token: null, cleanUrl: "/" });
    assert.deepEqual(takeTokenFromUrl("http://h:1/"), { token: null, cleanUrl: null });
  });

  test("a refused connection is told apart from a network failure", () => {
    assert.deepEqual(classifyConnectError(new Error("token expired"), false), {
      kind: "refused",
      message: "token expired",
    });
    assert.equal(classifyConnectError(new Error("websocket error"), true).kind, "network");
  });

  test("peekToken reads sub and exp without checking the signature", () => {
    const payload = Buffer.from(JSON.stringify({ sub: "alice", exp: 1234 })).toString("base64url");
    assert.deepEqual(peekToken(`x.${payload}.y`), { user: "alice", exp: 1234 });
    assert.deepEqual(peekToken("garbage"), { user: null, exp: null });
  });
});

describe("retries and delays", () => {
  const types = {
    task_types: [
      { name: "demo.flaky", retries: { max_retries: 5 } },
      { name: "demo.count" },
      { name: 7 },
      { name: "odd", retries: { max_retries: "5" } },
    ],
  };

  test("runs per task type come from the task types: max_retries + 1, else 1", () => {
    const runs = maxAttemptsByType(types);
    assert.deepEqual([...runs], [["demo.flaky", 6], ["demo.count", 1], ["odd", 1]]);
    assert.equal(maxAttemptsByType(null).size, 0);
    assert.equal(maxAttemptsByType({ task_types: "no" }).size, 0);
  });

  test("a retrying task says which attempt comes, of how many", () => {
    const t = snap(4, { task: "demo.flaky", status: "RETRYING", attempt: 2, next_attempt_at: 200 });
    assert.equal(describePhase(t, { maxAttempts: 6 }), "retrying (attempt 2 of 6)");
    assert.equal(describePhase(t), "retrying (attempt 2)");
    const later = { ...t, status: "RUNNING", attempt: 3 };
    assert.equal(describePhase(later, { maxAttempts: 6 }), "attempt 3 of 6");
    assert.equal(describePhase({ ...t, status: "RUNNING", attempt: 1 }, { maxAttempts: 6 }), "");
    assert.equal(describePhase({ ...t, status: "COMPLETED", attempt: 3 }, { maxAttempts: 6 }), "");
  });

  test("a delayed task says when it is due, in local time", () => {
    const due = new Date(2030, 0, 2, 9, 5, 7).getTime() / 1000;
    assert.equal(formatClock(due), "09:05:07");
    const t = snap(1, { status: "PENDING", started_at: null, eta: due });
    assert.equal(describePhase(t), "due at 09:05:07");
    // A skew under a second is measurement noise; a larger one is the server's clock ahead.
    assert.equal(describePhase(t, { clockOffset: 0.4 }), "due at 09:05:07");
    assert.equal(describePhase(t, { clockOffset: 60 }), "due at 09:04:07");
    assert.equal(describePhase({ ...t, eta: null }), "");
    assert.equal(describePhase({ ...t, status: "RUNNING" }), "");
  });
});

describe("stalls, busy workers and workflow roll-ups", () => {
  test("a stalled RUNNING task says so; once it moves on the note goes", () => {
    assert.equal(describePhase(snap(4, { stalled: true })), "stalled: its worker has gone quiet");
    assert.equal(describePhase(snap(5, { stalled: false })), "");
    assert.equal(describePhase(snap(6, { status: "COMPLETED", stalled: true })), "");
  });

  test("a worker's busy ids leave out the tasks this page saw end", () => {
    const status = { a: "RUNNING", b: "COMPLETED" };
    assert.deepEqual(
      busyIds({ active: ["a", "b", "c"] }, (id) => status[id]),
      ["a", "c"],
    );
    assert.deepEqual(busyIds({}, () => undefined), []);
  });

  test("workflow snapshots apply by seq and their percent never goes back", () => {
    const flows = new WorkflowStore();
    const w = (seq, percent, status = "RUNNING") => ({
      workflow_id: "w1",
      kind: "chain",
      status,
      seq,
      percent,
      created_at: 1,
      children: [
        { task_id: "a", status: "COMPLETED", percent: 100, seq: 4 },
        { task_id: "b", status: "RUNNING", percent: 20, seq: 3 },
        { task_id: "c", status: "PENDING", percent: 0, seq: 1 },
      ],
    });
    assert.equal(flows.apply(w(8, 40)), "applied");
    assert.equal(flows.apply(w(8, 90)), "stale");
    assert.equal(flows.apply(w(9, 30)), "applied");
    assert.equal(flows.get("w1").percent, 40);
    assert.deepEqual(flows.takeDirty(), ["w1"]);
    assert.equal(describeWorkflow(flows.get("w1")), "chain · 1 of 3 tasks done · 1 running · 1 waiting");
    assert.equal(flows.apply({ nope: 1 }), "invalid");
  });
});
