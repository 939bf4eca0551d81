//! The agents layer in process: the wire protocol, read-only connections, state validation,
//! schedules (idempotent across wakes, cron re-arming, cancel, retries) and the queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use denizen_agents::{
    Agent, AgentBuilder, AgentContext, AgentHost, Call, Connect, ConnectInfo, Connection, Context,
    Failure, MAX_FAILURES, MAX_STATE_BYTES, Methods, Retry, Schedule, ScheduleOptions, Source,
};
use denizen_runtime::{
    Bytes, Error, Frame, Namespace, Outgoing, Result, Runtime, SocketHandle, Upgrade, http,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct State {
    value: i64,
}

/// Fails its first `flaky_failures` runs of the `flaky` task.
struct Probe {
    flaky_runs: Arc<AtomicUsize>,
    flaky_failures: usize,
}

impl Probe {
    async fn set(&mut self, cx: &mut Context<Self>, value: i64) -> Result<i64> {
        cx.set_state(&State { value })?;
        Ok(value)
    }

    async fn note(&mut self, cx: &mut Context<Self>, note: String) -> Result<()> {
        cx.sql("INSERT INTO log(note) VALUES (?)", (note.as_str(),))?;
        Ok(())
    }

    async fn flaky(&mut self, cx: &mut Context<Self>, note: String) -> Result<()> {
        // Written first, so a failure shows its rollback.
        cx.sql("INSERT INTO log(note) VALUES (?)", (note.as_str(),))?;
        let run = self.flaky_runs.fetch_add(1, Ordering::SeqCst);
        if run < self.flaky_failures {
            return Err(Error::msg(format!("flaky run {run} fails")));
        }
        Ok(())
    }

    async fn enqueue(&mut self, cx: &mut Context<Self>, notes: Vec<String>) -> Result<usize> {
        for n in &notes {
            cx.queue("note", n)?;
        }
        // Queued tasks run after this event, not during it.
        let log: Vec<String> = cx.sql("SELECT note FROM log", ())?.all()?;
        Ok(log.len())
    }
}

impl Agent for Probe {
    type State = State;

    fn initial_state(&self) -> State {
        State { value: 0 }
    }

    fn methods(m: &mut Methods<Self>) {
        m.callable("set", |a, cx, (v,): (i64,)| Box::pin(a.set(cx, v)));
        m.callable("get", |_, cx, (): ()| {
            Box::pin(async move { Ok(cx.state()?.value) })
        });
        m.callable("fail_many", |_, cx, (n,): (usize,)| {
            Box::pin(async move {
                let once = Retry {
                    max_attempts: 1,
                    ..Retry::default()
                };
                for i in 0..n {
                    cx.queue_with("flaky", &format!("f{i}"), once)?;
                }
                Ok(n)
            })
        });
        m.callable("in_ms", |_, cx, (ms, task, note): (u64, String, Value)| {
            Box::pin(async move { Ok(cx.schedule(Duration::from_millis(ms), &task, &note)?) })
        });
        m.callable("cron", |_, cx, (expr, note): (String, String)| {
            Box::pin(async move { Ok(cx.schedule(expr.as_str(), "note", &note)?) })
        });
        m.callable(
            "once_ms",
            |_, cx, (ms, task, note): (u64, String, Value)| {
                Box::pin(async move {
                    let options = ScheduleOptions {
                        idempotent: false,
                        retry: Some(Retry {
                            max_attempts: 1,
                            ..Retry::default()
                        }),
                    };
                    Ok(cx.schedule_with(Duration::from_millis(ms), &task, &note, options)?)
                })
            },
        );
        m.callable("every_ms", |_, cx, (ms, note): (u64, String)| {
            Box::pin(
                async move { Ok(cx.schedule_every(Duration::from_millis(ms), "note", &note)?) },
            )
        });
        m.callable("cancel", |_, cx, (id,): (String,)| {
            Box::pin(async move { Ok(cx.cancel_schedule(&id)?) })
        });
        m.callable("schedules", |_, cx, (): ()| {
            Box::pin(async move { Ok(cx.list_schedules()?) })
        });
        m.callable("log", |_, cx, (): ()| {
            Box::pin(async move {
                Ok::<Vec<String>, Error>(cx.sql("SELECT note FROM log ORDER BY id", ())?.all()?)
            })
        });
        m.callable("failures", |_, cx, (): ()| {
            Box::pin(async move { Ok::<Vec<Failure>, Error>(cx.failures()?) })
        });
        m.callable("enqueue", |a, cx, (notes,): (Vec<String>,)| {
            Box::pin(a.enqueue(cx, notes))
        });
        m.callable("schedule_unknown", |_, cx, (): ()| {
            Box::pin(async move { Ok(cx.schedule(Duration::ZERO, "no_such_task", &())?) })
        });
        m.callable("set_then_fail", |a, cx, (v,): (i64,)| {
            Box::pin(async move {
                a.set(cx, v).await?;
                cx.sql(
                    "INSERT INTO log(note) VALUES ('written before the failure')",
                    (),
                )?;
                Err::<(), _>(Error::msg("failed after writing"))
            })
        });
        m.streaming("stream", |_, cx, s, (n,): (u32,)| {
            Box::pin(async move {
                for i in 0..n {
                    s.send(cx, i).await?;
                }
                if n == 2 {
                    return Err(Error::msg("stream broke"));
                }
                s.end(cx, "end")
            })
        });
        m.callable_from("whoami", |_, cx, conn, (): ()| {
            Box::pin(async move {
                let mine: Option<Value> = cx.connection_state(&conn)?;
                Ok(json!({ "id": conn.id, "readonly": conn.readonly, "state": mine }))
            })
        });
        m.callable("raw_state", |_, cx, (): ()| {
            Box::pin(async move {
                Ok::<String, Error>(cx.sql("SELECT state FROM cf_agents_state", ())?.one()?)
            })
        });
        m.callable("changes", |_, cx, (): ()| {
            Box::pin(async move {
                Ok::<Vec<String>, Error>(cx.sql("SELECT note FROM changes ORDER BY id", ())?.all()?)
            })
        });
        m.callable("cancel_race", |_, cx, (): ()| {
            Box::pin(async move {
                // Both already due, so one alarm loads both; the canceller runs first.
                let due = std::time::SystemTime::now() - Duration::from_secs(1);
                cx.schedule(due, "note", &"cancelled schedule")?;
                cx.schedule(
                    due - Duration::from_millis(1),
                    "cancel",
                    &"cancelled schedule",
                )?;
                cx.queue("cancel", &"dequeued item")?;
                cx.queue("note", &"dequeued item")?;
                Ok(())
            })
        });
        m.task("cancel", |_, cx, note: String| {
            Box::pin(async move {
                for s in cx.list_schedules()? {
                    if s.payload == json!(note) {
                        cx.cancel_schedule(&s.id)?;
                    }
                }
                for item in cx.queued()? {
                    if item.payload == json!(note) {
                        cx.dequeue(&item.id)?;
                    }
                }
                let done = format!("cancelled {note}");
                cx.sql("INSERT INTO log(note) VALUES (?)", (done.as_str(),))?;
                Ok(())
            })
        });
        m.callable("queue_alarm", |_, cx, (): ()| {
            Box::pin(async move {
                cx.queue("note", &"queued")?;
                let alarm = cx.get_alarm()?.expect("queueing arms the alarm");
                Ok(denizen_runtime::time::to_ms(alarm))
            })
        });
        m.task("note", |a, cx, note: String| Box::pin(a.note(cx, note)));
        m.task("flaky", |a, cx, note: String| Box::pin(a.flaky(cx, note)));
    }

    async fn on_start(&mut self, cx: &mut Context<Self>) -> Result<()> {
        cx.sql(
            "CREATE TABLE IF NOT EXISTS log(id INTEGER PRIMARY KEY AUTOINCREMENT, note TEXT)",
            (),
        )?;
        cx.sql(
            "CREATE TABLE IF NOT EXISTS changes(id INTEGER PRIMARY KEY AUTOINCREMENT, note TEXT)",
            (),
        )?;
        // Declared on every wake: must stay one schedule each.
        cx.schedule_every(Duration::from_secs(3600), "note", &"hourly")?;
        cx.schedule("0 0 * * *", "note", &"midnight")?;
        Ok(())
    }

    async fn on_message(
        &mut self,
        cx: &mut Context<Self>,
        conn: &Connection,
        frame: Frame,
    ) -> Result<()> {
        if frame.as_text() == Some("whoami") {
            let mine: Option<Value> = cx.connection_state(conn)?;
            cx.send_json(conn, &json!({ "type": "me", "id": conn.id, "state": mine }))?;
            return Ok(());
        }
        cx.send(
            conn.ws,
            denizen_agents::protocol::unhandled_frame_error(&frame),
        );
        Ok(())
    }

    async fn on_close(
        &mut self,
        cx: &mut Context<Self>,
        conn: &Connection,
        code: u16,
        _reason: &str,
        _was_clean: bool,
    ) -> Result<()> {
        let note = format!("closed {} {code}", conn.id);
        cx.sql("INSERT INTO log(note) VALUES (?)", (note.as_str(),))?;
        Ok(())
    }

    async fn on_connect(
        &mut self,
        cx: &mut Context<Self>,
        conn: &Connection,
        info: &ConnectInfo,
    ) -> Result<Connect> {
        if let Some(user) = info.param("user") {
            cx.set_connection_state(conn, &json!({ "user": user }))?;
        }
        Ok(match (info.param("role"), info.param("token")) {
            (_, Some("bad")) => Connect::Reject("bad token".into()),
            (Some("viewer"), _) => Connect::ReadOnly,
            (Some("raw"), _) => Connect::Raw,
            _ => Connect::Accept,
        })
    }

    fn validate_state_change(&mut self, next: &State, _source: &Source) -> Result<()> {
        if next.value < 0 {
            return Err(Error::msg("negative values are refused"));
        }
        Ok(())
    }

    async fn on_state_changed(
        &mut self,
        cx: &mut Context<Self>,
        state: &State,
        source: &Source,
    ) -> Result<()> {
        let note = match source {
            Source::Server => format!("{} server", state.value),
            Source::Client(conn) => format!("{} client {}", state.value, conn.id),
        };
        cx.sql("INSERT INTO changes(note) VALUES (?)", (note.as_str(),))?;
        Ok(())
    }
}

/// An agent whose state is any JSON value, so only the size limit bounds it.
#[derive(Default)]
struct Bag;

impl Agent for Bag {
    type State = Value;

    fn initial_state(&self) -> Value {
        json!({})
    }

    fn methods(m: &mut Methods<Self>) {
        m.callable("grow", |_, cx, (n,): (usize,)| {
            Box::pin(async move {
                cx.set_state(&json!({ "blob": "x".repeat(n) }))?;
                Ok(n)
            })
        });
    }
}

struct Harness {
    runtime: Runtime,
    ns: Namespace<AgentHost<Probe>>,
    bags: Namespace<AgentHost<Bag>>,
    flaky_runs: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

fn harness(flaky_failures: usize, idle: Duration) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let flaky_runs = Arc::new(AtomicUsize::new(0));
    let runs = flaky_runs.clone();
    let runtime = Runtime::builder()
        .data_dir(dir.path())
        .idle_timeout(idle)
        .agent_with("probe", move || Probe {
            flaky_runs: runs.clone(),
            flaky_failures,
        })
        .agent::<Bag>("bag")
        .build()
        .unwrap();
    let ns = runtime.namespace::<AgentHost<Probe>>("probe").unwrap();
    let bags = runtime.namespace::<AgentHost<Bag>>("bag").unwrap();
    Harness {
        runtime,
        ns,
        bags,
        flaky_runs,
        _dir: dir,
    }
}

/// An in-process client socket.
struct Client {
    handle: Option<SocketHandle>,
    rx: UnboundedReceiver<Outgoing>,
}

impl Client {
    async fn connect(h: &Harness, name: &str, query: &str) -> Client {
        Client::connect_to(&h.ns, "probe", name, query).await
    }

    async fn connect_to<A: Agent>(
        ns: &Namespace<AgentHost<A>>,
        class: &str,
        name: &str,
        query: &str,
    ) -> Client {
        let (upgrade, rx) = Upgrade::new();
        let mut req = http::Request::new(Bytes::new());
        *req.uri_mut() = format!("/agents/{class}/{name}?{query}").parse().unwrap();
        req.extensions_mut().insert(upgrade.clone());
        let resp = ns.get_by_name(name).fetch(req).await.unwrap();
        assert_eq!(resp.status(), 101);
        Client {
            handle: upgrade.accepted(),
            rx,
        }
    }

    fn send(&self, text: &str) {
        self.handle
            .as_ref()
            .unwrap()
            .message(Frame::Text(text.into()))
            .unwrap();
    }

    async fn next(&mut self) -> Outgoing {
        tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("timed out waiting for a frame")
            .expect("socket ended")
    }

    async fn json(&mut self) -> Value {
        match self.next().await {
            Outgoing::Frame(Frame::Text(t)) => serde_json::from_str(&t).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Reads the connect handshake and returns the state.
    async fn handshake(&mut self) -> Value {
        let identity = self.json().await;
        assert_eq!(identity["type"], "cf_agent_identity");
        let state = self.json().await;
        assert_eq!(state["type"], "cf_agent_state");
        assert_eq!(self.json().await["type"], "cf_agent_mcp_servers");
        state["state"].clone()
    }

    async fn rpc(&mut self, id: &str, method: &str, args: Value) -> Value {
        self.send(&json!({"type":"rpc","id":id,"method":method,"args":args}).to_string());
        loop {
            let frame = self.json().await;
            if frame["type"] == "rpc" && frame["id"] == id {
                return frame;
            }
        }
    }

    fn is_quiet(&mut self) -> bool {
        self.rx.try_recv().is_err()
    }
}

async fn call(h: &Harness, name: &str, method: &str, args: Value) -> Value {
    h.ns.get_by_name(name)
        .call(Call::new(method, args))
        .await
        .unwrap()
}

async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn log(h: &Harness, name: &str) -> Vec<String> {
    serde_json::from_value(call(h, name, "log", json!([])).await).unwrap()
}

#[tokio::test]
async fn handshake_state_sync_and_bad_frames() {
    let h = harness(0, Duration::from_secs(10));
    let mut a = Client::connect(&h, "p", "_pk=a").await;
    let identity = a.json().await;
    assert_eq!(
        identity,
        json!({"type":"cf_agent_identity","name":"p","agent":"probe","stateFollows":true})
    );
    assert_eq!(
        a.json().await,
        json!({"type":"cf_agent_state","state":{"value":0}})
    );
    assert_eq!(a.json().await["type"], "cf_agent_mcp_servers");
    let mut b = Client::connect(&h, "p", "_pk=b").await;
    b.handshake().await;

    // A client's change goes to the others, not back to the sender.
    a.send(r#"{"type":"cf_agent_state","state":{"value":7}}"#);
    assert_eq!(
        b.json().await,
        json!({"type":"cf_agent_state","state":{"value":7}})
    );
    // A server-side change reaches the caller before the reply.
    a.send(r#"{"type":"rpc","id":"1","method":"set","args":[8]}"#);
    assert_eq!(
        a.json().await,
        json!({"type":"cf_agent_state","state":{"value":8}})
    );
    assert_eq!(
        a.json().await,
        json!({"type":"rpc","id":"1","success":true,"done":true,"result":8})
    );
    assert_eq!(b.json().await["state"]["value"], 8);

    // Garbage and unknown types get an error frame; the connection keeps working.
    a.send("ping");
    assert_eq!(a.next().await, Outgoing::Frame(Frame::Text("pong".into())));
    a.send("{not json");
    let err = a.json().await;
    assert_eq!(err["type"], "cf_agent_error");
    assert!(err["error"].as_str().unwrap().contains("not valid JSON"));
    a.send(r#"{"type":"whatever"}"#);
    assert!(
        a.json().await["error"]
            .as_str()
            .unwrap()
            .contains("whatever")
    );
    let unknown = a.rpc("2", "nope", json!([])).await;
    assert_eq!(unknown["error"], "Method nope does not exist");
    assert_eq!(unknown["success"], false);
    let tasks_are_private = a.rpc("3", "note", json!(["x"])).await;
    assert_eq!(tasks_are_private["error"], "Method note is not callable");
    let bad_args = a.rpc("4", "set", json!(["eight"])).await;
    assert!(
        bad_args["error"]
            .as_str()
            .unwrap()
            .contains("invalid arguments")
    );
    assert_eq!(a.rpc("5", "get", json!([])).await["result"], 8);
    assert!(a.is_quiet());
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn connection_state_survives_hibernation() {
    let h = harness(0, Duration::from_millis(30));
    let mut ann = Client::connect(&h, "h", "_pk=ann-1&user=ann").await;
    ann.handshake().await;
    let ns = h.ns.clone();
    wait_for("hibernation", move || {
        let ns = ns.clone();
        async move { ns.live_count() == 0 }
    })
    .await;
    ann.send("whoami");
    assert_eq!(
        ann.json().await,
        json!({"type":"me","id":"ann-1","state":{"user":"ann"}})
    );
    // A callable that asks for its caller sees the same connection.
    let me = ann.rpc("1", "whoami", json!([])).await;
    assert_eq!(
        me["result"],
        json!({"id":"ann-1","readonly":false,"state":{"user":"ann"}})
    );
    let over_stub =
        h.ns.get_by_name("h")
            .call(Call::new("whoami", json!([])))
            .await;
    assert!(
        over_stub
            .unwrap_err()
            .to_string()
            .contains("calling connection")
    );
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn readonly_connections_and_rejected_state_changes() {
    let h = harness(0, Duration::from_secs(10));
    let mut writer = Client::connect(&h, "r", "_pk=w").await;
    writer.handshake().await;
    let mut viewer = Client::connect(&h, "r", "_pk=v&role=viewer").await;
    viewer.handshake().await;

    viewer.send(r#"{"type":"cf_agent_state","state":{"value":5}}"#);
    assert_eq!(
        viewer.json().await,
        json!({"type":"cf_agent_state_error","error":"Connection is readonly"})
    );
    // Nor can it change the state through a method.
    let via_rpc = viewer.rpc("1", "set", json!([5])).await;
    assert_eq!(via_rpc["error"], "Connection is readonly");
    // Reading is fine.
    assert_eq!(viewer.rpc("2", "get", json!([])).await["result"], 0);

    // Refused by validate_state_change, or not the state's shape.
    writer.send(r#"{"type":"cf_agent_state","state":{"value":-1}}"#);
    assert_eq!(
        writer.json().await,
        json!({"type":"cf_agent_state_error","error":"State update rejected"})
    );
    writer.send(r#"{"type":"cf_agent_state","state":"not the shape"}"#);
    assert_eq!(writer.json().await["error"], "State update rejected");
    assert_eq!(writer.rpc("3", "get", json!([])).await["result"], 0);
    // Nothing of it reached the viewer.
    assert!(viewer.is_quiet());

    // Rejected in on_connect: closed with 4001 before any protocol frame.
    let mut refused = Client::connect(&h, "r", "_pk=x&token=bad").await;
    assert_eq!(
        refused.next().await,
        Outgoing::Close {
            code: 4001,
            reason: "bad token".into()
        }
    );
    // An oversized connection id is refused for good (1008).
    let long = "x".repeat(300);
    let mut too_long = Client::connect(&h, "r", &format!("_pk={long}")).await;
    assert!(matches!(
        too_long.next().await,
        Outgoing::Close { code: 1008, .. }
    ));
    // A raw connection gets no protocol frames; its frames go to on_message.
    let mut raw = Client::connect(&h, "r", "_pk=raw&role=raw").await;
    raw.send(r#"{"type":"rpc","id":"1","method":"get","args":[]}"#);
    assert_eq!(raw.json().await["type"], "cf_agent_error");
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn failing_methods_roll_back_and_streams_send_chunks() {
    let h = harness(0, Duration::from_secs(10));
    let mut a = Client::connect(&h, "f", "_pk=a").await;
    a.handshake().await;
    let mut b = Client::connect(&h, "f", "_pk=b").await;
    b.handshake().await;
    let failed = a.rpc("1", "set_then_fail", json!([3])).await;
    assert_eq!(
        failed,
        json!({"type":"rpc","id":"1","success":false,"error":"failed after writing"})
    );
    // Neither the state, its broadcast nor the SQL write survived the failure.
    assert!(b.is_quiet());
    assert_eq!(a.rpc("2", "get", json!([])).await["result"], 0);
    assert!(log(&h, "f").await.is_empty());

    a.send(r#"{"type":"rpc","id":"s","method":"stream","args":[3]}"#);
    for i in 0..3 {
        assert_eq!(
            a.json().await,
            json!({"type":"rpc","id":"s","success":true,"done":false,"result":i})
        );
    }
    assert_eq!(
        a.json().await,
        json!({"type":"rpc","id":"s","success":true,"done":true,"result":"end"})
    );
    a.send(r#"{"type":"rpc","id":"t","method":"stream","args":[2]}"#);
    assert_eq!(a.json().await["done"], false);
    assert_eq!(a.json().await["done"], false);
    assert_eq!(
        a.json().await,
        json!({"type":"rpc","id":"t","success":false,"error":"stream broke"})
    );
    let over_stub =
        h.ns.get_by_name("f")
            .call(Call::new("stream", json!([1])))
            .await;
    assert!(over_stub.unwrap_err().to_string().contains("streams"));

    let unknown =
        h.ns.get_by_name("f")
            .call(Call::new("schedule_unknown", json!([])))
            .await;
    assert!(
        unknown
            .unwrap_err()
            .to_string()
            .contains("`no_such_task` is registered")
    );
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn schedules_are_not_duplicated_by_many_wakes() {
    let h = harness(0, Duration::from_millis(30));
    for _ in 0..15 {
        call(&h, "w", "get", json!([])).await;
        let ns = h.ns.clone();
        wait_for("hibernation", move || {
            let ns = ns.clone();
            async move { ns.live_count() == 0 }
        })
        .await;
    }
    let schedules: Vec<Schedule> =
        serde_json::from_value(call(&h, "w", "schedules", json!([])).await).unwrap();
    assert_eq!(schedules.len(), 2, "{schedules:?}");
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn cron_rearms_and_cancel_removes() {
    let h = harness(0, Duration::from_secs(10));
    let cron: Schedule =
        serde_json::from_value(call(&h, "c", "cron", json!(["* * * * * *", "tick"])).await)
            .unwrap();
    // Declared twice, one schedule.
    let again: Schedule =
        serde_json::from_value(call(&h, "c", "cron", json!(["* * * * * *", "tick"])).await)
            .unwrap();
    assert_eq!(cron.id, again.id);
    let cancelled: Schedule =
        serde_json::from_value(call(&h, "c", "in_ms", json!([200, "note", "cancelled"])).await)
            .unwrap();
    assert_eq!(
        call(&h, "c", "cancel", json!([cancelled.id])).await,
        json!(true)
    );
    assert_eq!(
        call(&h, "c", "cancel", json!([cancelled.id])).await,
        json!(false)
    );
    call(&h, "c", "in_ms", json!([300, "note", "kept"])).await;
    let every: Schedule =
        serde_json::from_value(call(&h, "c", "every_ms", json!([150, "every"])).await).unwrap();
    wait_for(
        "two cron runs, two interval runs and the kept one-shot",
        || async {
            let log = log(&h, "c").await;
            log.iter().filter(|n| *n == "tick").count() >= 2
                && log.iter().filter(|n| *n == "every").count() >= 2
                && log.contains(&"kept".to_string())
        },
    )
    .await;
    assert_eq!(
        call(&h, "c", "cancel", json!([every.id])).await,
        json!(true)
    );
    let log = log(&h, "c").await;
    assert!(!log.contains(&"cancelled".to_string()), "{log:?}");
    let schedules: Vec<Schedule> =
        serde_json::from_value(call(&h, "c", "schedules", json!([])).await).unwrap();
    // hourly + midnight + the cron; the one-shots are gone.
    assert_eq!(schedules.len(), 3, "{schedules:?}");
    let cron_now = schedules.iter().find(|s| s.id == cron.id).unwrap();
    assert!(cron_now.time > cron.time, "the cron schedule moved on");
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn queue_runs_in_order_after_the_current_event() {
    let h = harness(0, Duration::from_secs(10));
    // The log is still empty inside the event that queued.
    assert_eq!(call(&h, "q", "enqueue", json!([["a", "b", "c"]])).await, 0);
    call(&h, "q", "enqueue", json!([["d"]])).await;
    wait_for("the queue to drain", || async {
        log(&h, "q").await.len() == 4
    })
    .await;
    assert_eq!(log(&h, "q").await, ["a", "b", "c", "d"]);
    // A plain callable is a schedule target too: the payload is its argument array.
    call(&h, "q", "in_ms", json!([0, "set", 41])).await;
    wait_for("the scheduled call", || async {
        call(&h, "q", "get", json!([])).await == json!(41)
    })
    .await;
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn failing_tasks_are_retried_then_recorded() {
    // Fails twice, then succeeds on the third (last) attempt.
    let h = harness(2, Duration::from_secs(10));
    call(&h, "t", "in_ms", json!([0, "flaky", "third time"])).await;
    wait_for("the flaky task to succeed", || async {
        log(&h, "t").await == ["third time"]
    })
    .await;
    assert_eq!(h.flaky_runs.load(Ordering::SeqCst), 3);
    let failures: Vec<Failure> =
        serde_json::from_value(call(&h, "t", "failures", json!([])).await).unwrap();
    assert!(failures.is_empty());

    // Always failing: three attempts, then one failure record; its writes never stay.
    let h = harness(usize::MAX, Duration::from_secs(10));
    call(&h, "t", "in_ms", json!([0, "flaky", "never"])).await;
    wait_for("the failure record", || async {
        let f: Vec<Failure> =
            serde_json::from_value(call(&h, "t", "failures", json!([])).await).unwrap();
        !f.is_empty()
    })
    .await;
    let failures: Vec<Failure> =
        serde_json::from_value(call(&h, "t", "failures", json!([])).await).unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].attempts, 3);
    assert_eq!(failures[0].callback, "flaky");
    assert!(failures[0].error.contains("fails"));
    assert_eq!(h.flaky_runs.load(Ordering::SeqCst), 3);
    assert!(log(&h, "t").await.is_empty());
    let schedules: Vec<Schedule> =
        serde_json::from_value(call(&h, "t", "schedules", json!([])).await).unwrap();
    assert_eq!(
        schedules.len(),
        2,
        "the one-shot is gone after its last attempt"
    );

    // Its own retry policy: one attempt only.
    call(&h, "t", "once_ms", json!([0, "flaky", "once"])).await;
    wait_for("the second failure record", || async {
        let f: Vec<Failure> =
            serde_json::from_value(call(&h, "t", "failures", json!([])).await).unwrap();
        f.len() == 2
    })
    .await;
    let failures: Vec<Failure> =
        serde_json::from_value(call(&h, "t", "failures", json!([])).await).unwrap();
    assert_eq!(failures[1].attempts, 1);
    assert_eq!(failures[1].payload, json!("once"));
    assert_eq!(h.flaky_runs.load(Ordering::SeqCst), 4);
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn failure_records_keep_only_the_latest() {
    let h = harness(usize::MAX, Duration::from_secs(10));
    let n = MAX_FAILURES + 10;
    call(&h, "f", "fail_many", json!([n])).await;
    wait_for("every queued task to have failed", || async {
        h.flaky_runs.load(Ordering::SeqCst) == n
    })
    .await;
    let failures: Vec<Failure> =
        serde_json::from_value(call(&h, "f", "failures", json!([])).await).unwrap();
    assert_eq!(failures.len(), MAX_FAILURES);
    assert_eq!(failures[0].payload, json!("f10"), "the oldest went first");
    assert_eq!(
        failures[MAX_FAILURES - 1].payload,
        json!(format!("f{}", n - 1))
    );
}

#[tokio::test]
async fn client_state_keeps_only_what_the_typed_state_holds() {
    let h = harness(0, Duration::from_secs(10));
    let mut a = Client::connect(&h, "typed", "_pk=a").await;
    a.handshake().await;
    let mut b = Client::connect(&h, "typed", "_pk=b").await;
    b.handshake().await;
    let junk = "j".repeat(2 << 20);
    a.send(&json!({"type":"cf_agent_state","state":{"value":3,"junk":junk}}).to_string());
    let typed = json!({"type":"cf_agent_state","state":{"value":3}});
    // The others get the typed state; the sender learns its extra field was dropped.
    assert_eq!(b.json().await, typed);
    assert_eq!(a.json().await, typed);
    assert_eq!(
        call(&h, "typed", "raw_state", json!([])).await,
        json!(r#"{"value":3}"#)
    );
    let mut late = Client::connect(&h, "typed", "_pk=c").await;
    assert_eq!(late.handshake().await, json!({"value":3}));
    // A change that is already the typed state is not echoed to its sender.
    a.send(r#"{"type":"cf_agent_state","state":{"value":4}}"#);
    assert_eq!(b.json().await["state"], json!({"value":4}));
    assert_eq!(a.rpc("1", "get", json!([])).await["result"], 4);
    assert!(a.is_quiet());
    assert_eq!(
        call(&h, "typed", "changes", json!([])).await,
        json!(["3 client a", "4 client a"])
    );
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn oversized_state_is_refused_and_later_connections_work() {
    let h = harness(0, Duration::from_secs(10));
    let mut a = Client::connect_to(&h.bags, "bag", "big", "_pk=a").await;
    a.handshake().await;
    let blob = "x".repeat(MAX_STATE_BYTES + 1);
    a.send(&json!({"type":"cf_agent_state","state":{"blob":blob}}).to_string());
    let refused = a.json().await;
    assert_eq!(refused["type"], "cf_agent_state_error");
    assert!(
        refused["error"].as_str().unwrap().contains("limit"),
        "{refused}"
    );
    // From the server too, with an error that names the limit.
    let grown = a.rpc("1", "grow", json!([MAX_STATE_BYTES])).await;
    assert_eq!(grown["success"], false);
    assert!(
        grown["error"].as_str().unwrap().contains("MAX_STATE_BYTES"),
        "{grown}"
    );
    let over_stub = h
        .bags
        .get_by_name("big")
        .call(Call::new("grow", json!([MAX_STATE_BYTES])))
        .await;
    assert!(
        over_stub
            .unwrap_err()
            .to_string()
            .contains("MAX_STATE_BYTES")
    );
    // A state under the limit is fine, and a new client still gets a handshake.
    assert_eq!(a.rpc("2", "grow", json!([1000])).await["result"], 1000);
    let mut later = Client::connect_to(&h.bags, "bag", "big", "_pk=b").await;
    assert_eq!(
        later.handshake().await["blob"].as_str().unwrap().len(),
        1000
    );
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn server_state_changes_are_validated_and_reported() {
    let h = harness(0, Duration::from_secs(10));
    let mut a = Client::connect(&h, "srv", "_pk=a").await;
    a.handshake().await;
    let mut b = Client::connect(&h, "srv", "_pk=b").await;
    b.handshake().await;
    // validate_state_change refuses a server change as it does a client's: the method fails.
    let refused = a.rpc("1", "set", json!([-1])).await;
    assert_eq!(refused["success"], false);
    assert_eq!(refused["error"], "negative values are refused");
    assert!(b.is_quiet());
    let over_stub =
        h.ns.get_by_name("srv")
            .call(Call::new("set", json!([-2])))
            .await;
    assert!(
        over_stub
            .unwrap_err()
            .to_string()
            .contains("negative values are refused")
    );
    assert_eq!(call(&h, "srv", "get", json!([])).await, json!(0));
    // An accepted one reaches on_state_changed with the server as its source.
    assert_eq!(a.rpc("2", "set", json!([5])).await["result"], 5);
    assert_eq!(b.json().await["state"], json!({"value":5}));
    call(&h, "srv", "set", json!([6])).await;
    assert_eq!(
        call(&h, "srv", "changes", json!([])).await,
        json!(["5 server", "6 server"])
    );
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn a_task_cancelled_by_an_earlier_one_of_its_batch_does_not_run() {
    let h = harness(0, Duration::from_secs(10));
    call(&h, "race", "cancel_race", json!([])).await;
    wait_for("both cancellers", || async {
        log(&h, "race").await.len() >= 2
    })
    .await;
    // Nothing else is due: a victim that still ran would be in the log by now.
    let schedules: Vec<Schedule> =
        serde_json::from_value(call(&h, "race", "schedules", json!([])).await).unwrap();
    assert_eq!(
        schedules.len(),
        2,
        "hourly and midnight only: {schedules:?}"
    );
    assert_eq!(
        log(&h, "race").await,
        ["cancelled dequeued item", "cancelled cancelled schedule"]
    );
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn queued_items_arm_the_alarm_at_the_time_they_were_queued() {
    let h = harness(0, Duration::from_secs(10));
    // Woken first, so the alarm read back is the queue's, not on_start's schedules'.
    call(&h, "qa", "get", json!([])).await;
    let before = denizen_runtime::time::now_ms();
    let alarm = call(&h, "qa", "queue_alarm", json!([])).await;
    let after = denizen_runtime::time::now_ms();
    let alarm = alarm.as_i64().unwrap();
    assert!(
        (before..=after).contains(&alarm),
        "armed at {alarm}, queued between {before} and {after}"
    );
    wait_for("the queued item", || async {
        log(&h, "qa").await == ["queued"]
    })
    .await;
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn huge_type_id_and_method_are_not_echoed_whole() {
    let h = harness(0, Duration::from_secs(10));
    let mut a = Client::connect(&h, "echo", "_pk=a").await;
    a.handshake().await;
    let huge = "h".repeat(1 << 20);
    a.send(&json!({ "type": huge }).to_string());
    let error = a.json().await;
    assert_eq!(error["type"], "cf_agent_error");
    assert!(error.to_string().len() < 300, "{error}");
    a.send(&json!({"type":"rpc","id":huge,"method":huge,"args":[]}).to_string());
    let error = a.json().await;
    assert_eq!(error["success"], false);
    assert!(error.to_string().len() < 400, "{error}");
    assert!(error["id"].as_str().unwrap().ends_with('…'));
    h.runtime.shutdown().await;
}
