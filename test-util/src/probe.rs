//! A probe object for runtime tests: counts its activations, increments, fails on demand,
//! records alarms, and holds sockets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use denizen_runtime::{
    AlarmInfo, Bytes, Ctx, DurableObject, Error, Frame, Handler, Message, Outgoing, Request,
    Response, Result, Runtime, SocketHandle, Upgrade, WebSocket, http, http_util,
};
use tokio::sync::mpsc::UnboundedReceiver;

#[derive(Clone)]
pub struct Probes {
    pub starts: Arc<AtomicUsize>,
    /// (retry_count, is_retry, when)
    pub alarms: Arc<Mutex<Vec<(AlarmInfo, SystemTime)>>>,
    /// The alarm handler fails while retry_count < this.
    pub alarm_failures: Arc<AtomicUsize>,
    pub messages: Arc<Mutex<Vec<String>>>,
    pub gate: Arc<tokio::sync::Semaphore>,
}

impl Default for Probes {
    fn default() -> Self {
        Self::new()
    }
}

impl Probes {
    pub fn new() -> Self {
        Probes {
            starts: Arc::default(),
            alarms: Arc::default(),
            alarm_failures: Arc::default(),
            messages: Arc::default(),
            gate: Arc::new(tokio::sync::Semaphore::new(1_000_000)),
        }
    }
    pub fn starts(&self) -> usize {
        self.starts.load(Ordering::SeqCst)
    }
}

pub struct Probe {
    pub probes: Probes,
}

impl DurableObject for Probe {
    async fn on_start(&mut self, ctx: &mut Ctx<Self>) -> Result<()> {
        self.probes.starts.fetch_add(1, Ordering::SeqCst);
        ctx.storage().exec(
            "CREATE TABLE IF NOT EXISTS counter(k INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
            [],
        )?;
        Ok(())
    }

    /// A WebSocket upgrade is accepted with the query string's comma-separated tags and an
    /// attachment naming them; any other request answers the count.
    async fn fetch(&mut self, ctx: &mut Ctx<Self>, req: Request) -> Result<Response> {
        let query = req.uri().query().unwrap_or("").to_string();
        if req.extensions().get::<Upgrade>().is_some() {
            let tags: Vec<&str> = query.split(',').filter(|t| !t.is_empty()).collect();
            let ws = ctx.accept_websocket(&req, &tags)?;
            ctx.set_attachment(ws, &format!("attached:{query}"))?;
            return Ok(http_util::switching_protocols());
        }
        let n = read(ctx)?;
        Ok(http_util::json(
            http::StatusCode::OK,
            &serde_json::json!({ "count": n }),
        ))
    }

    async fn alarm(&mut self, ctx: &mut Ctx<Self>, info: AlarmInfo) -> Result<()> {
        self.probes
            .alarms
            .lock()
            .unwrap()
            .push((info, SystemTime::now()));
        // A failing alarm's writes must be rolled back too.
        increment(ctx)?;
        if (info.retry_count as usize) < self.probes.alarm_failures.load(Ordering::SeqCst) {
            return Err(Error::msg("alarm failure on purpose"));
        }
        Ok(())
    }

    async fn websocket_message(
        &mut self,
        ctx: &mut Ctx<Self>,
        ws: WebSocket,
        frame: Frame,
    ) -> Result<()> {
        let text = frame.as_text().unwrap_or_default().to_string();
        self.probes.messages.lock().unwrap().push(text.clone());
        ctx.send(ws, format!("echo:{text}"));
        Ok(())
    }
}

fn increment(ctx: &mut Ctx<Probe>) -> Result<i64> {
    let n = ctx
        .storage()
        .exec(
            "INSERT INTO counter(k, n) VALUES (1, 1) ON CONFLICT(k) DO UPDATE SET n = n + 1 RETURNING n",
            [],
        )?
        .one()?;
    Ok(n)
}

fn read(ctx: &mut Ctx<Probe>) -> Result<i64> {
    Ok(ctx
        .storage()
        .exec("SELECT n FROM counter WHERE k = 1", [])?
        .first::<i64>()?
        .unwrap_or(0))
}

/// Adds one, answers the new count.
pub struct Incr;
impl Message for Incr {
    type Reply = i64;
}
impl Handler<Incr> for Probe {
    async fn handle(&mut self, ctx: &mut Ctx<Self>, _: Incr) -> Result<i64> {
        increment(ctx)
    }
}

/// Adds one after waiting for a permit of the probes' gate (to hold the mailbox busy).
pub struct SlowIncr;
impl Message for SlowIncr {
    type Reply = i64;
}
impl Handler<SlowIncr> for Probe {
    async fn handle(&mut self, ctx: &mut Ctx<Self>, _: SlowIncr) -> Result<i64> {
        let permit = self.probes.gate.acquire().await.map_err(Error::custom)?;
        permit.forget();
        increment(ctx)
    }
}

pub struct Get;
impl Message for Get {
    type Reply = i64;
}
impl Handler<Get> for Probe {
    async fn handle(&mut self, ctx: &mut Ctx<Self>, _: Get) -> Result<i64> {
        read(ctx)
    }
}

/// Writes, then fails in the given way.
pub enum Fail {
    Error,
    Panic,
}
impl Message for Fail {
    type Reply = ();
}
impl Handler<Fail> for Probe {
    async fn handle(&mut self, ctx: &mut Ctx<Self>, how: Fail) -> Result<()> {
        increment(ctx)?;
        ctx.storage().put("written-before-failure", &true)?;
        match how {
            Fail::Error => Err(Error::msg("failing on purpose")),
            Fail::Panic => panic!("panicking on purpose"),
        }
    }
}

/// Sets the alarm `ms` from now.
pub struct SetAlarmIn(pub u64);
impl Message for SetAlarmIn {
    type Reply = SystemTime;
}
impl Handler<SetAlarmIn> for Probe {
    async fn handle(
        &mut self,
        ctx: &mut Ctx<Self>,
        SetAlarmIn(ms): SetAlarmIn,
    ) -> Result<SystemTime> {
        let at = SystemTime::now() + Duration::from_millis(ms);
        ctx.set_alarm(at)?;
        Ok(at)
    }
}

pub struct GetAlarm;
impl Message for GetAlarm {
    type Reply = Option<SystemTime>;
}
impl Handler<GetAlarm> for Probe {
    async fn handle(&mut self, ctx: &mut Ctx<Self>, _: GetAlarm) -> Result<Option<SystemTime>> {
        ctx.get_alarm()
    }
}

/// Runs a closure against the object's context (storage, sockets) and returns its result.
pub type CtxFn<R> = Box<dyn FnOnce(&mut Ctx<Probe>) -> Result<R> + Send>;
pub struct With<R>(pub CtxFn<R>);
impl<R: Send + 'static> Message for With<R> {
    type Reply = R;
}
impl<R: Send + 'static> Handler<With<R>> for Probe {
    async fn handle(&mut self, ctx: &mut Ctx<Self>, With(f): With<R>) -> Result<R> {
        f(ctx)
    }
}

pub fn with<R: Send + 'static>(
    f: impl FnOnce(&mut Ctx<Probe>) -> Result<R> + Send + 'static,
) -> With<R> {
    With(Box::new(f))
}

/// A runtime on `dir` with the probe object as namespace `probe`.
pub fn runtime(dir: &std::path::Path, probes: &Probes, idle: Duration) -> Runtime {
    let options = denizen_runtime::Options {
        data_dir: dir.to_path_buf(),
        idle_timeout: idle,
        ..Default::default()
    };
    runtime_with(options, probes)
}

/// A runtime with `options` and the probe object as namespace `probe`.
pub fn runtime_with(options: denizen_runtime::Options, probes: &Probes) -> Runtime {
    let p = probes.clone();
    Runtime::builder()
        .options(options)
        .object_with("probe", move || Probe { probes: p.clone() })
        .build()
        .expect("runtime")
}

/// Offers a socket to object `name` the way a transport does, without HTTP.
pub async fn open_socket_tagged(
    rt: &Runtime,
    name: &str,
    tags: &str,
) -> (SocketHandle, UnboundedReceiver<Outgoing>) {
    let (upgrade, rx) = Upgrade::new();
    let mut req = http::Request::builder()
        .uri(format!("/?{tags}"))
        .body(Bytes::new())
        .unwrap();
    req.extensions_mut().insert(upgrade.clone());
    let resp = rt.fetch("probe", name, req).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    (upgrade.accepted().expect("accepted"), rx)
}

pub async fn open_socket(rt: &Runtime, name: &str) -> (SocketHandle, UnboundedReceiver<Outgoing>) {
    open_socket_tagged(rt, name, "").await
}

/// Starts background work whose result comes back as a `TaskResult` event.
pub struct StartTask(pub u64);
impl Message for StartTask {
    type Reply = ();
}
impl Handler<StartTask> for Probe {
    async fn handle(&mut self, ctx: &mut Ctx<Self>, StartTask(n): StartTask) -> Result<()> {
        ctx.storage().put("task-started", &n)?;
        ctx.spawn(async move {
            tokio::task::yield_now().await;
            TaskResult(n * 2)
        });
        Ok(())
    }
}

pub struct TaskResult(pub u64);
impl Message for TaskResult {
    type Reply = ();
}
impl Handler<TaskResult> for Probe {
    async fn handle(&mut self, ctx: &mut Ctx<Self>, TaskResult(n): TaskResult) -> Result<()> {
        ctx.storage().put("task-result", &n)?;
        Ok(())
    }
}
