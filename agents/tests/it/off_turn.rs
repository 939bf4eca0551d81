//! Work off the turn: an agent whose handler starts a network call keeps answering other
//! clients' calls and state changes while the call is pending, then gets its result as an
//! event (`spawn_then`), as the late reply of the call that started it (`callable_off_turn`), or
//! as the response to the HTTP request that started it (`answer_later`).
//!
//! The network peer is a loopback TCP server held by the test: it answers only when the test
//! releases it, so "while pending" is a fact of the test, not a matter of timing.

use std::net::SocketAddr;
use std::time::Duration;

use crate::socket::Socket;
use denizen_agents::{Agent, AgentBuilder, AgentContext, AgentHost, Call, Context, Methods};
use denizen_runtime::{
    Bytes, Error, Namespace, Request, Response, Result, Runtime, http, http_util,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
struct State {
    value: i64,
    loading: bool,
    weather: Option<String>,
}

struct Forecaster {
    /// The weather service.
    peer: SocketAddr,
}

/// One question to the weather service: a line out, a line back.
async fn ask(peer: SocketAddr, city: String) -> Result<String> {
    let stream = TcpStream::connect(peer).await?;
    let mut stream = BufReader::new(stream);
    stream
        .get_mut()
        .write_all(format!("{city}\n").as_bytes())
        .await?;
    let mut answer = String::new();
    stream.read_line(&mut answer).await?;
    if answer.is_empty() {
        return Err(Error::msg("the weather service hung up"));
    }
    Ok(answer.trim().to_string())
}

/// Work that panics.
fn crash() -> i64 {
    panic!("the forecast model crashed")
}

impl Forecaster {
    fn refresh(&mut self, cx: &mut Context<Self>, city: String) -> Result<()> {
        let state = cx.state()?;
        cx.set_state(&State {
            loading: true,
            ..state
        })?;
        cx.spawn_then(ask(self.peer, city), |a, cx, weather| {
            Box::pin(a.on_weather(cx, weather))
        });
        Ok(())
    }

    async fn on_weather(&mut self, cx: &mut Context<Self>, weather: Result<String>) -> Result<()> {
        let weather = weather.unwrap_or_else(|e| format!("error: {e}"));
        cx.sql("INSERT INTO log(note) VALUES (?)", (weather.as_str(),))?;
        // Read now, not when the work started: other clients changed it meanwhile.
        let state = cx.state()?;
        cx.set_state(&State {
            loading: false,
            weather: Some(weather),
            ..state
        })?;
        Ok(())
    }
}

impl Agent for Forecaster {
    type State = State;

    fn initial_state(&self) -> State {
        State::default()
    }

    fn methods(m: &mut Methods<Self>) {
        m.callable("refresh", |a, cx, (city,): (String,)| {
            let started = a.refresh(cx, city);
            Box::pin(async move { started })
        });
        m.callable_off_turn("forecast", |a, cx, (city,): (String,)| {
            cx.sql("INSERT INTO log(note) VALUES ('asked')", ())?;
            Ok(ask(a.peer, city))
        });
        m.callable_off_turn("refused", |a, cx, (city,): (String,)| {
            cx.sql("INSERT INTO log(note) VALUES ('refused')", ())?;
            let _never_started = ask(a.peer, city);
            Err::<std::future::Ready<Result<()>>, _>(Error::msg("no forecasts today"))
        });
        m.callable_off_turn("panics", |_, _, (): ()| Ok(async { Ok(crash()) }));
        m.callable("spawn_panics", |_, cx, (): ()| {
            cx.spawn_then(async { Ok(crash().to_string()) }, |a, cx, weather| {
                Box::pin(a.on_weather(cx, weather))
            });
            Box::pin(async { Ok(()) })
        });
        m.callable("spawn_then_fails", |_, cx, (): ()| {
            cx.spawn_then(async { Ok(7) }, |_, cx, v: Result<i64>| {
                Box::pin(async move {
                    let state = cx.state()?;
                    cx.set_state(&State { value: v?, ..state })?;
                    cx.sql("INSERT INTO log(note) VALUES ('rolled back')", ())?;
                    Err(Error::msg("the handler of the result fails"))
                })
            });
            Box::pin(async { Ok(()) })
        });
        m.callable("set", |_, cx, (value,): (i64,)| {
            Box::pin(async move {
                let state = cx.state()?;
                cx.set_state(&State { value, ..state })?;
                Ok(value)
            })
        });
        m.callable("log", |_, cx, (): ()| {
            Box::pin(async move {
                Ok::<Vec<String>, Error>(cx.sql("SELECT note FROM log ORDER BY id", ())?.all()?)
            })
        });
    }

    async fn on_start(&mut self, cx: &mut Context<Self>) -> Result<()> {
        cx.sql(
            "CREATE TABLE IF NOT EXISTS log(id INTEGER PRIMARY KEY, note TEXT)",
            (),
        )?;
        Ok(())
    }

    /// `POST .../weather` with a city: answered with the weather once the service gave it.
    /// `POST .../broken`: the service is asked, but making the answer fails.
    async fn on_request(&mut self, cx: &mut Context<Self>, req: Request) -> Result<Response> {
        let city = String::from_utf8_lossy(req.body()).into_owned();
        if req.uri().path().ends_with("/broken") {
            return Ok(cx.answer_later(ask(self.peer, city), |_, cx, weather| {
                Box::pin(async move {
                    let state = cx.state()?;
                    cx.set_state(&State {
                        weather: Some(weather?),
                        ..state
                    })?;
                    cx.sql("INSERT INTO log(note) VALUES ('rolled back')", ())?;
                    Err(Error::msg("the forecast could not be written up"))
                })
            }));
        }
        let state = cx.state()?;
        cx.set_state(&State {
            loading: true,
            ..state
        })?;
        Ok(
            cx.answer_later(ask(self.peer, city.clone()), |a, cx, weather| {
                Box::pin(async move {
                    a.on_weather(cx, weather).await?;
                    let state = cx.state()?;
                    let weather = state.weather.unwrap_or_default();
                    let text = format!("{weather} in {city}; value {}\n", state.value);
                    Ok(http_util::text(http::StatusCode::OK, &text))
                })
            }),
        )
    }
}

/// The weather service, answering only when the test says so.
struct WeatherService {
    listener: TcpListener,
}

/// A question the service received and has not answered.
struct Pending {
    city: String,
    stream: BufReader<TcpStream>,
}

impl WeatherService {
    async fn start() -> WeatherService {
        WeatherService {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }

    /// Waits for the next question.
    async fn question(&self) -> Pending {
        let (stream, _) = tokio::time::timeout(Duration::from_secs(10), self.listener.accept())
            .await
            .expect("no question reached the weather service")
            .unwrap();
        let mut stream = BufReader::new(stream);
        let mut city = String::new();
        stream.read_line(&mut city).await.unwrap();
        Pending {
            city: city.trim().to_string(),
            stream,
        }
    }
}

impl Pending {
    async fn answer(mut self, weather: &str) {
        self.stream
            .get_mut()
            .write_all(format!("{weather}\n").as_bytes())
            .await
            .unwrap();
    }
}

struct Harness {
    runtime: Runtime,
    ns: Namespace<AgentHost<Forecaster>>,
    service: WeatherService,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let service = WeatherService::start().await;
    let peer = service.addr();
    let runtime = Runtime::builder()
        .data_dir(dir.path())
        .agent_with("forecaster", move || Forecaster { peer })
        .build()
        .unwrap();
    let ns = runtime
        .namespace::<AgentHost<Forecaster>>("forecaster")
        .unwrap();
    Harness {
        runtime,
        ns,
        service,
        _dir: dir,
    }
}

/// A client of the forecaster, with its handshake checked.
struct Client(Socket);

impl std::ops::Deref for Client {
    type Target = Socket;
    fn deref(&self) -> &Socket {
        &self.0
    }
}

impl std::ops::DerefMut for Client {
    fn deref_mut(&mut self) -> &mut Socket {
        &mut self.0
    }
}

impl Client {
    async fn connect(h: &Harness, pk: &str) -> Client {
        let uri = format!("/agents/forecaster/f?_pk={pk}");
        let (socket, preface) = Socket::open(&h.ns, "f", &uri).await;
        let types: Vec<&Value> = preface.iter().map(|f| &f["type"]).collect();
        assert_eq!(
            types,
            [
                "cf_agent_identity",
                "cf_agent_state",
                "cf_agent_mcp_servers"
            ]
        );
        Client(socket)
    }

    async fn state(&mut self) -> State {
        let frame = self.json().await;
        assert_eq!(frame["type"], "cf_agent_state", "{frame}");
        serde_json::from_value(frame["state"].clone()).unwrap()
    }

    async fn reply(&mut self, id: &str) -> Value {
        let frame = self.json().await;
        assert_eq!(frame["type"], "rpc", "{frame}");
        assert_eq!(frame["id"], id, "{frame}");
        frame
    }
}

fn rpc(id: &str, method: &str, args: Value) -> Value {
    json!({"type": "rpc", "id": id, "method": method, "args": args})
}

/// Sends `POST /agents/forecaster/f/<path>` with `body` to the agent, in a task of its own.
fn post(h: &Harness, path: &str, body: &str) -> tokio::task::JoinHandle<Result<Response>> {
    let mut req = http::Request::new(Bytes::from(body.to_string()));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = format!("/agents/forecaster/f/{path}").parse().unwrap();
    tokio::spawn(h.ns.get_by_name("f").fetch(req))
}

fn body(resp: &Response) -> String {
    String::from_utf8_lossy(resp.body()).into_owned()
}

#[tokio::test]
async fn an_agent_serves_other_clients_while_its_network_call_is_pending() {
    let h = harness().await;
    let mut a = Client::connect(&h, "a").await;
    let mut b = Client::connect(&h, "b").await;

    // A starts a network call; its call returns at once, with the state saying so.
    a.send(rpc("1", "refresh", json!(["Paris"])));
    assert!(a.state().await.loading);
    assert_eq!(a.reply("1").await["success"], true);
    assert!(b.state().await.loading);
    let question = h.service.question().await;
    assert_eq!(question.city, "Paris");

    // The service has not answered: the agent still serves B's call and state change.
    b.send(rpc("2", "set", json!([5])));
    assert_eq!(b.state().await.value, 5);
    assert_eq!(b.reply("2").await["result"], 5);
    assert_eq!(a.state().await.value, 5);
    b.send(
        json!({"type": "cf_agent_state", "state": {"value": 6, "loading": true, "weather": null}}),
    );
    assert_eq!(a.state().await.value, 6);
    assert!(a.is_quiet() && b.is_quiet());

    // Answered: the result comes back as an event, broadcast to both, on top of B's change.
    question.answer("sunny").await;
    let expected = State {
        value: 6,
        loading: false,
        weather: Some("sunny".into()),
    };
    assert_eq!(a.state().await, expected);
    assert_eq!(b.state().await, expected);

    // A call declared off the turn answers when its work does, and only then.
    a.send(rpc("3", "forecast", json!(["Oslo"])));
    let question = h.service.question().await;
    assert_eq!(question.city, "Oslo");
    b.send(rpc("4", "set", json!([9])));
    assert_eq!(b.state().await.value, 9);
    assert_eq!(b.reply("4").await["result"], 9);
    assert_eq!(a.state().await.value, 9);
    assert!(a.is_quiet(), "the reply to A came before its work ended");
    question.answer("snow").await;
    let late = a.reply("3").await;
    assert_eq!(late["success"], true, "{late}");
    assert_eq!(late["result"], "snow");
    assert!(b.is_quiet());

    // Writes made in the turn of an off-turn call are committed.
    let log =
        h.ns.get_by_name("f")
            .call(Call::new("log", json!([])))
            .await;
    assert_eq!(log.unwrap(), json!(["sunny", "asked"]));
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn off_turn_failures_reach_the_caller_and_leave_the_agent_serving() {
    let h = harness().await;
    let mut a = Client::connect(&h, "a").await;

    // Refused in the turn: an error at once, its writes rolled back, no work started.
    a.send(rpc("1", "refused", json!(["Rome"])));
    let refused = a.reply("1").await;
    assert_eq!(refused["success"], false);
    assert_eq!(refused["error"], "no forecasts today");

    // Work that panics: the caller gets an error; a spawn_then handler gets it as Err.
    a.send(rpc("2", "panics", json!([])));
    let panicked = a.reply("2").await;
    assert_eq!(panicked["success"], false);
    assert!(
        panicked["error"].as_str().unwrap().contains("panicked"),
        "{panicked}"
    );
    a.send(rpc("3", "spawn_panics", json!([])));
    assert_eq!(a.reply("3").await["success"], true);
    let state = a.state().await;
    assert!(
        state.weather.as_deref().unwrap().starts_with("error: "),
        "{state:?}"
    );

    // A handler of the result that fails: its state change and writes are rolled back.
    a.send(rpc("4", "spawn_then_fails", json!([])));
    assert_eq!(a.reply("4").await["success"], true);
    a.send(rpc("5", "set", json!([1])));
    assert_eq!(a.state().await.value, 1);
    assert_eq!(a.reply("5").await["result"], 1);

    // Nothing of the refused call or the failed handler was kept; the agent still answers.
    a.send(rpc("6", "log", json!([])));
    let log = a.reply("6").await;
    assert_eq!(log["result"].as_array().unwrap().len(), 1, "{log}");
    assert!(log["result"][0].as_str().unwrap().starts_with("error: "));

    // From the server side, the caller gets the late reply too.
    let call =
        h.ns.get_by_name("f")
            .call(Call::new("forecast", json!(["Lima"])));
    let (reply, ()) = tokio::join!(call, async {
        h.service.question().await.answer("fog").await;
    });
    assert_eq!(reply.unwrap(), "fog");
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn an_http_request_is_answered_by_a_later_event_while_the_agent_serves() {
    let h = harness().await;
    let mut a = Client::connect(&h, "a").await;
    let mut b = Client::connect(&h, "b").await;

    // A request starts a network call: its turn's state change reaches the clients at once.
    let asked = post(&h, "weather", "Paris");
    assert!(a.state().await.loading);
    assert!(b.state().await.loading);
    let question = h.service.question().await;
    assert_eq!(question.city, "Paris");

    // The service has not answered: the agent still serves A's call and B's state change.
    a.send(rpc("1", "set", json!([5])));
    assert_eq!(a.state().await.value, 5);
    assert_eq!(a.reply("1").await["result"], 5);
    assert_eq!(b.state().await.value, 5);
    b.send(
        json!({"type": "cf_agent_state", "state": {"value": 6, "loading": true, "weather": null}}),
    );
    assert_eq!(a.state().await.value, 6);
    assert!(
        !asked.is_finished(),
        "the request was answered before its work ended"
    );

    // Answered: the response is made by a later event, on top of B's change, and that event's
    // state change reaches the clients and its writes are committed.
    question.answer("sunny").await;
    let resp = asked.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200, "{}", body(&resp));
    assert_eq!(body(&resp), "sunny in Paris; value 6\n");
    let expected = State {
        value: 6,
        loading: false,
        weather: Some("sunny".into()),
    };
    assert_eq!(a.state().await, expected);
    assert_eq!(b.state().await, expected);
    let log =
        h.ns.get_by_name("f")
            .call(Call::new("log", json!([])))
            .await;
    assert_eq!(log.unwrap(), json!(["sunny"]));
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn a_failing_answer_gives_the_http_caller_an_error_and_leaves_the_agent_serving() {
    let h = harness().await;
    let mut a = Client::connect(&h, "a").await;

    let asked = post(&h, "broken", "Rome");
    h.service.question().await.answer("hail").await;
    let resp = asked.await.unwrap().unwrap();
    assert_eq!(resp.status(), 500);
    assert!(
        body(&resp).contains("the forecast could not be written up"),
        "{}",
        body(&resp)
    );

    // The failed event's state change never reached the client and its writes were rolled
    // back; the agent still answers calls and requests.
    a.send(rpc("1", "set", json!([1])));
    let state = a.state().await;
    assert_eq!((state.value, state.weather), (1, None));
    assert_eq!(a.reply("1").await["result"], 1);
    a.send(rpc("2", "log", json!([])));
    assert_eq!(a.reply("2").await["result"], json!([]));
    let asked = post(&h, "weather", "Lima");
    assert!(a.state().await.loading);
    h.service.question().await.answer("fog").await;
    let resp = asked.await.unwrap().unwrap();
    assert_eq!(body(&resp), "fog in Lima; value 1\n");
    h.runtime.shutdown().await;
}
