//! What one object or one operator must not be able to do to the others: create files by
//! reading, hold the mailbox for ever, stall the worker threads, leak sockets.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use denizen_runtime::admin::Address;
use denizen_runtime::{
    Bytes, Ctx, DurableObject, Error, Frame, Outgoing, Request, Response, Result, Runtime, http,
    http_util, storage,
};
use denizen_test_util::eventually;
use denizen_test_util::probe::*;

/// Reads a count on GET, adds one on POST; its table comes from SCHEMA.
#[derive(Default)]
struct Reader;

impl DurableObject for Reader {
    const SCHEMA: &'static str = "CREATE TABLE IF NOT EXISTS hits(n INTEGER)";

    async fn fetch(&mut self, ctx: &mut Ctx<Self>, req: Request) -> Result<Response> {
        if req.method() == http::Method::POST {
            ctx.storage().exec("INSERT INTO hits VALUES (1)", ())?;
        }
        let n: i64 = ctx.storage().exec("SELECT count(*) FROM hits", ())?.one()?;
        Ok(http_util::text(http::StatusCode::OK, &n.to_string()))
    }
}

fn request(method: http::Method) -> Request {
    http::Request::builder()
        .method(method)
        .uri("/")
        .body(Bytes::new())
        .unwrap()
}

fn files_under(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() { files_under(&p) } else { 1 }
        })
        .sum()
}

#[tokio::test]
async fn reading_objects_that_do_not_exist_creates_nothing_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .idle_timeout(Duration::from_millis(20))
        .object::<Reader>("reader")
        .build()
        .unwrap();
    for i in 0..200 {
        let resp = rt
            .fetch("reader", &format!("ghost-{i}"), request(http::Method::GET))
            .await
            .unwrap();
        assert_eq!(resp.body().as_ref(), b"0");
    }
    let objects = dir.path().join("objects");
    assert_eq!(files_under(&objects), 0, "a read created files");
    let ns = rt.namespace::<Reader>("reader").unwrap();
    eventually("hibernation", Duration::from_secs(10), || {
        ns.live_count() == 0
    })
    .await;
    assert!(
        ns.list().await.unwrap().is_empty(),
        "a read made catalog rows"
    );
    assert_eq!(files_under(&objects), 0);

    // The first write creates the object: its file, its catalog row with its name.
    let resp = rt
        .fetch("reader", "ada", request(http::Method::POST))
        .await
        .unwrap();
    assert_eq!(resp.body().as_ref(), b"1");
    let listed = ns.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name.as_deref(), Some("ada"));
    assert!(files_under(&objects) >= 1);
    rt.shutdown().await;
    // And it is all there after a restart.
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .object::<Reader>("reader")
        .build()
        .unwrap();
    let resp = rt
        .fetch("reader", "ada", request(http::Method::GET))
        .await
        .unwrap();
    assert_eq!(resp.body().as_ref(), b"1");
    rt.shutdown().await;
}

/// Handlers that never finish, or run SQL that never ends.
#[derive(Default)]
struct Stuck;

static STUCK_STARTS: AtomicUsize = AtomicUsize::new(0);

impl DurableObject for Stuck {
    async fn on_start(&mut self, _ctx: &mut Ctx<Self>) -> Result<()> {
        STUCK_STARTS.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn fetch(&mut self, ctx: &mut Ctx<Self>, req: Request) -> Result<Response> {
        match req.uri().path() {
            "/hang" => {
                ctx.storage().put("before-hang", &1)?;
                std::future::pending::<()>().await;
            }
            "/spin-sql" => {
                ctx.storage().exec(
                    "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c)
                     SELECT count(*) FROM c",
                    (),
                )?;
            }
            _ => {}
        }
        let n: Option<i32> = ctx.storage().get("before-hang")?;
        Ok(http_util::text(http::StatusCode::OK, &format!("{n:?}")))
    }
}

fn at(path: &str) -> Request {
    http::Request::builder()
        .uri(path)
        .body(Bytes::new())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_past_the_event_deadline_is_stopped_rolled_back_and_reset() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .event_timeout(Some(Duration::from_millis(300)))
        .object::<Stuck>("stuck")
        .build()
        .unwrap();
    let starts = STUCK_STARTS.load(Ordering::SeqCst);
    let err = rt.fetch("stuck", "s", at("/hang")).await.unwrap_err();
    assert!(matches!(err, Error::EventTimeout { .. }), "{err:?}");
    assert!(err.to_string().contains("ctx.spawn"), "{err}");
    // Rolled back, and a new instance answers the next event.
    let resp = rt.fetch("stuck", "s", at("/")).await.unwrap();
    assert_eq!(resp.body().as_ref(), b"None");
    assert_eq!(STUCK_STARTS.load(Ordering::SeqCst), starts + 2);

    // A query that never ends is interrupted at the same deadline.
    let err = rt.fetch("stuck", "q", at("/spin-sql")).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Storage(storage::Error::TimeBudget { .. }) | Error::EventTimeout { .. }
        ),
        "{err:?}"
    );
    let resp = rt.fetch("stuck", "q", at("/")).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::OK);
    rt.shutdown().await;
}

/// A handler that never returns, counting how many have started.
#[derive(Default)]
struct Hung;

static HUNG: AtomicUsize = AtomicUsize::new(0);

impl DurableObject for Hung {
    async fn fetch(&mut self, ctx: &mut Ctx<Self>, req: Request) -> Result<Response> {
        if req.uri().path() == "/hang" {
            ctx.storage().put("written", &1)?;
            HUNG.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        Ok(http_util::text(http::StatusCode::OK, "done"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_hung_handler_past_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .options(denizen_runtime::Options {
            data_dir: dir.path().to_path_buf(),
            // No event deadline: only the shutdown deadline can end the wait.
            event_timeout: None,
            shutdown_timeout: Duration::from_millis(300),
            ..Default::default()
        })
        .object::<Hung>("hung")
        .build()
        .unwrap();
    let hung = tokio::spawn({
        let rt = rt.clone();
        async move { rt.fetch("hung", "h", at("/hang")).await }
    });
    eventually("the handler to hang", Duration::from_secs(10), || {
        HUNG.load(Ordering::SeqCst) > 0
    })
    .await;
    // Queued behind the hung handler (or refused at the door if shutdown begins first).
    let queued = tokio::spawn({
        let rt = rt.clone();
        async move { rt.fetch("hung", "h", at("/")).await }
    });
    // Bounded only so that a regression fails instead of hanging the suite.
    tokio::time::timeout(Duration::from_secs(60), rt.shutdown())
        .await
        .expect("shutdown returned past its deadline");
    // Both callers hear of it: the hung handler was dropped, the queued event refused.
    let abandoned = hung.await.unwrap().unwrap_err();
    assert!(abandoned.is_retryable(), "{abandoned:?}");
    let refused = queued.await.unwrap().unwrap_err();
    assert!(refused.is_retryable(), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_queries_are_bounded_and_do_not_stall_other_objects() {
    let dir = tempfile::tempdir().unwrap();
    let probes = Probes::new();
    let mut options = denizen_runtime::Options {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    options.operator_query_limits.time_budget = Duration::from_secs(3);
    let rt = runtime_with(options, &probes);
    let ns = rt.namespace::<Probe>("probe").unwrap();
    for name in ["a", "b", "c"] {
        ns.get_by_name(name).call(Incr).await.unwrap();
    }
    // Caps: too many rows, too many bytes.
    let err = rt
        .sql(
            "probe",
            Address::Name("a"),
            "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 100000)
             SELECT n FROM c",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Storage(storage::Error::TooManyRows { .. })),
        "{err:?}"
    );
    let err = rt
        .sql("probe", Address::Name("a"), "SELECT zeroblob(20000000)")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Storage(storage::Error::ResultTooLarge { .. })),
        "{err:?}"
    );

    // Two endless queries, one per worker thread: a third object still answers while they run.
    let forever =
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c) SELECT count(*) FROM c";
    let spin = |name: &'static str| {
        let rt = rt.clone();
        tokio::spawn(async move { rt.sql("probe", Address::Name(name), forever).await })
    };
    let (q1, q2) = (spin("a"), spin("b"));
    // Let both queries get going on the workers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ns.get_by_name("c").call(Incr).await.unwrap(), 2);
    assert!(
        !q1.is_finished() && !q2.is_finished(),
        "the queries ended before the other object answered"
    );
    q1.abort();
    q2.abort();
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_operator_query_stops_at_its_time_budget() {
    let dir = tempfile::tempdir().unwrap();
    let probes = Probes::new();
    let mut options = denizen_runtime::Options {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    options.operator_query_limits.time_budget = Duration::from_millis(200);
    let rt = runtime_with(options, &probes);
    let ns = rt.namespace::<Probe>("probe").unwrap();
    ns.get_by_name("a").call(Incr).await.unwrap();
    let forever =
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c) SELECT count(*) FROM c";
    let err = rt
        .sql("probe", Address::Name("a"), forever)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Storage(storage::Error::TimeBudget { .. })),
        "{err:?}"
    );
    // The object is fine afterwards.
    assert_eq!(ns.get_by_name("a").call(Incr).await.unwrap(), 2);
    rt.shutdown().await;
}

/// Stress: sockets offered at varying moments around hibernations all keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_accepted_around_hibernation_are_never_orphaned() {
    let dir = tempfile::tempdir().unwrap();
    let probes = Probes::new();
    let rt = runtime(dir.path(), &probes, Duration::from_millis(1));
    let ns = rt.namespace::<Probe>("probe").unwrap();
    let mut sockets = Vec::new();
    for i in 0..400u64 {
        let name = format!("room-{i}");
        ns.get_by_name(&name).call(Incr).await.unwrap();
        // The object hibernates 1 ms after that event; the socket is offered at varying moments
        // around then, so some offers land while an instance is hibernating.
        let pause = Duration::from_micros(800 + (i * 7919) % 1500);
        let start = std::time::Instant::now();
        while start.elapsed() < pause {
            std::hint::spin_loop();
        }
        sockets.push(open_socket(&rt, &name).await);
    }
    eventually("hibernation", Duration::from_secs(10), || {
        ns.live_count() == 0
    })
    .await;
    // Every socket still reaches the object: its message is answered.
    for (i, (handle, rx)) in sockets.iter_mut().enumerate() {
        handle.message(Frame::Text(format!("again{i}"))).unwrap();
        let expected = format!("echo:again{i}");
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(out) = rx.recv().await {
                if out == Outgoing::Frame(Frame::Text(expected.clone())) {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(matches!(got, Ok(true)), "socket {i} was orphaned");
    }
    rt.shutdown().await;
}

#[tokio::test]
async fn sockets_forgotten_after_a_failed_close_leave_the_gauge() {
    let dir = tempfile::tempdir().unwrap();
    let probes = Probes::new();
    let rt = runtime(dir.path(), &probes, Duration::from_secs(30));
    let (handle, _rx) = open_socket(&rt, "room").await;
    assert_eq!(rt.metrics().open_sockets.get(), 1);
    rt.shutdown().await;
    // The runtime is gone: the close cannot be delivered, so the transport forgets the socket.
    assert!(handle.closed(1000, String::new(), true).is_err());
    handle.forget();
    assert_eq!(rt.metrics().open_sockets.get(), 0);
}

/// An object whose hibernation and start are slow, to hold the hand-over of its socket registry
/// open: dropping an instance takes 100 ms, starting one 200 ms.
#[derive(Default)]
struct SlowHandover;

static DROPPING: tokio::sync::Notify = tokio::sync::Notify::const_new();

impl Drop for SlowHandover {
    fn drop(&mut self) {
        DROPPING.notify_one();
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl DurableObject for SlowHandover {
    async fn on_start(&mut self, _ctx: &mut Ctx<Self>) -> Result<()> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    }

    async fn fetch(&mut self, ctx: &mut Ctx<Self>, req: Request) -> Result<Response> {
        if req.extensions().get::<denizen_runtime::Upgrade>().is_some() {
            ctx.accept_websocket(&req, &[])?;
            return Ok(http_util::switching_protocols());
        }
        Ok(http_util::text(http::StatusCode::OK, "hi"))
    }

    async fn websocket_message(
        &mut self,
        ctx: &mut Ctx<Self>,
        ws: denizen_runtime::WebSocket,
        frame: Frame,
    ) -> Result<()> {
        ctx.send(ws, frame);
        Ok(())
    }
}

/// A new instance that activates while the previous one is hibernating takes over its socket
/// registry; the hibernating one must not drop it from under the new one, or every socket the
/// new one accepts is orphaned once it hibernates in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn the_socket_registry_survives_an_activation_during_hibernation() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .idle_timeout(Duration::from_millis(1))
        .object::<SlowHandover>("slow")
        .build()
        .unwrap();
    rt.fetch("slow", "x", at("/")).await.unwrap();
    // The first instance starts hibernating: its drop holds the hand-over open for 100 ms.
    tokio::time::timeout(Duration::from_secs(10), DROPPING.notified())
        .await
        .expect("hibernation to start");
    // A socket offered now activates a second instance, which accepts it after its 200 ms start,
    // once the first has finished hibernating.
    let (upgrade, mut rx) = denizen_runtime::Upgrade::new();
    let mut req = at("/");
    req.extensions_mut().insert(upgrade.clone());
    let resp = rt.fetch("slow", "x", req).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    let handle = upgrade.accepted().unwrap();
    // The second instance hibernates too; the socket must still reach the third.
    let ns = rt.namespace::<SlowHandover>("slow").unwrap();
    eventually("the second hibernation", Duration::from_secs(10), || {
        ns.live_count() == 0
    })
    .await;
    handle.message(Frame::Text("still here?".into())).unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
    assert!(
        matches!(echoed, Ok(Some(Outgoing::Frame(Frame::Text(ref t)))) if t == "still here?"),
        "the socket was orphaned: {echoed:?}"
    );
    rt.shutdown().await;
}

/// Holds each WebSocket message until the test lets it through.
#[derive(Default)]
struct Gated;

static GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

impl DurableObject for Gated {
    async fn fetch(&mut self, ctx: &mut Ctx<Self>, req: Request) -> Result<Response> {
        ctx.accept_websocket(&req, &[])?;
        Ok(http_util::switching_protocols())
    }

    async fn websocket_message(
        &mut self,
        _ctx: &mut Ctx<Self>,
        _ws: denizen_runtime::WebSocket,
        _frame: Frame,
    ) -> Result<()> {
        GATE.acquire().await.map_err(Error::custom)?.forget();
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_may_have_only_its_quota_of_messages_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let options = denizen_runtime::Options {
        data_dir: dir.path().to_path_buf(),
        socket_message_quota: 3,
        ..Default::default()
    };
    let rt = Runtime::builder()
        .options(options)
        .object::<Gated>("gated")
        .build()
        .unwrap();
    let (upgrade, _rx) = denizen_runtime::Upgrade::new();
    let mut req = at("/");
    req.extensions_mut().insert(upgrade.clone());
    rt.fetch("gated", "g", req).await.unwrap();
    let handle = upgrade.accepted().unwrap();
    for i in 0..3 {
        handle.message(Frame::Text(format!("m{i}"))).unwrap();
    }
    // The fourth is given back, unharmed, with the reason.
    let refused = handle.message(Frame::Text("m3".into())).unwrap_err();
    assert!(
        matches!(refused.error, Error::SocketQuota { limit: 3 }),
        "{refused:?}"
    );
    assert!(refused.error.is_overloaded());
    assert_eq!(refused.frame, Frame::Text("m3".into()));
    // Room comes back once the object handled one.
    let room = tokio::spawn({
        let handle = handle.clone();
        async move { handle.room(0).await }
    });
    GATE.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), room)
        .await
        .expect("room after a message was handled")
        .unwrap();
    handle.message(refused.frame).unwrap();
    GATE.add_permits(3);
    rt.shutdown().await;
}
