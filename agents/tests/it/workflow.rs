//! The workflow engine in process: journaling, retries, sleeps, events, operator actions,
//! determinism and many instances.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use denizen_agents::workflow::{
    self, Backoff, Client, Error, Event, Status, StepConfig, StepError, StepState, Workflow,
    Workflows,
};
use denizen_runtime::Runtime;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Serialize, Deserialize, Clone, Default)]
#[serde(default)]
struct Plan {
    /// Attempts of step `work` that fail before one succeeds.
    fail_times: u32,
    retries: u32,
    delay_ms: u64,
    backoff: Backoff,
    non_retryable: bool,
    sleep_ms: u64,
    /// (event type, timeout ms)
    wait: Option<(String, u64)>,
    /// Extra steps after `work`, each counted.
    extra_steps: u32,
    /// How long each attempt of `work` takes.
    work_ms: u64,
    /// Per-attempt timeout of `work`.
    timeout_ms: Option<u64>,
    /// Panic after `work`, outside any step.
    panic: bool,
}

/// Counts how often each (instance, step) closure ran.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<HashMap<String, u32>>>);

impl Calls {
    fn bump(&self, key: String) -> u32 {
        let mut map = self.0.lock().unwrap();
        let n = map.entry(key).or_default();
        *n += 1;
        *n
    }
    fn get(&self, key: &str) -> u32 {
        self.0.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

#[derive(Clone, Default)]
struct Script {
    calls: Calls,
}

impl Workflow for Script {
    type Params = Plan;
    type Output = Value;

    async fn run(&self, event: Event<Plan>, step: workflow::Step) -> workflow::Result<Value> {
        let plan = event.payload.clone();
        let config = StepConfig::retries(
            plan.retries,
            Duration::from_millis(plan.delay_ms),
            plan.backoff,
        );
        let config = match plan.timeout_ms {
            Some(ms) => config.with_timeout(Duration::from_millis(ms)),
            None => config,
        };
        let calls = self.calls.clone();
        let id = event.id.clone();
        let attempt: u32 = step
            .run("work", &config, || {
                let n = calls.bump(format!("{id}/work"));
                let plan = plan.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(plan.work_ms)).await;
                    if n <= plan.fail_times {
                        if plan.non_retryable {
                            Err(StepError::non_retryable(format!(
                                "bad input on attempt {n}"
                            )))
                        } else {
                            Err(StepError::retryable(format!("flaky on attempt {n}")))
                        }
                    } else {
                        Ok(n)
                    }
                }
            })
            .await?;
        if plan.panic {
            panic!("a bug in the workflow");
        }
        for i in 0..plan.extra_steps {
            let calls = calls.clone();
            let key = format!("{id}/extra-{i}");
            step.run(&format!("extra-{i}"), &StepConfig::default(), || {
                calls.bump(key.clone());
                async { Ok(()) }
            })
            .await?;
        }
        if plan.sleep_ms > 0 {
            step.sleep("nap", Duration::from_millis(plan.sleep_ms))
                .await?;
        }
        let event = match &plan.wait {
            Some((kind, timeout_ms)) => {
                match step
                    .wait_for_event::<Value>("approval", kind, Duration::from_millis(*timeout_ms))
                    .await
                {
                    Ok(v) => v,
                    Err(Error::EventTimeout { .. }) => json!("timed out"),
                    Err(e) => return Err(e),
                }
            }
            None => Value::Null,
        };
        Ok(json!({ "attempt": attempt, "event": event }))
    }
}

/// The same workflow with its first step renamed: a replay of an older journal must fail.
struct Renamed;

impl Workflow for Renamed {
    type Params = Plan;
    type Output = Value;
    async fn run(&self, _event: Event<Plan>, step: workflow::Step) -> workflow::Result<Value> {
        step.run("work-renamed", &StepConfig::default(), || async { Ok(1) })
            .await?;
        Ok(Value::Null)
    }
}

fn start<W: Workflow>(dir: &Path, idle: Duration, w: W) -> (Runtime, Client<W>) {
    let workflows = Workflows::new().add("script", w);
    let runtime = workflows
        .register(Runtime::builder().data_dir(dir).idle_timeout(idle))
        .build()
        .unwrap();
    let client = workflow::client::<W>(&runtime, "script").unwrap();
    (runtime, client)
}

async fn wait_status<W: Workflow>(
    c: &Client<W>,
    id: &str,
    want: Status,
) -> workflow::InstanceStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = c.status(id).await.unwrap();
        if s.status == want {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {want}; status {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_follow_the_backoff_then_complete() {
    let dir = tempfile::tempdir().unwrap();
    let script = Script::default();
    let (rt, c) = start(dir.path(), Duration::from_secs(10), script.clone());
    for (id, backoff, delays) in [
        ("exp", Backoff::Exponential, [20, 40, 80]),
        ("lin", Backoff::Linear, [20, 40, 60]),
        ("const", Backoff::Constant, [20, 20, 20]),
    ] {
        let plan = Plan {
            fail_times: 3,
            retries: 5,
            delay_ms: 20,
            backoff,
            ..Plan::default()
        };
        c.create(Some(id), &plan).await.unwrap();
        let s = c.wait_final(id).await.unwrap();
        assert_eq!(s.status, Status::Complete, "{s:?}");
        assert_eq!(s.output.as_ref().unwrap()["attempt"], 4);
        assert_eq!(script.calls.get(&format!("{id}/work")), 4);
        let recorded: Vec<i64> = s.steps[0].attempts.iter().map(|a| a.delay_ms).collect();
        assert_eq!(
            recorded,
            delays.to_vec(),
            "{id}: the chosen delays are recorded"
        );
    }
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_and_non_retryable_errors_leave_the_instance_errored() {
    let dir = tempfile::tempdir().unwrap();
    let script = Script::default();
    let (rt, c) = start(dir.path(), Duration::from_secs(10), script.clone());
    let exhausted = Plan {
        fail_times: 10,
        retries: 2,
        delay_ms: 5,
        ..Plan::default()
    };
    c.create(Some("exhausted"), &exhausted).await.unwrap();
    let s = c.wait_final("exhausted").await.unwrap();
    assert_eq!(s.status, Status::Errored);
    assert_eq!(
        script.calls.get("exhausted/work"),
        3,
        "1 attempt + 2 retries"
    );
    assert!(
        s.error.as_deref().unwrap().contains("flaky on attempt 3"),
        "{s:?}"
    );
    assert_eq!(s.steps[0].state, StepState::Failed);

    let fatal = Plan {
        fail_times: 10,
        retries: 5,
        delay_ms: 5,
        non_retryable: true,
        ..Plan::default()
    };
    c.create(Some("fatal"), &fatal).await.unwrap();
    let s = c.wait_final("fatal").await.unwrap();
    assert_eq!(s.status, Status::Errored);
    assert_eq!(
        script.calls.get("fatal/work"),
        1,
        "a non-retryable error stops at once"
    );
    assert!(
        s.error
            .as_deref()
            .unwrap()
            .contains("bad input on attempt 1")
    );

    let slow = Plan {
        work_ms: 10_000,
        timeout_ms: Some(50),
        retries: 1,
        delay_ms: 5,
        ..Plan::default()
    };
    c.create(Some("slow"), &slow).await.unwrap();
    let s = c.wait_final("slow").await.unwrap();
    assert_eq!(s.status, Status::Errored);
    assert_eq!(script.calls.get("slow/work"), 2, "each attempt timed out");
    assert!(s.error.as_deref().unwrap().contains("timed out"), "{s:?}");

    let buggy = Plan {
        panic: true,
        ..Plan::default()
    };
    c.create(Some("buggy"), &buggy).await.unwrap();
    let s = c.wait_final("buggy").await.unwrap();
    assert_eq!(s.status, Status::Errored);
    assert!(
        s.error
            .as_deref()
            .unwrap()
            .contains("a bug in the workflow"),
        "{s:?}"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_retry_delays_suspend_the_instance() {
    let dir = tempfile::tempdir().unwrap();
    let script = Script::default();
    let (rt, c) = start(dir.path(), Duration::from_millis(100), script.clone());
    let plan = Plan {
        fail_times: 1,
        retries: 1,
        delay_ms: 1500,
        ..Plan::default()
    };
    c.create(Some("slow"), &plan).await.unwrap();
    let ns = rt
        .namespace::<workflow::Instance<Script>>("workflow-script")
        .unwrap();
    let started = Instant::now();
    // The instance leaves memory while it waits for its retry.
    while ns.live_count() != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never hibernated"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(script.calls.get("slow/work"), 1);
    let s = c.wait_final("slow").await.unwrap();
    assert_eq!(s.status, Status::Complete, "{s:?}");
    assert_eq!(script.calls.get("slow/work"), 2);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_deliver_payloads_time_out_and_are_kept_until_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let (rt, c) = start(dir.path(), Duration::from_secs(10), Script::default());
    let waits = |timeout_ms| Plan {
        wait: Some(("approved".into(), timeout_ms)),
        ..Plan::default()
    };

    c.create(Some("payload"), &waits(60_000)).await.unwrap();
    wait_status(&c, "payload", Status::Waiting).await;
    c.send_event("payload", "other", &json!(1)).await.unwrap();
    c.send_event("payload", "approved", &json!({"by": "ada"}))
        .await
        .unwrap();
    let s = c.wait_final("payload").await.unwrap();
    assert_eq!(s.output.unwrap()["event"], json!({"by": "ada"}));
    assert_eq!(s.pending_events, 1, "the `other` event is still there");

    c.create(Some("timeout"), &waits(200)).await.unwrap();
    let s = c.wait_final("timeout").await.unwrap();
    assert_eq!(s.status, Status::Complete);
    assert_eq!(s.output.unwrap()["event"], "timed out");
    assert_eq!(s.steps[1].state, StepState::Failed);

    // Sent while the instance is still sleeping, before it waits: not lost.
    let early = Plan {
        sleep_ms: 300,
        ..waits(60_000)
    };
    c.create(Some("early"), &early).await.unwrap();
    c.send_event("early", "approved", &json!("early bird"))
        .await
        .unwrap();
    let s = c.wait_final("early").await.unwrap();
    assert_eq!(s.output.unwrap()["event"], "early bird");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_instances_leave_memory_and_resume_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let script = Script::default();
    let (rt, c) = start(dir.path(), Duration::from_millis(100), script.clone());
    let plan = Plan {
        sleep_ms: 1500,
        extra_steps: 2,
        ..Plan::default()
    };
    c.create(Some("sleeper"), &plan).await.unwrap();
    let s = wait_status(&c, "sleeper", Status::Sleeping).await;
    assert_eq!(s.steps.last().unwrap().state, StepState::Sleeping);
    let ns = rt
        .namespace::<workflow::Instance<Script>>("workflow-script")
        .unwrap();
    let t = Instant::now();
    while ns.live_count() != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "sleeping instance stayed in memory"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rt.shutdown().await;
    drop(rt);

    let (rt, c) = start(dir.path(), Duration::from_millis(100), script.clone());
    let s = c.wait_final("sleeper").await.unwrap();
    assert_eq!(s.status, Status::Complete, "{s:?}");
    let nap = s.steps.iter().find(|s| s.name == "nap").unwrap();
    assert!(
        nap.finished_ms.unwrap() >= nap.wake_ms.unwrap(),
        "woke on time, not early"
    );
    for key in ["sleeper/work", "sleeper/extra-0", "sleeper/extra-1"] {
        assert_eq!(
            script.calls.get(key),
            1,
            "{key} ran once across the restart"
        );
    }
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_terminate_restart() {
    let dir = tempfile::tempdir().unwrap();
    let script = Script::default();
    let (rt, c) = start(dir.path(), Duration::from_secs(10), script.clone());
    let waits = Plan {
        wait: Some(("go".into(), 60_000)),
        ..Plan::default()
    };
    c.create(Some("p"), &waits).await.unwrap();
    wait_status(&c, "p", Status::Waiting).await;
    assert_eq!(c.pause("p").await.unwrap().status, Status::Paused);
    c.send_event("p", "go", &json!("while paused"))
        .await
        .unwrap();
    // Paused: the event waits; nothing runs.
    assert_eq!(c.status("p").await.unwrap().status, Status::Paused);
    assert!(matches!(
        c.pause("p").await,
        Err(Error::InvalidState { .. })
    ));
    c.resume("p").await.unwrap();
    let s = c.wait_final("p").await.unwrap();
    assert_eq!(s.output.unwrap()["event"], "while paused");
    assert_eq!(script.calls.get("p/work"), 1);

    c.create(Some("t"), &waits).await.unwrap();
    wait_status(&c, "t", Status::Waiting).await;
    assert_eq!(c.terminate("t").await.unwrap().status, Status::Terminated);
    assert!(matches!(
        c.send_event("t", "go", &json!(1)).await,
        Err(Error::InvalidState { .. })
    ));
    assert!(matches!(
        c.resume("t").await,
        Err(Error::InvalidState { .. })
    ));

    // Restart runs from scratch: the step runs again, the old event is gone.
    c.restart("p").await.unwrap();
    wait_status(&c, "p", Status::Waiting).await;
    assert_eq!(script.calls.get("p/work"), 2);
    c.send_event("p", "go", &json!("second")).await.unwrap();
    let s = c.wait_final("p").await.unwrap();
    assert_eq!(s.output.unwrap()["event"], "second");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_during_a_step_records_it_and_stops_before_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let script = Script::default();
    let (rt, c) = start(dir.path(), Duration::from_secs(10), script.clone());
    let plan = Plan {
        work_ms: 300,
        extra_steps: 1,
        ..Plan::default()
    };
    c.create(Some("busy"), &plan).await.unwrap();
    // The mailbox answers while the step works.
    let deadline = Instant::now() + Duration::from_secs(10);
    while script.calls.get("busy/work") == 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(c.pause("busy").await.unwrap().status, Status::Paused);
    // The step in flight finishes and is recorded; the next one does not start.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.status("busy").await.unwrap();
        assert_eq!(s.status, Status::Paused);
        if s.steps
            .first()
            .is_some_and(|s| s.state == StepState::Complete)
        {
            break;
        }
        assert!(Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(script.calls.get("busy/extra-0"), 0);
    c.resume("busy").await.unwrap();
    let s = c.wait_final("busy").await.unwrap();
    assert_eq!(s.status, Status::Complete);
    assert_eq!(
        script.calls.get("busy/work"),
        1,
        "the recorded step did not run again"
    );
    assert_eq!(script.calls.get("busy/extra-0"), 1);

    // Paused and resumed while the step works: the same run goes on, the step runs once.
    c.create(Some("quick"), &plan).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while script.calls.get("quick/work") == 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.pause("quick").await.unwrap();
    c.resume("quick").await.unwrap();
    let s = c.wait_final("quick").await.unwrap();
    assert_eq!(s.status, Status::Complete);
    assert_eq!(script.calls.get("quick/work"), 1);
    assert_eq!(script.calls.get("quick/extra-0"), 1);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_does_not_match_the_journal_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (rt, c) = start(dir.path(), Duration::from_secs(10), Script::default());
    let plan = Plan {
        sleep_ms: 60_000,
        ..Plan::default()
    };
    c.create(Some("d"), &plan).await.unwrap();
    wait_status(&c, "d", Status::Sleeping).await;
    rt.shutdown().await;
    drop(rt);

    let (rt, c) = start(dir.path(), Duration::from_secs(10), Renamed);
    // Wake it now (resume replays the run from its journal).
    c.pause("d").await.unwrap();
    c.resume("d").await.unwrap();
    let s = c.wait_final("d").await.unwrap();
    assert_eq!(s.status, Status::Errored);
    let error = s.error.unwrap();
    assert!(
        error.contains("does not match its journal") && error.contains("work-renamed"),
        "{error}"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_instances_complete() {
    let dir = tempfile::tempdir().unwrap();
    let script = Script::default();
    let (rt, c) = start(dir.path(), Duration::from_secs(10), script.clone());
    let plan = Plan {
        extra_steps: 2,
        sleep_ms: 50,
        ..Plan::default()
    };
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let (c, plan) = (c.clone(), plan.clone());
        tasks.push(tokio::spawn(async move {
            c.create(Some(&format!("i{i}")), &plan).await.unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut done = 0;
    for i in 0..1000 {
        let s = c.wait_final(&format!("i{i}")).await.unwrap();
        assert_eq!(s.status, Status::Complete, "{s:?}");
        done += 1;
    }
    assert_eq!(done, 1000);
    assert_eq!(c.list().await.unwrap().len(), 1000);
    for i in 0..1000 {
        assert_eq!(script.calls.get(&format!("i{i}/extra-1")), 1);
    }
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let workflows = Workflows::new().add("script", Script::default());
    let rt = workflows
        .register(Runtime::builder().data_dir(dir.path()))
        .build()
        .unwrap();
    let registry = workflows.bind(&rt).unwrap();
    let err = registry
        .create("nope", Default::default(), json!({}))
        .await
        .unwrap_err();
    assert_eq!(err, Error::UnknownWorkflow("nope".into()));
    let err = registry.status("script", "ghost").await.unwrap_err();
    assert!(matches!(err, Error::UnknownInstance { .. }), "{err}");
    let err = registry
        .create("script", Default::default(), json!({"fail_times": "many"}))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidParams(_)), "{err}");
    let bad_id = workflow::CreateOptions {
        id: Some("no spaces".into()),
        notify: None,
    };
    let err = registry
        .create("script", bad_id, json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidId(_)), "{err}");
    let id = registry
        .create("script", Default::default(), json!({}))
        .await
        .unwrap();
    let dup = workflow::CreateOptions {
        id: Some(id.clone()),
        notify: None,
    };
    let err = registry.create("script", dup, json!({})).await.unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    // Nothing was created for the unknown instance.
    assert_eq!(registry.list("script").await.unwrap(), vec![id]);
    rt.shutdown().await;
}

/// An object (standing in for an agent) that starts a workflow and records what it is told.
#[derive(Default)]
struct Watcher;

struct StartJob(Plan);
impl denizen_runtime::Message for StartJob {
    type Reply = workflow::Result<String>;
}

struct Seen;
impl denizen_runtime::Message for Seen {
    type Reply = Vec<Value>;
}

impl denizen_runtime::DurableObject for Watcher {
    async fn on_start(
        &mut self,
        ctx: &mut denizen_runtime::Ctx<Self>,
    ) -> denizen_runtime::Result<()> {
        ctx.storage().exec(
            "CREATE TABLE IF NOT EXISTS seen(n INTEGER PRIMARY KEY, body TEXT)",
            [],
        )?;
        Ok(())
    }

    async fn fetch(
        &mut self,
        ctx: &mut denizen_runtime::Ctx<Self>,
        req: denizen_runtime::Request,
    ) -> denizen_runtime::Result<denizen_runtime::Response> {
        assert_eq!(req.uri().path(), workflow::NOTIFY_PATH);
        let body = String::from_utf8_lossy(req.body()).to_string();
        ctx.storage()
            .exec("INSERT INTO seen(body) VALUES (?)", (body,))?;
        Ok(denizen_runtime::http_util::text(
            denizen_runtime::http::StatusCode::OK,
            "ok",
        ))
    }
}

impl denizen_runtime::Handler<StartJob> for Watcher {
    async fn handle(
        &mut self,
        ctx: &mut denizen_runtime::Ctx<Self>,
        msg: StartJob,
    ) -> denizen_runtime::Result<workflow::Result<String>> {
        let client = match workflow::client::<Script>(&ctx.runtime(), "script") {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let options = workflow::CreateOptions {
            id: None,
            notify: Some(workflow::NotifyTarget {
                namespace: ctx.namespace().to_string(),
                name: ctx.id().name().unwrap_or_default().to_string(),
            }),
        };
        Ok(client.create_with(options, &msg.0).await)
    }
}

impl denizen_runtime::Handler<Seen> for Watcher {
    async fn handle(
        &mut self,
        ctx: &mut denizen_runtime::Ctx<Self>,
        _: Seen,
    ) -> denizen_runtime::Result<Vec<Value>> {
        let rows: Vec<String> = ctx
            .storage()
            .exec("SELECT body FROM seen ORDER BY n", [])?
            .all()?;
        Ok(rows
            .iter()
            .map(|r| serde_json::from_str(r).unwrap_or(Value::Null))
            .collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_starts_a_workflow_and_hears_its_progress_and_completion() {
    let dir = tempfile::tempdir().unwrap();
    let workflows = Workflows::new().add("script", Script::default());
    let rt = workflows
        .register(
            Runtime::builder()
                .data_dir(dir.path())
                .object::<Watcher>("watcher"),
        )
        .build()
        .unwrap();
    let watcher = rt.namespace::<Watcher>("watcher").unwrap().get_by_name("w");
    let plan = Plan {
        extra_steps: 1,
        ..Plan::default()
    };
    let id = watcher.call(StartJob(plan)).await.unwrap().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let mut seen = watcher.call(Seen).await.unwrap();
        seen.sort_by_key(|v| v["seq"].as_u64());
        if seen.iter().any(|v| v["status"] == "complete") {
            break seen;
        }
        assert!(Instant::now() < deadline, "no completion heard: {seen:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let steps: Vec<&str> = seen.iter().filter_map(|v| v["step"].as_str()).collect();
    assert_eq!(steps, vec!["work", "extra-0"], "{seen:?}");
    let last = seen.last().unwrap();
    assert_eq!(last["id"], id.as_str());
    assert_eq!(last["output"]["attempt"], 1);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_instances_with_their_status_wakes_none_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let (rt, c) = start(dir.path(), Duration::from_millis(50), Script::default());
    let ids: Vec<String> = (0..10).map(|i| format!("listed-{i}")).collect();
    for id in &ids {
        c.create(Some(id), &Plan::default()).await.unwrap();
    }
    for id in &ids {
        c.wait_final(id).await.unwrap();
    }
    let instances = rt
        .namespace::<workflow::Instance<Script>>(&workflow::namespace_of("script"))
        .unwrap();
    // Until every instance has hibernated with its final status indexed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = c.list_statuses().await.unwrap();
        let all_complete =
            listed.len() == ids.len() && listed.iter().all(|s| s.status == Status::Complete);
        if all_complete && instances.live_count() == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{listed:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let activations = rt.metrics().activations.get();
    let listed = c.list_statuses().await.unwrap();
    let registry = Workflows::new()
        .add("script", Script::default())
        .bind(&rt)
        .unwrap();
    let by_name = registry.list_statuses("script").await.unwrap();
    assert_eq!(listed, by_name);
    let mut listed_ids: Vec<String> = listed.iter().map(|s| s.id.clone()).collect();
    listed_ids.sort();
    assert_eq!(listed_ids, ids);
    assert!(listed.iter().all(|s| s.status == Status::Complete));
    assert_eq!(instances.live_count(), 0, "listing woke instances");
    // At most the index object itself woke.
    assert!(rt.metrics().activations.get() - activations <= 1);
    rt.shutdown().await;
}
