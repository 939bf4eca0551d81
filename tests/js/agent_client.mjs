// Drives the official `agents` JavaScript client (AgentClient, pinned in package.json) against a
// running denizen server. Called by tests/it/agents_js.rs:
//
//   node agent_client.mjs <phase> <host:port> <agent name> [expected count]
//
// Phases: `basic` (state sync, RPC, streaming, errors), `hibernate` (calls and a reconnect after
// the agent hibernated; the server runs with a short idle timeout), `restart` (state after a
// server restart). Exits non-zero with the failed assertion on stderr; prints one JSON line.
import assert from "node:assert/strict";
import WebSocket from "ws";
import { AgentClient } from "agents/client";

// Node 20 has no global WebSocket; partysocket takes the `ws` implementation as an option too.
globalThis.WebSocket ??= WebSocket;

const [phase, host, name, expected] = process.argv.slice(2);
const deadline = (ms, what) =>
  new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), ms).unref());

function client(extra = {}) {
  const updates = [];
  const errors = [];
  const messages = [];
  const c = new AgentClient({
    agent: "CounterAgent",
    name,
    host,
    WebSocket,
    onStateUpdate: (state, source) => updates.push({ state, source }),
    onStateUpdateError: (error) => errors.push(error),
    ...extra,
  });
  c.addEventListener("message", (event) => {
    try {
      messages.push(JSON.parse(event.data));
    } catch {
      messages.push(event.data);
    }
  });
  return { c, updates, errors, messages };
}

async function until(what, cond, ms = 10000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function ready(c) {
  await Promise.race([c.ready, deadline(10000, "client ready")]);
}

async function liveObjects() {
  const text = await (await fetch(`http://${host}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith("denizen_live_objects "));
  return Number(line.split(" ")[1]);
}

async function basic() {
  const a = client();
  const b = client();
  await ready(a.c);
  await ready(b.c);
  assert.equal(a.c.identified, true);
  assert.deepEqual(a.c.state, { count: 0 }, "initial state");
  assert.deepEqual(b.c.state, { count: 0 });

  // A client's state change reaches the other client and is not echoed to the sender.
  const aServerUpdates = () => a.updates.filter((u) => u.source === "server").length;
  const before = aServerUpdates();
  a.c.setState({ count: 10 });
  await until("b sees a's state", () => b.c.state?.count === 10);

  // A server-side change reaches the caller before the RPC reply.
  const result = await a.c.call("increment", [5]);
  assert.equal(result, 15);
  assert.deepEqual(a.c.state, { count: 15 }, "state frame arrived before the reply");
  const echoed = a.updates.slice(0).filter((u) => u.source === "server" && u.state.count === 10);
  assert.equal(echoed.length, 0, "a's own state change was echoed back to it");
  assert.equal(aServerUpdates(), before + 1, "a got exactly the increment's state frame");
  await until("b sees the increment", () => b.c.state?.count === 15);

  // Streaming: chunks, then the final value.
  const chunks = [];
  let done;
  const final = await a.c.call("count_to", [3], {
    stream: {
      onChunk: (chunk) => chunks.push(chunk),
      onDone: (value) => (done = value),
      onError: (error) => assert.fail(`stream error: ${error}`),
    },
  });
  assert.deepEqual(chunks, [1, 2, 3]);
  assert.deepEqual(final, { count: 15 });
  assert.deepEqual(done, { count: 15 });

  // Errors: an unknown method, a task (not callable), a failing method, bad arguments.
  await assert.rejects(a.c.call("nope", []), { message: "Method nope does not exist" });
  await assert.rejects(a.c.call("tick", []), { message: "Method tick is not callable" });
  await assert.rejects(a.c.call("fail", ["boom"]), { message: "boom" });
  await assert.rejects(a.c.call("increment", ["five"]), /invalid arguments/);

  // A state change the agent refuses.
  a.c.setState({ count: -1 });
  await until("state error", () => a.errors.length === 1);
  assert.equal(a.errors[0], "State update rejected");

  // Garbage gets an error frame and the connection stays usable.
  a.c.send("this is not json");
  await until("error frame", () => a.messages.some((m) => m?.type === "cf_agent_error"));
  assert.equal(await a.c.call("increment", [0]), 15, "the server kept the rejected state out");
  assert.deepEqual(b.c.state, { count: 15 });

  a.c.close();
  b.c.close();
  return { count: 15 };
}

async function hibernate() {
  const a = client({ id: `client-${name}` });
  await ready(a.c);
  assert.deepEqual(a.c.state, { count: Number(expected) });
  const hibernated = async () => {
    const end = Date.now() + 15000;
    while ((await liveObjects()) !== 0) {
      if (Date.now() > end) throw new Error("timed out waiting for the agent to hibernate");
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  await hibernated();
  // The socket stayed open in the gateway: a call wakes the agent.
  assert.equal(await a.c.call("increment", [1]), Number(expected) + 1);
  await hibernated();
  // A reconnect of the same client (same _pk) while the agent sleeps gets the full handshake.
  const identities = [];
  a.c.addEventListener("message", (e) => {
    const m = JSON.parse(e.data);
    if (m.type === "cf_agent_identity") identities.push(m);
  });
  a.c.reconnect();
  await until("identity after reconnect", () => identities.length === 1);
  await ready(a.c);
  assert.deepEqual(identities[0], {
    type: "cf_agent_identity",
    name,
    agent: "counter-agent",
    stateFollows: true,
  });
  assert.deepEqual(a.c.state, { count: Number(expected) + 1 });
  assert.equal(await a.c.call("increment", [1]), Number(expected) + 2);
  a.c.close();
  return { count: Number(expected) + 2 };
}

async function restart() {
  const a = client();
  await ready(a.c);
  assert.deepEqual(a.c.state, { count: Number(expected) }, "state after restart");
  // The ticking schedule was declared on every wake (several hibernations, a restart): still one.
  const schedules = await a.c.call("schedules", []);
  assert.deepEqual(schedules.map((s) => s.callback), ["tick"]);
  a.c.close();
  return { count: Number(expected) };
}

const phases = { basic, hibernate, restart };
try {
  if (!phases[phase]) throw new Error(`unknown phase ${phase}`);
  const out = await Promise.race([phases[phase](), deadline(60000, phase)]);
  console.log(JSON.stringify({ ok: true, ...out }));
  process.exit(0);
} catch (e) {
  console.error(e?.stack ?? String(e));
  process.exit(1);
}
