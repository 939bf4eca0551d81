//! `ctx.respond_later`: a `fetch` whose answer comes from a later event, after work off the
//! turn, while the object answers other requests.
use std::sync::Arc;
use std::time::Duration;

use denizen_runtime::{
    Bytes, Ctx, DurableObject, Error, Handler, Message, Request, Response, Result, Runtime, http,
    http_util,
};
use denizen_test_util::eventually;
use tokio::sync::{Notify, watch};

/// `POST /slow` answers once the test releases it (with the value to store, or `fail`); `GET /`
/// reads what the answer stored.
struct Waiter {
    release: watch::Receiver<Option<String>>,
    started: Arc<Notify>,
    /// Set by the event that deferred; the answering event finds it when the instance is the
    /// same (the object did not hibernate meanwhile).
    deferred_here: bool,
}

struct Released(String);

impl Message for Released {
    type Reply = Response;
}

impl DurableObject for Waiter {
    async fn fetch(&mut self, ctx: &mut Ctx<Self>, req: Request) -> Result<Response> {
        if req.uri().path() == "/panic" {
            panic!("the instance breaks");
        }
        if req.uri().path() != "/slow" {
            let last: Option<String> = ctx.storage().get("last")?;
            return Ok(http_util::text(http::StatusCode::OK, &format!("{last:?}")));
        }
        self.deferred_here = true;
        let mut release = self.release.clone();
        let started = self.started.clone();
        Ok(ctx.respond_later(async move {
            started.notify_one();
            let value = release
                .wait_for(Option::is_some)
                .await
                .map(|v| v.clone().unwrap_or_default())
                .unwrap_or_default();
            Released(value)
        }))
    }
}

impl Handler<Released> for Waiter {
    async fn handle(&mut self, ctx: &mut Ctx<Self>, Released(value): Released) -> Result<Response> {
        ctx.storage().put("last", &value)?;
        if value == "fail" {
            return Err(Error::msg("the answer was refused"));
        }
        let body = format!("answered {value}, same instance: {}", self.deferred_here);
        Ok(http_util::text(http::StatusCode::OK, &body))
    }
}

fn at(method: http::Method, path: &str) -> Request {
    http::Request::builder()
        .method(method)
        .uri(path)
        .body(Bytes::new())
        .unwrap()
}

struct Harness {
    rt: Runtime,
    release: watch::Sender<Option<String>>,
    started: Arc<Notify>,
}

fn runtime(dir: &std::path::Path) -> Harness {
    let (release, rx) = watch::channel(None);
    let started = Arc::new(Notify::new());
    let notify = started.clone();
    let rt = Runtime::builder()
        .data_dir(dir)
        .idle_timeout(Duration::from_millis(30))
        .object_with("waiter", move || Waiter {
            release: rx.clone(),
            started: notify.clone(),
            deferred_here: false,
        })
        .build()
        .unwrap();
    Harness {
        rt,
        release,
        started,
    }
}

async fn read(rt: &Runtime, name: &str) -> String {
    let resp = rt
        .fetch("waiter", name, at(http::Method::GET, "/"))
        .await
        .unwrap();
    String::from_utf8(resp.body().to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_answer_comes_from_a_later_event_while_other_requests_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let h = runtime(dir.path());
    let slow = tokio::spawn(h.rt.fetch("waiter", "w", at(http::Method::POST, "/slow")));
    h.started.notified().await;

    // The object answers another request while the first waits on its work.
    assert_eq!(read(&h.rt, "w").await, "None");
    assert!(!slow.is_finished());

    // Past the idle timeout (another object, used later, hibernates) it is still in memory.
    assert_eq!(read(&h.rt, "other").await, "None");
    let ns = h.rt.namespace::<Waiter>("waiter").unwrap();
    eventually(
        "the other object hibernating",
        Duration::from_secs(10),
        || ns.live_count() == 1,
    )
    .await;

    h.release.send_replace(Some("v1".into()));
    let resp = slow.await.unwrap().unwrap();
    assert_eq!(resp.status(), http::StatusCode::OK);
    assert_eq!(resp.body().as_ref(), b"answered v1, same instance: true");
    // The answering event's write was committed before the answer left.
    assert_eq!(read(&h.rt, "w").await, "Some(\"v1\")");
    h.rt.shutdown().await;

    let again = runtime(dir.path());
    assert_eq!(read(&again.rt, "w").await, "Some(\"v1\")");
    again.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_answer_reaches_the_caller_and_its_writes_are_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let h = runtime(dir.path());
    let slow = tokio::spawn(h.rt.fetch("waiter", "w", at(http::Method::POST, "/slow")));
    h.started.notified().await;
    h.release.send_replace(Some("fail".into()));
    let err = slow.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("the answer was refused"), "{err}");
    assert_eq!(read(&h.rt, "w").await, "None");
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_answer_still_pending_at_shutdown_is_a_retryable_error() {
    let dir = tempfile::tempdir().unwrap();
    let h = runtime(dir.path());
    let slow = tokio::spawn(h.rt.fetch("waiter", "w", at(http::Method::POST, "/slow")));
    h.started.notified().await;
    h.rt.shutdown().await;
    let err = slow.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::ShuttingDown), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_answer_survives_a_reset_of_the_instance_that_deferred_it() {
    let dir = tempfile::tempdir().unwrap();
    let h = runtime(dir.path());
    let slow = tokio::spawn(h.rt.fetch("waiter", "w", at(http::Method::POST, "/slow")));
    h.started.notified().await;
    let err =
        h.rt.fetch("waiter", "w", at(http::Method::POST, "/panic"))
            .await
            .unwrap_err();
    assert!(matches!(err, Error::Panicked { .. }), "{err:?}");
    // The work reports to the rebuilt instance, which answers the caller.
    h.release.send_replace(Some("v2".into()));
    let resp = slow.await.unwrap().unwrap();
    assert_eq!(resp.body().as_ref(), b"answered v2, same instance: false");
    assert_eq!(read(&h.rt, "w").await, "Some(\"v2\")");
    h.rt.shutdown().await;
}

/// Answers an RPC with the placeholder of `respond_later`: not a place it can work.
struct Misused;

impl Message for Misused {
    type Reply = Response;
}

impl Handler<Misused> for Waiter {
    async fn handle(&mut self, ctx: &mut Ctx<Self>, _: Misused) -> Result<Response> {
        Ok(ctx.respond_later(async { Released("never".into()) }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_answer_outside_fetch_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let h = runtime(dir.path());
    let stub = h.rt.namespace::<Waiter>("waiter").unwrap().get_by_name("w");
    let resp = stub.call(Misused).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        String::from_utf8_lossy(resp.body()).contains("respond_later"),
        "{resp:?}"
    );
    assert_eq!(read(&h.rt, "w").await, "None");
    h.rt.shutdown().await;
}
