//! HTTP answers given later ([`Ctx::respond_later`]): the caller of a `fetch` keeps waiting
//! while slow work runs off the turn, and gets the response a later event of the object makes.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Either};
use tokio::sync::oneshot;

use crate::actor::{Event, Job};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::object::{DurableObject, Handler, Message, Response};
use crate::runtime::Shared;

/// Where the answer to a waiting HTTP caller goes. A plain sender for an answer given in the
/// event (every request but the deferred ones: no allocation or lock on that path); once a
/// handler defers, it is shared by that event and the work that answers later, so whichever
/// fails first can still tell the caller. Dropped by everyone, it leaves the caller with
/// [`Error::Unavailable`] rather than waiting for ever.
pub(crate) struct Answer(Route);

type Sender = oneshot::Sender<Result<Response>>;

enum Route {
    Direct(Option<Sender>),
    Shared(Arc<Mutex<Option<Sender>>>),
}

impl Answer {
    pub(crate) fn new(tx: Sender) -> Self {
        Answer(Route::Direct(Some(tx)))
    }

    /// A handle for the work that answers later; from now on both share the one sender.
    fn share(&mut self) -> Answer {
        let shared = match &mut self.0 {
            Route::Direct(tx) => Arc::new(Mutex::new(tx.take())),
            Route::Shared(shared) => shared.clone(),
        };
        self.0 = Route::Shared(shared.clone());
        Answer(Route::Shared(shared))
    }

    /// Answers the caller; only the first answer counts.
    pub(crate) fn send(self, answer: Result<Response>) {
        let tx = match self.0 {
            Route::Direct(tx) => tx,
            Route::Shared(shared) => shared.lock().unwrap_or_else(|e| e.into_inner()).take(),
        };
        if let Some(tx) = tx {
            let _ = tx.send(answer);
        }
    }
}

/// Starts the work given to `respond_later` for one caller: the returned future is the task,
/// its output the event that makes the answer.
type Start<O> = Box<dyn FnOnce(Answer) -> BoxFuture<'static, Event<O>> + Send>;

/// Rides in the extensions of the placeholder response `respond_later` returns, so the runtime
/// knows that response stands for an answer given later, and by what.
struct Later<O: DurableObject>(Arc<Mutex<Option<Start<O>>>>);

impl<O: DurableObject> Clone for Later<O> {
    fn clone(&self) -> Self {
        Later(self.0.clone())
    }
}

/// The placeholder response for an answer `fut` will lead to (see [`Ctx::respond_later`]).
pub(crate) fn placeholder<O, M, F>(shared: Arc<Shared>, fut: F) -> Response
where
    O: Handler<M>,
    M: Message<Reply = Response>,
    F: Future<Output = M> + Send + 'static,
{
    let start: Start<O> = Box::new(move |answer: Answer| {
        Box::pin(async move {
            // The work is not an event: no event deadline bounds it. Shutdown does not wait
            // for it either: its caller is told to retry.
            let stopping = Box::pin(shared.stopping());
            let work = Box::pin(AssertUnwindSafe(fut).catch_unwind());
            match futures_util::future::select(work, stopping).await {
                Either::Left((Ok(msg), _)) => Event::Job(Box::new(AnswerJob::new(msg, answer))),
                Either::Left((Err(panic), _)) => {
                    let message = crate::actor::panic_message(&*panic);
                    tracing::error!(panic = %message, "work started with ctx.respond_later panicked");
                    answer.send(Err(Error::Panicked { message }));
                    Event::BackgroundDone
                }
                Either::Right(((), _)) => {
                    answer.send(Err(Error::ShuttingDown));
                    Event::BackgroundDone
                }
            }
        }) as BoxFuture<'static, Event<O>>
    });
    let mut resp = http::Response::builder()
        .status(http::StatusCode::INTERNAL_SERVER_ERROR)
        .body(bytes::Bytes::from_static(
            b"this response stands for an answer given later with ctx.respond_later; \
              only fetch (and the handler that gives that answer) may return it\n",
        ))
        .unwrap_or_default();
    resp.extensions_mut()
        .insert(Later::<O>(Arc::new(Mutex::new(Some(start)))));
    resp
}

/// What a handler answering an HTTP caller returned: the response itself, or the placeholder of
/// [`Ctx::respond_later`], whose work is then queued to start after the event commits (and is
/// dropped with the event's other outputs if it fails). `None` means "answered later".
pub(crate) fn answer_or_defer<O: DurableObject>(
    ctx: &mut Ctx<O>,
    mut resp: Response,
    answer: &mut Answer,
) -> Option<Response> {
    let start = resp
        .extensions_mut()
        .remove::<Later<O>>()
        .and_then(|later| later.0.lock().unwrap_or_else(|e| e.into_inner()).take());
    match start {
        Some(start) => {
            ctx.start_after_commit(start(answer.share()));
            None
        }
        None => Some(resp),
    }
}

/// The event that makes a later answer: `Handler<M>` turns the work's output into the response.
pub(crate) struct AnswerJob<M> {
    msg: Option<M>,
    resp: Option<Response>,
    answer: Answer,
}

impl<M> AnswerJob<M> {
    fn new(msg: M, answer: Answer) -> Self {
        AnswerJob {
            msg: Some(msg),
            resp: None,
            answer,
        }
    }
}

impl<O, M> Job<O> for AnswerJob<M>
where
    O: Handler<M>,
    M: Message<Reply = Response>,
{
    fn run<'a>(&'a mut self, obj: &'a mut O, ctx: &'a mut Ctx<O>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let msg = self.msg.take().ok_or(Error::Unavailable)?;
            let resp = obj.handle(ctx, msg).await?;
            // The handler may itself answer later again (more slow work first).
            self.resp = answer_or_defer(ctx, resp, &mut self.answer);
            Ok(())
        })
    }
    fn succeed(self: Box<Self>) {
        if let Some(resp) = self.resp {
            self.answer.send(Ok(resp));
        }
    }
    fn fail(self: Box<Self>, error: Error) {
        self.answer.send(Err(error));
    }
    fn is_task(&self) -> bool {
        true
    }
}
