// Talks to one user's agent of examples/user-agent.rs with Cloudflare's `agents` client:
//
//   npm install agents@0.32.0 ws@8
//   node examples/user-agent.mjs 127.0.0.1:8787 ada
//
// It prints every state it is sent, adds a note, asks for a reminder in a second and waits for
// it to arrive in the state.
import WebSocket from "ws";
import { AgentClient } from "agents/client";

// Node 20 has no WebSocket of its own; Node 22 and browsers do.
globalThis.WebSocket ??= WebSocket;

const [host = "127.0.0.1:8787", name = "ada"] = process.argv.slice(2);

let reminded;
const reminder = new Promise((resolve) => (reminded = resolve));
const agent = new AgentClient({
  agent: "UserAgent",
  name,
  host,
  onStateUpdate: (state) => {
    console.log("state", JSON.stringify(state));
    if (state.notes.some((note) => note.startsWith("reminder:"))) reminded();
  },
});

console.log("addNote ->", await agent.call("addNote", ["buy milk"]));
console.log("remindIn ->", await agent.call("remindIn", [1, "stand up"]));
await reminder;
agent.close();
