// The official socket.io-client, in node (no browser): connect with a token, submit demo.count,
// receive every update with a rising seq, end COMPLETED with the result. A bad token is refused
// with a connect_error that says why.
//
//   TASKGATE_URL=http://127.0.0.1:8080 TASKGATE_TOKEN=… node tests/web/browser/node_client.mjs
import { check, env, requireWeb, withTimeout } from "./lib.mjs";

const { io } = requireWeb("socket.io-client");
const url = env("TASKGATE_URL");
const token = env("TASKGATE_TOKEN");
const STEPS = 6;

async function refusedWithBadToken() {
  const socket = io(url, { auth: { token: "not-a-token" }, transports: ["websocket"], reconnection: false });
  try {
    const err = await withTimeout(
      new Promise((resolve, reject) => {
        socket.on("connect_error", resolve);
        socket.on("connect", () => reject(new Error("connected with a bad token")));
      }),
      10_000,
      "connect_error for a bad token",
    );
    check(/invalid token/.test(err.message), `connect_error message: ${err.message}`);
    check(!socket.active, "the client should stop after a refusal");
    return err.message;
  } finally {
    socket.close();
  }
}

async function submitAndFollow() {
  const socket = io(url, { auth: { token }, transports: ["websocket"], reconnection: false });
  const events = [];
  const ended = new Map(); // task id -> terminal snapshot
  let wake = () => {};
  socket.on("task", (snap) => {
    events.push(snap);
    if (["COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"].includes(snap.status))
      ended.set(snap.task_id, snap);
    wake();
  });
  try {
    await withTimeout(
      new Promise((resolve, reject) => {
        socket.once("connect", resolve);
        socket.once("connect_error", reject);
      }),
      10_000,
      "connect",
    );
    const ack = await socket.timeout(10_000).emitWithAck("submit", {
      task: "demo.count",
      input: { steps: STEPS, delay: 0.05 },
    });
    check(typeof ack.task_id === "string" && !ack.error, `submit ack: ${JSON.stringify(ack)}`);
    const final = await withTimeout(
      (async () => {
        while (!ended.has(ack.task_id)) await new Promise((resolve) => (wake = resolve));
        return ended.get(ack.task_id);
      })(),
      30_000,
      "the task to end",
    );
    const mine = events.filter((e) => e.task_id === ack.task_id);
    const seqs = mine.map((e) => e.seq);
    check(final.status === "COMPLETED", `final status ${final.status}`);
    check(
      JSON.stringify(final.result) === JSON.stringify({ counted: STEPS }),
      `result ${JSON.stringify(final.result)}`,
    );
    check(
      seqs.every((s, i) => i === 0 || s > seqs[i - 1]),
      `seqs rise: ${seqs}`,
    );
    // PENDING, RUNNING, one per step, COMPLETED: every seq from 1, none missing.
    check(seqs.join() === Array.from({ length: STEPS + 3 }, (_, i) => i + 1).join(), `every seq: ${seqs}`);
    const pcts = mine.map((e) => e.progress.percent);
    check(
      pcts.every((p, i) => i === 0 || p >= pcts[i - 1]),
      `percent never goes back: ${pcts}`,
    );
    return { task_id: ack.task_id, seqs, statuses: mine.map((e) => e.status), result: final.result };
  } finally {
    socket.close();
  }
}

try {
  const refused = await refusedWithBadToken();
  const followed = await submitAndFollow();
  console.log(JSON.stringify({ ok: true, refused, ...followed }));
  process.exit(0);
} catch (err) {
  console.error(err?.stack || String(err));
  process.exit(1);
}
