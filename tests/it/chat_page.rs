//! The `chat-agent` example: its route on a server without a model, and its chat page driven in
//! headless Chromium (Debian's `chromium`) through the DevTools protocol against a scripted
//! model: a streamed reply, Stop, a second tab following, a server tool, an approval, history
//! after a reload, Clear.
//!
//! Without `chromium` on the PATH the page test is skipped, unless `DENIZEN_REQUIRE_CHROMIUM` is
//! set (CI sets it), when it fails.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use denizen_test_util::openai::{Reply, ScriptedModel, SseEvent};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Server, Ws};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_agent_without_a_model_answers_503_saying_how_to_configure_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = reqwest::Client::new();

    for (method, path) in [
        ("GET", "/agents/chat-agent/ada/get-messages"),
        ("GET", "/agents/chat-agent/ada"),
        ("POST", "/agents/chat-agent/ada/anything"),
    ] {
        let resp = http
            .request(method.parse().unwrap(), server.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503, "{method} {path}");
        let body = resp.text().await.unwrap();
        assert!(
            body.contains("--llm-url") && body.contains("DENIZEN_LLM_URL"),
            "{method} {path}: {body}"
        );
    }
    match tokio_tungstenite::connect_async(server.ws_url("/agents/chat-agent/ada?_pk=p1")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default());
            assert!(body.contains("--llm-url"), "{body}");
        }
        other => panic!(
            "the upgrade should be refused with 503, got {:?}",
            other.map(|_| ())
        ),
    }
    // The other agents are still served, and the page still loads (and shows the 503's text).
    let resp = http
        .get(server.url("/agents/counter-agent/ada/get-messages"))
        .send()
        .await
        .unwrap();
    assert_ne!(resp.status(), 503);
    let page = http.get(server.url("/chat-agent/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_page_streams_stops_follows_runs_tools_approves_reloads_and_clears() {
    let model = ScriptedModel::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--llm-url", &model.base_url()]);
    let http = reqwest::Client::new();
    let page = http
        .get(server.url("/chat-agent/ada"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(page.headers().contains_key("content-security-policy"));
    let history = http
        .get(server.url("/agents/chat-agent/ada/get-messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(history.status(), 200);
    assert_eq!(history.json::<Value>().await.unwrap(), json!([]));

    let Some(chromium) = Chromium::start(dir.path()) else {
        return;
    };
    let mut page = chromium.page(&server.url("/chat-agent/ada")).await;
    page.wait_for(
        "the page to connect",
        "$('status').textContent === 'connected'",
    )
    .await;

    // A reply that streams two pieces and then hangs: the page shows them while the turn runs.
    model.push(Reply::Sse(vec![
        SseEvent::role(),
        SseEvent::text("Hel"),
        SseEvent::text("lo <b>there</b>"),
        SseEvent::Hang,
    ]));
    page.send("hi <i>you</i>").await;
    page.wait_for(
        "the streamed text while the turn still runs",
        "texts('assistant') === 'Hello <b>there</b>' && !$('stop').disabled",
    )
    .await;
    page.click("stop").await;
    page.wait_for(
        "the stopped turn to end",
        "!$('send').disabled && $('stop').disabled",
    )
    .await;
    let request = model.requests()[0].body.to_string();
    assert!(request.contains("hi <i>you</i>"), "{request}");

    // A second tab follows the next turn live.
    let mut other = chromium.page(&server.url("/chat-agent/ada")).await;
    other
        .wait_for(
            "the second tab to connect with the history",
            "$('status').textContent === 'connected' && texts('assistant') === 'Hello <b>there</b>'",
        )
        .await;

    // Text is shown as text: neither message made an element.
    let first = "Hello <b>there</b>";
    let second = "a <img src=x onerror=\"document.title='pwned'\"> b";
    model.push(Reply::text(&[
        "a <img src=x onerror=\"document.title='pwned'\">",
        " b",
    ]));
    page.send("again").await;
    page.wait_for(
        "the second reply",
        &format!(
            "texts('assistant') === {} && !$('send').disabled",
            json!(format!("{first}{second}"))
        ),
    )
    .await;
    assert_eq!(
        page.eval("document.querySelectorAll('#log b, #log i, #log img').length")
            .await,
        json!(0)
    );
    other
        .wait_for(
            "the second tab to show the turn",
            &format!(
                "texts('user') === 'hi <i>you</i>again' && texts('assistant') === {}",
                json!(format!("{first}{second}"))
            ),
        )
        .await;
    assert_eq!(
        page.eval("texts('user')").await,
        json!("hi <i>you</i>again")
    );

    // A server tool: its call and output show in the reply, before the model's answer.
    model.push(Reply::Sse(vec![
        SseEvent::role(),
        SseEvent::tool_call_start(0, "call_1", "calculate", "{\"a\":6,\"op\":\"*\",\"b\":7}"),
        SseEvent::finish("tool_calls"),
        SseEvent::Done,
    ]));
    model.push(Reply::text(&["It is 42."]));
    page.send("6 times 7?").await;
    page.wait_for(
        "the tool's output and the answer after it",
        "(() => { const last = [...document.querySelectorAll('#log .msg.assistant')].pop(); \
         const output = last.querySelector('.tool .output'); \
         return output !== null && output.textContent === '→ 42' \
         && last.querySelector('.text').textContent === 'It is 42.'; })() \
         && !$('send').disabled",
    )
    .await;

    // A tool that needs approval: Approve runs it, and the model's next answer continues the
    // same message.
    model.push(Reply::Sse(vec![
        SseEvent::role(),
        SseEvent::tool_call_start(0, "call_2", "roll_dice", "{\"count\":1,\"sides\":6}"),
        SseEvent::finish("tool_calls"),
        SseEvent::Done,
    ]));
    model.push(Reply::text(&["Rolled."]));
    page.send("roll a die").await;
    page.wait_for(
        "the approval request",
        "document.querySelector('#log button.approve') !== null && !$('send').disabled",
    )
    .await;
    page.eval("document.querySelector('#log button.approve').click()")
        .await;
    page.wait_for(
        "the approved tool's output and the continued answer",
        "(() => { const last = [...document.querySelectorAll('#log .msg.assistant')].pop(); \
         const tools = last.querySelectorAll('.tool'); \
         const text = last.querySelector('.text'); \
         return tools.length === 1 && tools[0].querySelector('.output') !== null \
         && text !== null && text.textContent === 'Rolled.'; })()",
    )
    .await;
    assert_eq!(
        page.eval("document.querySelectorAll('#log button.approve').length")
            .await,
        json!(0)
    );

    // A reload shows the same conversation, from the history route.
    page.eval("window.before_reload = true").await;
    page.cdp("Page.reload", json!({})).await;
    page.wait_for(
        "the history after a reload",
        &format!(
            "window.before_reload === undefined && $('status').textContent === 'connected' \
             && texts('user') === 'hi <i>you</i>again6 times 7?roll a die' && texts('assistant') === {}",
            json!(format!("{first}{second}It is 42.Rolled."))
        ),
    )
    .await;

    // Clear empties this tab, the other one and the history.
    page.click("clear").await;
    other
        .wait_for(
            "the other tab to clear",
            "document.querySelectorAll('#log .msg').length === 0",
        )
        .await;
    assert_eq!(
        page.eval("document.querySelectorAll('#log .msg').length")
            .await,
        json!(0)
    );
    let history: Value = http
        .get(server.url("/agents/chat-agent/ada/get-messages"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history, json!([]));
}

/// Headless Chromium on a temporary profile, killed with its whole process group when dropped
/// (a failing test included).
struct Chromium {
    child: Child,
    profile: tempfile::TempDir,
    port: u16,
}

impl Chromium {
    /// Starts it, or `None` (saying so) when it is not installed and not required.
    fn start(dir: &Path) -> Option<Chromium> {
        let Some(binary) = find_on_path("chromium") else {
            assert!(
                std::env::var_os("DENIZEN_REQUIRE_CHROMIUM").is_none(),
                "DENIZEN_REQUIRE_CHROMIUM is set but `chromium` is not on the PATH: \
                 install it (`apt-get install chromium`)"
            );
            eprintln!(
                "skipping the chat page test: `chromium` is not on the PATH \
                 (install it with `apt-get install chromium`; DENIZEN_REQUIRE_CHROMIUM=1 makes this a failure)"
            );
            return None;
        };
        let profile = tempfile::tempdir_in(dir).unwrap();
        let log = std::fs::File::create(profile.path().join("chromium.log")).unwrap();
        let mut command = Command::new(binary);
        command
            .args([
                "--headless",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-proxy-server",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // Its sandbox cannot start as root (containers, CI).
        if running_as_root() {
            command.arg("--no-sandbox");
        }
        // Its own process group, so that its helper processes go with it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().expect("start chromium");
        let mut chromium = Chromium {
            child,
            profile,
            port: 0,
        };
        chromium.port = chromium.debugging_port();
        Some(chromium)
    }

    /// The port it chose, from the `DevToolsActivePort` file it writes into its profile.
    fn debugging_port(&mut self) -> u16 {
        let file = self.profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + WAIT;
        loop {
            let port = std::fs::read_to_string(&file)
                .ok()
                .and_then(|s| s.lines().next()?.trim().parse().ok());
            if let Some(port) = port {
                return port;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("chromium exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "chromium wrote no DevToolsActivePort: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What it wrote on stderr, for failure messages.
    fn log(&self) -> String {
        let mut log = String::new();
        if let Ok(mut file) = std::fs::File::open(self.profile.path().join("chromium.log")) {
            let _ = file.read_to_string(&mut log);
        }
        log
    }

    /// A new tab showing `url`, loaded.
    async fn page(&self, url: &str) -> Page {
        // `PUT /json/new?<url>` opens a tab (Chromium refuses GET there).
        let target: Value = reqwest::Client::new()
            .put(format!("http://127.0.0.1:{}/json/new?{url}", self.port))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ws_url = target["webSocketDebuggerUrl"]
            .as_str()
            .unwrap_or_else(|| panic!("no webSocketDebuggerUrl in {target}"));
        let (ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
        let mut page = Page { ws, next_id: 0 };
        page.wait_for("the page to load", "$('status') !== null")
            .await;
        page
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // The group's id is chromium's pid (process_group(0)).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One tab, driven over its DevTools WebSocket.
struct Page {
    ws: Ws,
    next_id: u64,
}

/// Helpers the expressions use: `$(id)` and `texts(role)`, the text parts of every message of
/// a role, joined.
const HELPERS: &str = "const $ = (id) => document.getElementById(id); \
    const texts = (role) => [...document.querySelectorAll('#log .msg.' + role + ' .text')] \
    .map((e) => e.textContent).join('');";

impl Page {
    /// Sends a DevTools command and returns its result, skipping the events in between.
    async fn cdp(&mut self, method: &str, params: Value) -> Value {
        match self.try_cdp(method, params).await {
            Ok(result) => result,
            Err(error) => panic!("{method}: {error}"),
        }
    }

    /// A DevTools command's result, or its error.
    async fn try_cdp(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(Message::Text(command.to_string().into()))
            .await
            .unwrap();
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("the DevTools socket ended")
                .unwrap();
            let Message::Text(text) = frame else { continue };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == id {
                return match answer.get("error") {
                    Some(error) => Err(error.clone()),
                    None => Ok(answer["result"].clone()),
                };
            }
        }
    }

    /// The value of `expression` (with [`HELPERS`] in scope), evaluated in the page.
    async fn eval(&mut self, expression: &str) -> Value {
        match self.try_eval(expression).await {
            Ok(value) => value,
            Err(error) => panic!("{expression}: {error}"),
        }
    }

    /// The value of `expression`, or why it has none (it threw; the page was navigating).
    async fn try_eval(&mut self, expression: &str) -> Result<Value, Value> {
        let expression = format!("(() => {{ {HELPERS} return ({expression}); }})()");
        let params = json!({ "expression": expression, "returnByValue": true });
        let result = self.try_cdp("Runtime.evaluate", params).await?;
        match result.get("exceptionDetails") {
            Some(details) => Err(details.clone()),
            None => Ok(result["result"]["value"].clone()),
        }
    }

    /// Polls `condition` until it is true, failing with what the page shows after [`WAIT`].
    async fn wait_for(&mut self, what: &str, condition: &str) {
        let deadline = Instant::now() + WAIT;
        // A navigation may destroy the context mid-evaluation: that counts as not yet.
        while self.try_eval(condition).await != Ok(json!(true)) {
            if Instant::now() >= deadline {
                let shown = self.try_eval("document.body.innerText").await;
                panic!("timed out waiting for {what}; the page shows: {shown:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Clicks the element with this id.
    async fn click(&mut self, id: &str) {
        self.eval(&format!("$({}).click()", json!(id))).await;
    }

    /// Types `text` into the message box and sends it.
    async fn send(&mut self, text: &str) {
        self.eval(&format!(
            "(() => {{ $('input').value = {}; $('send').click(); }})()",
            json!(text)
        ))
        .await;
    }
}

/// `name` in one of the PATH's directories.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Whether this process runs as root (the owner of its /proc entry is its effective user).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
