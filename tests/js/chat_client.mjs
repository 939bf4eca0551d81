// Drives the real chat client (`useAgent` + `useAgentChat` from `@cloudflare/ai-chat/react`,
// pinned in package.json) under React in Node, with react-test-renderer and no DOM, against a
// running denizen server's `chat-agent`. Called by tests/it/chat_client.rs:
//
//   node chat_client.mjs <scenario> <host:port> <agent name> [argument]
//
// Each tab is one renderer of a component calling the hooks; the test reads the hook's latest
// value and polls it. A scenario prints `{"event":…}` lines when it needs the Rust test to act
// (open a model gate, kill the server) and then waits for a `go` line on stdin; its last stdout
// line is its JSON summary. Exits non-zero with the failed assertion (and each tab's frames) on
// stderr.
import assert from "node:assert/strict";
import readline from "node:readline";
import { Suspense, createElement as h } from "react";
import TestRenderer from "react-test-renderer";
import WebSocket from "ws";
import { useAgent } from "agents/react";
import { useAgentChat } from "@cloudflare/ai-chat/react";

// `ws` emits the frames of one read back to back, with no microtask checkpoint between them
// (a browser runs one task per frame); the hook relies on the browser's order, so this socket
// re-emits its events one per `setImmediate` (chat-protocol.md §13).
class PacedWebSocket extends WebSocket {
  #queue = [];
  #draining = false;
  emit(event, ...args) {
    if (!["open", "message", "close", "error"].includes(event)) return super.emit(event, ...args);
    this.#queue.push(() => super.emit(event, ...args));
    if (!this.#draining) {
      this.#draining = true;
      setImmediate(() => this.#drain());
    }
    return true;
  }
  #drain() {
    const next = this.#queue.shift();
    if (next) next();
    if (this.#queue.length > 0) setImmediate(() => this.#drain());
    else this.#draining = false;
  }
  send(data, ...rest) {
    // Each tab's socket carries its own `_pk`.
    for (const tab of tabs) if (tab.agent && this.url.includes(`_pk=${tab.agent.id}`)) tab.sent.push(String(data));
    return super.send(data, ...rest);
  }
}
globalThis.WebSocket = PacedWebSocket;
const watched = new WeakSet();

const [scenario, host, name, argument] = process.argv.slice(2);

const stdin = readline.createInterface({ input: process.stdin });
const stdinLines = stdin[Symbol.asyncIterator]();

/** Tells the Rust test something happened, and waits for its `go`. */
async function signal(event, data = {}) {
  console.log(JSON.stringify({ event, ...data }));
  const { value, done } = await stdinLines.next();
  if (done || value.trim() !== "go") throw new Error(`expected go after ${event}, got ${value}`);
}

async function until(what, cond, ms = 15000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const tabs = []; // open tabs
const allTabs = []; // every tab opened, for the dump on failure

/** One browser tab: a renderer of `useAgent` + `useAgentChat` on this agent. */
function openTab(label, chatOptions = {}, agentName = name) {
  const tab = {
    label,
    chat: null,
    agent: null,
    frames: [], // every frame received, parsed
    sent: [], // every frame sent, raw
    turnEnds: [],
    seen: [], // a trace of (status, last assistant text) as the tab rendered them
    renderer: null,
  };
  function Chat() {
    const agent = useAgent({ agent: "ChatAgent", name: agentName, host, WebSocket: PacedWebSocket });
    if (!watched.has(agent)) {
      watched.add(agent);
      agent.addEventListener("message", (e) => {
        try {
          tab.frames.push(JSON.parse(e.data));
        } catch {
          tab.frames.push(e.data);
        }
      });
    }
    tab.agent = agent;
    const chat = useAgentChat({
      agent,
      onTurnEnd: (event) => tab.turnEnds.push(event),
      ...chatOptions,
    });
    tab.agent = agent;
    tab.chat = chat;
    const entry = `${chat.status}|${chat.isServerStreaming}|${lastAssistantText(chat.messages)}`;
    if (tab.seen[tab.seen.length - 1] !== entry) tab.seen.push(entry);
    return null;
  }
  tab.renderer = TestRenderer.create(h(Suspense, { fallback: null }, h(Chat)));
  tabs.push(tab);
  allTabs.push(tab);
  return tab;
}

/** Waits until the tab's socket is open and its hook has loaded the history. */
async function ready(tab) {
  await until(
    `${tab.label} connected`,
    () => tab.chat !== null && tab.agent?.readyState === 1 && tab.agent.identified,
  );
  // The hook probes for a running stream on mount; let that settle.
  await until(`${tab.label} idle`, () => !tab.chat.isServerStreaming && tab.chat.status === "ready");
}

/** Unmounts the tab, and lets React run its effect cleanups (which release the hook's
 * module-level cache of the history, so that the next tab fetches it again). */
async function closeTab(tab) {
  tab.renderer.unmount();
  tabs.splice(tabs.indexOf(tab), 1);
  for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
}

// Counts the hook's history fetches, so a reload can check it really fetched.
let historyFetches = 0;
const realFetch = globalThis.fetch;
globalThis.fetch = (url, ...rest) => {
  if (String(url).endsWith("/get-messages")) historyFetches++;
  return realFetch(url, ...rest);
};

const textOf = (message) =>
  message.parts
    .filter((p) => p.type === "text")
    .map((p) => p.text)
    .join("");
const assistants = (messages) => messages.filter((m) => m.role === "assistant");
function lastAssistantText(messages) {
  const last = assistants(messages).at(-1);
  return last ? textOf(last) : "";
}
const toolParts = (message) => message.parts.filter((p) => p.type.startsWith("tool-"));
/** A transcript as the test compares it: role, text and tool parts' state. */
const summary = (messages) =>
  messages.map((m) => ({
    id: m.id,
    role: m.role,
    text: textOf(m),
    tools: toolParts(m).map((p) => ({ type: p.type, state: p.state, output: p.output })),
  }));

async function getMessages(agentName = name) {
  const res = await fetch(`http://${host}/agents/chat-agent/${agentName}/get-messages`);
  assert.equal(res.status, 200);
  return res.json();
}

/** Sends a user message from `tab` and waits until its turn ended (status back to ready/error). */
async function send(tab, text) {
  const before = tab.turnEnds.length;
  tab.chat.sendMessage({ text });
  await until(`${tab.label}: the turn of ${JSON.stringify(text)} ends`, () => tab.turnEnds.length > before);
  await until(`${tab.label}: status settles`, () => ["ready", "error"].includes(tab.chat.status));
  return tab.turnEnds.at(-1);
}

/** A fresh tab must load the same transcript over HTTP (a reload). */
async function reloadMatches(expected) {
  const fetches = historyFetches;
  const tab = openTab("reloaded");
  await ready(tab);
  assert.ok(historyFetches > fetches, "harness: the reloaded tab fetched the history (not a cached copy)");
  assert.deepEqual(summary(tab.chat.messages), summary(expected), "a reload shows the same transcript");
  await closeTab(tab);
  assert.deepEqual(summary(await getMessages()), summary(expected), "get-messages has it");
}

// ---------------------------------------------------------------------------------------------

/** A streamed answer, a second tab following it live, then a reload finding both messages. */
async function stream() {
  const a = openTab("a");
  const b = openTab("b");
  await ready(a);
  await ready(b);
  assert.deepEqual(a.chat.messages, [], "a new conversation is empty");

  a.chat.sendMessage({ text: "hi" });
  // The model sent "Hel" and waits at a gate: both tabs show the partial answer.
  await until("a streams the partial answer", () => lastAssistantText(a.chat.messages) === "Hel");
  assert.equal(a.chat.status, "streaming");
  await until("b renders the stream live", () => lastAssistantText(b.chat.messages) === "Hel");
  assert.equal(b.chat.isServerStreaming, true, "b knows the server is streaming");
  await signal("partial");

  await until("a's turn ends", () => a.turnEnds.length === 1 && a.chat.status === "ready");
  assert.equal(a.turnEnds[0].outcome, "completed");
  assert.equal(lastAssistantText(a.chat.messages), "Hello world");
  await until("b has the final message", () => !b.chat.isServerStreaming && lastAssistantText(b.chat.messages) === "Hello world");
  assert.deepEqual(summary(b.chat.messages), summary(a.chat.messages), "both tabs show the same transcript");
  assert.equal(a.chat.messages.length, 2);
  assert.equal(a.chat.messages[0].role, "user");
  assert.equal(textOf(a.chat.messages[0]), "hi");
  assert.equal(a.chat.messages[1].metadata?.finishReason, "stop");
  const live = a.frames.filter((f) => f.type === "cf_agent_use_chat_response" && !f.replay && !f.done);
  assert.ok(live.length >= 5, `a got the chunks live: ${JSON.stringify(live)}`);
  assert.ok(!b.sent.some((f) => f.includes("cf_agent_use_chat_request")), "b sent nothing");

  const transcript = a.chat.messages;
  await closeTab(a);
  await closeTab(b);
  await reloadMatches(transcript);
  return { messages: summary(transcript) };
}

/** `calculate` runs on the server; the model answers after its result. */
async function serverTool() {
  const a = openTab("a");
  await ready(a);
  const end = await send(a, "What is 6 times 7?");
  assert.equal(end.outcome, "completed", JSON.stringify(end));
  assert.equal(a.chat.status, "ready");
  const [reply] = assistants(a.chat.messages);
  assert.equal(assistants(a.chat.messages).length, 1, "one assistant message for the turn");
  const [part] = toolParts(reply);
  assert.equal(part.type, "tool-calculate");
  assert.equal(part.state, "output-available");
  assert.deepEqual(part.input, { a: 6, op: "*", b: 7 });
  assert.equal(part.output, 42);
  assert.equal(textOf(reply), "The answer is 42.");
  const transcript = a.chat.messages;
  await closeTab(a);
  await reloadMatches(transcript);
  return { messages: summary(transcript) };
}

/** A tool the client declares and runs (`onToolCall` → `addToolOutput`); the server continues. */
async function clientTool() {
  const calls = [];
  const a = openTab("a", {
    tools: {
      getLocation: {
        description: "Where the user is",
        parameters: { type: "object", properties: {} },
        // Declares the tool to the server; onToolCall answers it.
        execute: async () => ({ city: "Paris" }),
      },
    },
    onToolCall: async ({ toolCall, addToolOutput }) => {
      calls.push(toolCall);
      addToolOutput({ toolCallId: toolCall.toolCallId, output: { city: "Paris" } });
    },
  });
  await ready(a);
  a.chat.sendMessage({ text: "Where am I?" });
  await until("the client tool is called", () => calls.length === 1);
  assert.equal(calls[0].toolName, "getLocation");
  await until(
    "the continuation's answer",
    () => lastAssistantText(a.chat.messages) === "You are in Paris." && a.chat.status === "ready" && !a.chat.isServerStreaming,
  );
  const replies = assistants(a.chat.messages);
  assert.equal(replies.length, 1, `the continuation extends the tool call's message: ${JSON.stringify(summary(a.chat.messages))}`);
  const [part] = toolParts(replies[0]);
  assert.equal(part.state, "output-available");
  assert.deepEqual(part.output, { city: "Paris" });
  const result = a.sent.map((f) => JSON.parse(f)).find((f) => f.type === "cf_agent_tool_result");
  assert.equal(result.autoContinue, true);
  const transcript = a.chat.messages;
  await closeTab(a);
  await reloadMatches(transcript);
  return { messages: summary(transcript), calls: calls.length };
}

/** `roll_dice` needs approval: the user approves (argument `approve`) or denies (`deny`). */
async function approval() {
  const approved = argument === "approve";
  const a = openTab("a");
  await ready(a);
  const first = await send(a, "Roll two dice");
  assert.equal(first.outcome, "completed", JSON.stringify(first));
  const [part] = toolParts(assistants(a.chat.messages)[0]);
  assert.equal(part.type, "tool-roll_dice");
  assert.equal(part.state, "approval-requested");
  assert.deepEqual(part.input, { count: 2, sides: 6 });
  assert.deepEqual(summary(await getMessages()), summary(a.chat.messages), "the approval request is persisted");
  a.chat.addToolApprovalResponse({ id: part.approval.id, approved });
  const expected = approved ? "You rolled." : "Okay, no dice.";
  await until(
    "the continuation's answer",
    () => lastAssistantText(a.chat.messages) === expected && a.chat.status === "ready" && !a.chat.isServerStreaming,
  );
  const replies = assistants(a.chat.messages);
  assert.equal(replies.length, 1, `the continuation extends the approval's message: ${JSON.stringify(summary(a.chat.messages))}`);
  const [after] = toolParts(replies[0]);
  if (approved) {
    assert.equal(after.state, "output-available");
    assert.equal(after.output.length, 2);
    for (const die of after.output) assert.ok(die >= 1 && die <= 6, `a die of 6 sides: ${die}`);
  } else {
    assert.equal(after.state, "output-denied");
  }
  const sent = a.sent.map((f) => JSON.parse(f)).find((f) => f.type === "cf_agent_tool_approval");
  assert.deepEqual(sent, { type: "cf_agent_tool_approval", toolCallId: "call_dice", approved, autoContinue: true });
  const transcript = a.chat.messages;
  await closeTab(a);
  await reloadMatches(transcript);
  return { messages: summary(transcript) };
}

/** The socket drops mid-stream; the hook reconnects, re-attaches and shows the whole message. */
async function resume() {
  const a = openTab("a");
  await ready(a);
  a.chat.sendMessage({ text: "Say hello" });
  await until("the partial answer", () => lastAssistantText(a.chat.messages) === "Hel");
  const requestId = JSON.parse(a.sent.find((f) => f.includes("cf_agent_use_chat_request"))).id;
  const before = a.frames.length;
  a.agent.reconnect();
  await until(
    "the replay after the reconnect",
    () => a.frames.slice(before).some((f) => f.type === "cf_agent_use_chat_response" && f.replayComplete),
  );
  const resumed = a.frames.slice(before);
  assert.ok(
    resumed.some((f) => f.type === "cf_agent_stream_resuming" && f.id === requestId),
    `offered the running stream: ${JSON.stringify(resumed)}`,
  );
  assert.ok(a.sent.some((f) => f.includes("cf_agent_stream_resume_ack")), "the client ACKed");
  await signal("reattached");
  await until(
    "the full message",
    () => lastAssistantText(a.chat.messages) === "Hello again" && !a.chat.isServerStreaming && a.chat.status !== "streaming",
  );
  assert.equal(assistants(a.chat.messages).length, 1, `one assistant message: ${JSON.stringify(summary(a.chat.messages))}`);
  const transcript = a.chat.messages;
  await closeTab(a);
  await reloadMatches(transcript);
  return { messages: summary(transcript), trace: a.seen };
}

/** `stop()` mid-stream: the turn ends aborted and the partial answer is kept. */
async function stop() {
  const a = openTab("a");
  await ready(a);
  a.chat.sendMessage({ text: "Tell me a long story" });
  await until("the partial answer", () => lastAssistantText(a.chat.messages) === "Once upon");
  a.chat.stop();
  await until("the turn ends", () => a.chat.status === "ready");
  const cancel = a.sent.map((f) => JSON.parse(f)).find((f) => f.type === "cf_agent_chat_request_cancel");
  assert.ok(cancel, "stop() sent the cancel frame");
  await until("the aborted terminal frame", () =>
    a.frames.some((f) => f.type === "cf_agent_use_chat_response" && f.done && f.id === cancel.id),
  );
  const done = a.frames.find((f) => f.type === "cf_agent_use_chat_response" && f.done && f.id === cancel.id);
  assert.equal(done.outcome, "aborted", JSON.stringify(done));
  assert.equal(lastAssistantText(a.chat.messages), "Once upon");
  // The partial answer is persisted.
  const stored = await getMessages();
  assert.equal(lastAssistantText(stored), "Once upon", JSON.stringify(stored));
  const transcript = a.chat.messages;
  await closeTab(a);
  await reloadMatches(transcript);
  return { messages: summary(transcript) };
}

/** The model fails: the hook's status is `error`; the next message works again. */
async function modelError() {
  const a = openTab("a");
  await ready(a);
  const failed = await send(a, "hello?");
  assert.equal(a.chat.status, "error");
  assert.ok(a.chat.error?.message, "the hook has the error");
  assert.equal(failed.outcome, "error", JSON.stringify(failed));
  const errorFrame = a.frames.find((f) => f.type === "cf_agent_use_chat_response" && f.error);
  assert.ok(errorFrame, `an error frame: ${JSON.stringify(a.frames)}`);
  const error = a.chat.error.message;
  const ok = await send(a, "try again");
  assert.equal(ok.outcome, "completed", JSON.stringify(ok));
  assert.equal(a.chat.status, "ready");
  assert.equal(a.chat.error, undefined);
  assert.equal(lastAssistantText(a.chat.messages), "Back again.");
  const transcript = a.chat.messages;
  await closeTab(a);
  await reloadMatches(transcript);
  return { error, messages: summary(transcript) };
}

/** `clearHistory()` empties the transcript in every tab and on the server. */
async function clear() {
  const a = openTab("a");
  const b = openTab("b");
  await ready(a);
  await ready(b);
  await send(a, "remember this");
  await until("b has the answer", () => lastAssistantText(b.chat.messages) === "Noted.");
  assert.equal((await getMessages()).length, 2);
  a.chat.clearHistory();
  await until("a is empty", () => a.chat.messages.length === 0);
  await until("b is empty", () => b.chat.messages.length === 0);
  assert.ok(b.frames.some((f) => f.type === "cf_agent_chat_clear"), "b was told");
  assert.deepEqual(await getMessages(), []);
  await closeTab(a);
  await closeTab(b);
  await reloadMatches([]);
  return { cleared: true };
}

/** Before a server restart: a turn streams, the test SIGKILLs the server mid-stream. */
async function restartBefore() {
  const a = openTab("a");
  await ready(a);
  a.chat.sendMessage({ text: "Tell me about restarts" });
  await until("the partial answer", () => lastAssistantText(a.chat.messages) === "Partial");
  await signal("partial");
  // The server is gone: the local stream ends.
  await until("the hook notices", () => a.chat.status !== "streaming" && a.chat.status !== "submitted");
  return { status: a.chat.status, error: a.chat.error?.message ?? null, trace: a.seen };
}

/** After the restart: the tab (re)connects, is offered the dead stream, and it ends aborted. */
async function restartAfter() {
  const a = openTab("a");
  await until("the stream ends", () => a.turnEnds.length > 0, 15000);
  await ready(a);
  assert.equal(a.turnEnds[0].outcome, "aborted", JSON.stringify(a.turnEnds));
  assert.equal(lastAssistantText(a.chat.messages), "Partial");
  assert.equal(assistants(a.chat.messages).length, 1, JSON.stringify(summary(a.chat.messages)));
  const transcript = a.chat.messages;
  await closeTab(a);
  await reloadMatches(transcript);
  return { messages: summary(transcript), turnEnds: a.turnEnds };
}

const scenarios = {
  stream,
  "server-tool": serverTool,
  "client-tool": clientTool,
  approval,
  resume,
  stop,
  "model-error": modelError,
  clear,
  "restart-before": restartBefore,
  "restart-after": restartAfter,
};
const deadline = (ms) =>
  new Promise((_, reject) => setTimeout(() => reject(new Error(`scenario ${scenario} timed out`)), ms).unref());
function dumpTabs(tabs) {
  for (const tab of tabs) {
    console.error(`--- ${tab.label}: status ${tab.chat?.status}, error ${tab.chat?.error?.message}`);
    console.error(`messages: ${JSON.stringify(tab.chat?.messages)}`);
    console.error(`trace: ${JSON.stringify(tab.seen)}`);
    console.error(`sent: ${tab.sent.join("\n      ")}`);
    console.error(`received: ${tab.frames.map((f) => JSON.stringify(f)).join("\n          ")}`);
  }
}
try {
  if (!scenarios[scenario]) throw new Error(`unknown scenario ${scenario}`);
  const out = await Promise.race([scenarios[scenario](), deadline(45000)]);
  // CHAT_CLIENT_TRACE=1 shows every tab's frames after a passing run too.
  if (process.env.CHAT_CLIENT_TRACE) dumpTabs(allTabs);
  console.log(JSON.stringify({ ok: true, ...out }));
  process.exit(0);
} catch (e) {
  console.error(e?.stack ?? String(e));
  dumpTabs(allTabs);
  process.exit(1);
}
