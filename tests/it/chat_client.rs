//! The real chat client (`useAgentChat` from `@cloudflare/ai-chat@0.12.2` under React in Node,
//! tests/js/chat_client.mjs, installed by `.ci/run` into tests/js/node_modules) against
//! `denizen serve`'s `chat-agent`, with a scripted OpenAI-compatible model: history, a streamed
//! answer followed live by a second tab, a server tool, a client tool, approval and denial, a
//! resume after a dropped socket, stop, a model error, clear, and a server restart mid-stream.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use denizen_test_util::openai::{Gate, Reply, ScriptedModel, SseEvent};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::support::Server;

/// How long one scenario (or one of its steps) may take at most.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(50);

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// A scripted model and a server whose `chat-agent` calls it.
async fn start() -> (ScriptedModel, Server, tempfile::TempDir) {
    let model = ScriptedModel::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--llm-url", &model.base_url()]);
    (model, server, dir)
}

/// One run of tests/js/chat_client.mjs: reads its event lines, answers `go`, and returns its
/// JSON summary.
struct Scenario {
    name: String,
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: tokio::task::JoinHandle<String>,
}

impl Scenario {
    fn start(scenario: &str, server: &Server, agent: &str, argument: Option<&str>) -> Scenario {
        let dir = js_dir();
        assert!(
            dir.join("node_modules/@cloudflare/ai-chat/package.json")
                .exists(),
            "the JS chat client is not installed: run `npm ci` in tests/js (.ci/run does it)"
        );
        let mut cmd = Command::new("node");
        cmd.current_dir(&dir)
            .arg("chat_client.mjs")
            .arg(scenario)
            .arg(&server.addr)
            .arg(agent)
            .args(argument)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .expect("node must be installed (Node 20 or newer) to run the JS client tests");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stderr = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        Scenario {
            name: scenario.to_string(),
            child,
            stdin,
            stdout,
            stderr,
        }
    }

    /// Waits for the scenario to print `{"event": event}` (the client reached that point).
    async fn event(&mut self, event: &str) -> Value {
        loop {
            let line = tokio::time::timeout(SCENARIO_TIMEOUT, self.stdout.next_line())
                .await
                .unwrap_or_else(|_| panic!("{}: timed out waiting for {event}", self.name))
                .unwrap();
            let Some(line) = line else {
                let status = self.child.wait().await.unwrap();
                let stderr = (&mut self.stderr).await.unwrap();
                panic!("{}: ended ({status}) before {event}:\n{stderr}", self.name);
            };
            if let Ok(value) = serde_json::from_str::<Value>(&line)
                && value["event"] == event
            {
                return value;
            }
        }
    }

    /// Lets the scenario go on after an event.
    async fn go(&mut self) {
        self.stdin.write_all(b"go\n").await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Waits for the scenario to end and returns its summary; fails with its stderr.
    async fn finish(mut self) -> Value {
        let mut last = String::new();
        let read = async {
            while let Some(line) = self.stdout.next_line().await.unwrap() {
                last = line;
            }
            self.child.wait().await.unwrap()
        };
        let status = tokio::time::timeout(SCENARIO_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| panic!("{}: timed out", self.name));
        let stderr = self.stderr.await.unwrap();
        assert!(
            status.success(),
            "scenario {} failed:\n{stderr}\n{last}",
            self.name
        );
        serde_json::from_str(&last)
            .unwrap_or_else(|e| panic!("scenario {} printed {last:?}: {e}", self.name))
    }
}

/// The scenario from start to end, for those that need nothing from the test meanwhile.
async fn run(scenario: &str, server: &Server, agent: &str, argument: Option<&str>) -> Value {
    Scenario::start(scenario, server, agent, argument)
        .finish()
        .await
}

/// The chat messages of model request `i`.
fn request_messages(model: &ScriptedModel, i: usize) -> Vec<Value> {
    model.requests()[i].body["messages"]
        .as_array()
        .unwrap()
        .clone()
}

/// A model call that asks for one tool call, in two fragments.
fn tool_call(id: &str, name: &str, args: &str) -> Reply {
    let (first, rest) = args.split_at(args.len() / 2);
    Reply::Sse(vec![
        SseEvent::role(),
        SseEvent::tool_call_start(0, id, name, first),
        SseEvent::tool_call_args(0, rest),
        SseEvent::finish("tool_calls"),
        SseEvent::usage(20, 8),
        SseEvent::Done,
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_reaches_both_tabs_live_and_a_reload_finds_it() {
    let (model, server, _dir) = start().await;
    let gate = Gate::new();
    model.push(Reply::Sse(vec![
        SseEvent::role(),
        SseEvent::text("Hel"),
        SseEvent::Wait(gate.clone()),
        SseEvent::text("lo"),
        SseEvent::text(" world"),
        SseEvent::finish("stop"),
        SseEvent::usage(10, 3),
        SseEvent::Done,
    ]));
    let mut scenario = Scenario::start("stream", &server, "stream", None);
    scenario.event("partial").await;
    gate.open();
    scenario.go().await;
    let out = scenario.finish().await;
    assert_eq!(out["messages"][1]["text"], "Hello world");

    assert_eq!(model.requests().len(), 1);
    let sent = request_messages(&model, 0);
    assert_eq!(sent[0]["role"], "system");
    assert_eq!(
        sent.last().unwrap(),
        &json!({"role": "user", "content": "hi"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_tool_runs_and_the_model_answers_with_its_result() {
    let (model, server, _dir) = start().await;
    model.push(tool_call(
        "call_calc",
        "calculate",
        r#"{"a":6,"op":"*","b":7}"#,
    ));
    model.push(Reply::text(&["The answer ", "is 42."]));
    let out = run("server-tool", &server, "server-tool", None).await;
    assert_eq!(out["messages"][1]["tools"][0]["output"], 42);

    assert_eq!(model.requests().len(), 2);
    let second = request_messages(&model, 1);
    let result = second.last().unwrap();
    assert_eq!(result["role"], "tool");
    assert_eq!(result["tool_call_id"], "call_calc");
    assert_eq!(
        result["content"].as_str().unwrap().parse::<f64>().unwrap(),
        42.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_tool_result_continues_the_turn() {
    let (model, server, _dir) = start().await;
    model.push(tool_call("call_loc", "getLocation", "{}"));
    model.push(Reply::text(&["You are ", "in Paris."]));
    let out = run("client-tool", &server, "client-tool", None).await;
    assert_eq!(out["calls"], 1);

    // The client's tool was offered to the model, and its result reached the model.
    let tools = model.requests()[0].body["tools"].clone();
    let names: Vec<&str> = tools
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"getLocation"), "{names:?}");
    assert_eq!(model.requests().len(), 2);
    let second = request_messages(&model, 1);
    let result = second.last().unwrap();
    assert_eq!(result["role"], "tool");
    assert_eq!(result["tool_call_id"], "call_loc");
    let output: Value = serde_json::from_str(result["content"].as_str().unwrap()).unwrap();
    assert_eq!(output, json!({"city": "Paris"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_tool_runs_and_the_turn_continues() {
    let (model, server, _dir) = start().await;
    model.push(tool_call(
        "call_dice",
        "roll_dice",
        r#"{"count":2,"sides":6}"#,
    ));
    model.push(Reply::text(&["You ", "rolled."]));
    run("approval", &server, "approved", Some("approve")).await;

    assert_eq!(model.requests().len(), 2);
    let second = request_messages(&model, 1);
    let result = second.last().unwrap();
    assert_eq!(result["tool_call_id"], "call_dice");
    let dice: Vec<u32> = serde_json::from_str(result["content"].as_str().unwrap()).unwrap();
    assert_eq!(dice.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_tool_does_not_run_and_the_model_is_told() {
    let (model, server, _dir) = start().await;
    model.push(tool_call(
        "call_dice",
        "roll_dice",
        r#"{"count":2,"sides":6}"#,
    ));
    model.push(Reply::text(&["Okay, ", "no dice."]));
    run("approval", &server, "denied", Some("deny")).await;

    assert_eq!(model.requests().len(), 2);
    let second = request_messages(&model, 1);
    let result = second.last().unwrap();
    assert_eq!(result["tool_call_id"], "call_dice");
    assert_eq!(result["content"], "Tool call execution denied.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_dropped_mid_stream_resumes_to_the_full_message() {
    let (model, server, _dir) = start().await;
    let gate = Gate::new();
    model.push(Reply::Sse(vec![
        SseEvent::role(),
        SseEvent::text("Hel"),
        SseEvent::Wait(gate.clone()),
        SseEvent::text("lo"),
        SseEvent::text(" again"),
        SseEvent::finish("stop"),
        SseEvent::usage(10, 3),
        SseEvent::Done,
    ]));
    let mut scenario = Scenario::start("resume", &server, "resume", None);
    scenario.event("reattached").await;
    gate.open();
    scenario.go().await;
    let out = scenario.finish().await;
    assert_eq!(out["messages"][1]["text"], "Hello again");
    assert_eq!(
        model.requests().len(),
        1,
        "the reconnect did not start a new turn"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_cancels_the_turn_and_keeps_the_partial_answer() {
    let (model, server, _dir) = start().await;
    model.push(Reply::Sse(vec![
        SseEvent::role(),
        SseEvent::text("Once "),
        SseEvent::text("upon"),
        SseEvent::Hang,
    ]));
    run("stop", &server, "stop", None).await;
    denizen_test_util::eventually(
        "the model request is dropped",
        Duration::from_secs(10),
        || model.streams_dropped() == 1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_error_fails_the_turn_and_the_next_one_works() {
    let (model, server, _dir) = start().await;
    // 400 is not retried.
    model.push(Reply::Status {
        status: 400,
        body: "the prompt is too long".into(),
        retry_after: None,
    });
    model.push(Reply::text(&["Back ", "again."]));
    let out = run("model-error", &server, "model-error", None).await;
    assert!(!out["error"].as_str().unwrap().is_empty());
    assert_eq!(model.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_empties_every_tab_and_the_server() {
    let (model, server, _dir) = start().await;
    model.push(Reply::text(&["Noted."]));
    run("clear", &server, "clear", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_stream_leaves_the_partial_message_and_an_aborted_stream() {
    let (model, mut server, _dir) = start().await;
    model.push(Reply::Sse(vec![
        SseEvent::role(),
        SseEvent::text("Part"),
        SseEvent::text("ial"),
        SseEvent::Hang,
    ]));
    let mut before = Scenario::start("restart-before", &server, "restart", None);
    before.event("partial").await;
    server.kill();
    before.go().await;
    before.finish().await;

    server.restart();
    let after = run("restart-after", &server, "restart", None).await;
    assert_eq!(after["turnEnds"][0]["outcome"], "aborted");
    assert_eq!(
        model.requests().len(),
        1,
        "the restart did not run the model again"
    );
}
