//! One agent per user: notes in its state (synced to every client of that user), reminders on a
//! schedule, and a web lookup that runs off the agent's turn, so a slow site never keeps the
//! agent from its clients.
//!
//! The agent of user `<name>` is at `/agents/user-agent/<name>`, for Cloudflare's `agents`
//! JavaScript client (`new AgentClient({ agent: "UserAgent", name, host })`). Callables:
//!
//! - `addNote(text)`: adds a note; every client of that user sees the new state;
//! - `remindIn(seconds, text)`: a reminder, added to the notes when it is due (it survives
//!   hibernation and restarts; the agent wakes for it);
//! - `lookup(url)`: starts fetching `url` and answers at once; when the site answers, the result
//!   lands in the state's `lastLookup` (every client sees it). Meanwhile the agent serves its
//!   clients as usual;
//! - `status(url)`: fetches `url` too, but the caller's promise waits for the answer (the agent
//!   still serves the others meanwhile).
//!
//! Run it:
//!
//! ```text
//! cargo run --example user-agent -- serve
//! ```
//!
//! and talk to it with `examples/user-agent.mjs` (`npm install agents@0.32.0 ws@8`, then
//! `node examples/user-agent.mjs 127.0.0.1:8787 ada`):
//!
//! ```text
//! state {"lastLookup":null,"lookups":0,"notes":[]}
//! state {"lastLookup":null,"lookups":0,"notes":["buy milk"]}
//! addNote -> 1
//! remindIn -> scheduled
//! state {"lastLookup":null,"lookups":0,"notes":["buy milk","reminder: stand up"]}
//! ```

use std::time::Duration;

use denizen::agent::{Agent, AgentContext, Context, Methods};
use denizen::app::App;
use denizen::{Error, Result};
use serde::{Deserialize, Serialize};

/// Notes a user may keep, and the longest one.
const MAX_NOTES: usize = 100;
const MAX_NOTE: usize = 1000;
/// The longest reminder delay: a week.
const MAX_DELAY_SECONDS: f64 = 7.0 * 86_400.0;
/// How long a lookup may take, and how much of the page it reads.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
const LOOKUP_MAX_BYTES: usize = 1 << 20;

/// One user's agent.
#[derive(Default)]
struct UserAgent;

/// What every client of the user sees.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct State {
    notes: Vec<String>,
    /// Lookups finished.
    lookups: u64,
    /// The last one: `{url, status, bytes}` or `{url, error}`.
    last_lookup: Option<serde_json::Value>,
}

/// What a lookup found.
#[derive(Debug, Serialize)]
struct Page {
    url: String,
    status: u16,
    bytes: usize,
}

impl UserAgent {
    fn add_note(&mut self, cx: &mut Context<Self>, text: String) -> Result<usize> {
        let text = text.trim();
        if text.is_empty() || text.chars().count() > MAX_NOTE {
            return Err(Error::msg(format!("a note has 1 to {MAX_NOTE} characters")));
        }
        let mut state = cx.state()?;
        if state.notes.len() >= MAX_NOTES {
            return Err(Error::msg(format!(
                "at most {MAX_NOTES} notes; remove some first"
            )));
        }
        state.notes.push(text.to_string());
        cx.set_state(&state)?;
        Ok(state.notes.len())
    }

    fn remind_in(
        &mut self,
        cx: &mut Context<Self>,
        seconds: f64,
        text: String,
    ) -> Result<&'static str> {
        if !(0.0..=MAX_DELAY_SECONDS).contains(&seconds) {
            return Err(Error::msg("the delay is 0 to 604800 seconds"));
        }
        cx.schedule(Duration::from_secs_f64(seconds), "remind", &text)?;
        Ok("scheduled")
    }

    /// The schedule's task.
    fn remind(&mut self, cx: &mut Context<Self>, text: String) -> Result<()> {
        self.add_note(cx, format!("reminder: {text}")).map(drop)
    }

    /// Starts the lookup off the turn; [`UserAgent::looked_up`] gets its result as an event.
    fn lookup(&mut self, cx: &mut Context<Self>, url: String) -> Result<&'static str> {
        let fetch = fetch(url.clone())?;
        cx.spawn_then(fetch, move |agent, cx, page| {
            Box::pin(async move { agent.looked_up(cx, url, page) })
        });
        Ok("started")
    }

    fn looked_up(&mut self, cx: &mut Context<Self>, url: String, page: Result<Page>) -> Result<()> {
        let mut state = cx.state()?;
        state.lookups += 1;
        state.last_lookup = Some(match page {
            Ok(page) => serde_json::json!(page),
            Err(e) => serde_json::json!({ "url": url, "error": e.to_string() }),
        });
        cx.set_state(&state)?;
        Ok(())
    }
}

/// The request for `url`, ready to run anywhere: an HTTP GET that reads at most
/// `LOOKUP_MAX_BYTES` of the answer within `LOOKUP_TIMEOUT`. A URL that is not http(s) is
/// refused before anything starts.
fn fetch(url: String) -> Result<impl Future<Output = Result<Page>> + Send + 'static> {
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2048 {
        return Err(Error::msg("look up an http:// or https:// URL"));
    }
    Ok(async move {
        let failed = |e: reqwest::Error| Error::msg(format!("{url}: {e}"));
        let client = reqwest::Client::builder()
            .timeout(LOOKUP_TIMEOUT)
            .build()
            .map_err(failed)?;
        let mut resp = client.get(&url).send().await.map_err(failed)?;
        let status = resp.status().as_u16();
        let mut bytes = 0;
        while let Some(chunk) = resp.chunk().await.map_err(failed)? {
            bytes += chunk.len();
            if bytes >= LOOKUP_MAX_BYTES {
                break;
            }
        }
        Ok(Page { url, status, bytes })
    })
}

impl Agent for UserAgent {
    type State = State;

    fn initial_state(&self) -> State {
        State::default()
    }

    fn methods(m: &mut Methods<Self>) {
        m.callable("addNote", |a, cx, (text,): (String,)| {
            let added = a.add_note(cx, text);
            Box::pin(async move { added })
        })
        .callable("remindIn", |a, cx, (seconds, text): (f64, String)| {
            let scheduled = a.remind_in(cx, seconds, text);
            Box::pin(async move { scheduled })
        })
        .callable("lookup", |a, cx, (url,): (String,)| {
            let started = a.lookup(cx, url);
            Box::pin(async move { started })
        })
        // The caller waits for the page; the agent does not.
        .callable_off_turn("status", |_a, _cx, (url,): (String,)| fetch(url))
        .task("remind", |a, cx, text: String| {
            let reminded = a.remind(cx, text);
            Box::pin(async move { reminded })
        });
    }
}

fn main() -> std::process::ExitCode {
    App::new("user-agent")
        .agent::<UserAgent>("user-agent")
        .run()
}
