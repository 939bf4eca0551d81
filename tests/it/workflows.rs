//! Workflows through the real server: the `approval` example, a SIGKILL in the middle of a
//! `pipeline`, a sleep across a restart, bad input, and `denizen workflows`.

use std::time::Duration;

use crate::support::Server;
use denizen::agent::workflow::{self, Event, Step, Workflow, Workflows};
use serde_json::{Value, json};

async fn get(client: &reqwest::Client, url: String) -> (u16, Value) {
    let resp = client.get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn post(client: &reqwest::Client, url: String, body: &str) -> (u16, Value) {
    let resp = client
        .post(url)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn wait_for_status(
    server: &Server,
    client: &reqwest::Client,
    path: &str,
    want: &str,
) -> Value {
    let url = server.url(path);
    let mut last = Value::Null;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, v) = get(client, url.clone()).await;
        assert_eq!(code, 200, "{v}");
        if v["status"] == want {
            return v;
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out waiting for {want} at {path}; last {last}");
        }
        last = v;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn counter(server: &Server, client: &reqwest::Client, name: &str) -> i64 {
    let (_, v) = get(client, server.url(&format!("/objects/counter/{name}"))).await;
    v["count"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_retries_sleeps_waits_and_completes_with_the_payload() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = server.admin_client();
    let (code, v) = post(
        &client,
        server.url("/workflows/approval?id=order-7"),
        r#"{"request": "refund order 7", "flaky_attempts": 2}"#,
    )
    .await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["id"], "order-7");
    let path = "/workflows/approval/order-7";
    let waiting = wait_for_status(&server, &client, path, "waiting").await;
    let prepare = &waiting["steps"][0];
    assert_eq!(prepare["name"], "prepare");
    assert_eq!(
        prepare["attempts"].as_array().unwrap().len(),
        2,
        "{waiting}"
    );
    assert_eq!(
        waiting["steps"][1]["state"], "complete",
        "the sleep is over"
    );

    let (code, _) = post(
        &client,
        server.url("/workflows/approval/order-7/events/approved"),
        r#"{"by": "ada", "note": "fine"}"#,
    )
    .await;
    assert_eq!(code, 202);
    let done = wait_for_status(&server, &client, path, "complete").await;
    assert_eq!(
        done["output"]["approval"],
        json!({"by": "ada", "note": "fine"})
    );
    assert_eq!(done["output"]["prepared"]["attempt"], 3);

    // A generated id, and the listing.
    let (code, v) = post(
        &client,
        server.url("/workflows/approval"),
        r#"{"request": "x"}"#,
    )
    .await;
    assert_eq!(code, 201);
    assert_eq!(v["id"].as_str().unwrap().len(), 32);
    let (_, list) = get(&client, server.url("/workflows/approval")).await;
    assert_eq!(list["total"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_replays_without_rerunning_completed_steps() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let client = server.admin_client();
    let (code, v) = post(
        &client,
        server.url("/workflows/pipeline?id=p1"),
        r#"{"steps": 6, "work_ms": 1500, "counter": "p1"}"#,
    )
    .await;
    assert_eq!(code, 201, "{v}");
    // Step 2 has counted itself and is working: kill now.
    crate::support::wait_until("step 2 to start", Duration::from_secs(30), || {
        let (server, client) = (&server, &client);
        async move { counter(server, client, "p1-2").await >= 1 }
    })
    .await;
    server.kill();
    server.restart();
    let done = wait_for_status(&server, &client, "/workflows/pipeline/p1", "complete").await;
    assert_eq!(done["output"], json!({"steps": 6, "sum": 55}));
    let mut counts = Vec::new();
    for i in 0..6 {
        counts.push(counter(&server, &client, &format!("p1-{i}")).await);
    }
    assert_eq!(
        counts,
        vec![1, 1, 2, 1, 1, 1],
        "completed steps ran once; the interrupted one ran again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleep_spans_a_restart_and_the_sleeper_is_not_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--idle-timeout", "200ms"]);
    let client = server.admin_client();
    let (code, _) = post(
        &client,
        server.url("/workflows/approval?id=nap"),
        r#"{"request": "nap", "sleep_secs": 3}"#,
    )
    .await;
    assert_eq!(code, 201);
    let path = "/workflows/approval/nap";
    wait_for_status(&server, &client, path, "sleeping").await;
    // Hibernated while it sleeps: no object is left in memory.
    crate::support::wait_until("the sleeper to hibernate", Duration::from_secs(10), || {
        let server = &server;
        async move { server.metric("denizen_live_objects").await == 0.0 }
    })
    .await;
    // The CLI can open its database: the server holds nothing of it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_denizen"))
        .args(["workflows", "approval", "--data-dir"])
        .arg(&server.data_dir)
        .env("DENIZEN_CONFIG", "/nonexistent/denizen.toml")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("nap ") && l.contains("sleeping")),
        "{table}"
    );

    server.kill();
    server.restart();
    let waiting = wait_for_status(&server, &client, path, "waiting").await;
    let nap = &waiting["steps"][1];
    assert_eq!(nap["name"], "cool-down");
    assert!(
        nap["finished_ms"].as_i64().unwrap() >= nap["wake_ms"].as_i64().unwrap(),
        "not woken early: {nap}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = server.admin_client();
    let (code, v) = post(&client, server.url("/workflows/nope"), "{}").await;
    assert_eq!(code, 404);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("no workflow named `nope`")
    );
    let (code, v) = get(&client, server.url("/workflows/approval/ghost")).await;
    assert_eq!(code, 404);
    assert!(v["error"].as_str().unwrap().contains("no instance `ghost`"));
    let (code, _) = post(
        &client,
        server.url("/workflows/approval/ghost/events/approved"),
        "1",
    )
    .await;
    assert_eq!(code, 404);
    let (code, v) = post(
        &client,
        server.url("/workflows/approval"),
        r#"{"request": 5}"#,
    )
    .await;
    assert_eq!(code, 400);
    assert!(v["error"].as_str().unwrap().contains("params"), "{v}");
    let (code, v) = post(&client, server.url("/workflows/approval"), "{not json").await;
    assert_eq!(code, 400);
    assert!(v["error"].as_str().unwrap().contains("not JSON"), "{v}");
    let (code, _) = post(
        &client,
        server.url("/workflows/approval?id=a%20b"),
        r#"{"request": "x"}"#,
    )
    .await;
    assert_eq!(code, 400);
    let (code, _) = post(
        &client,
        server.url("/workflows/approval?id=ok"),
        r#"{"request": "x"}"#,
    )
    .await;
    assert_eq!(code, 201);
    let (code, _) = post(
        &client,
        server.url("/workflows/approval?id=ok"),
        r#"{"request": "x"}"#,
    )
    .await;
    assert_eq!(code, 409);
    let (code, v) = post(&client, server.url("/workflows/approval/ok/explode"), "").await;
    assert_eq!(code, 404);
    assert!(v["error"].as_str().unwrap().contains("no action"));
    let (code, _) = post(&client, server.url("/workflows/approval/ok/resume"), "").await;
    assert_eq!(code, 409, "resume of an instance that is not paused");
    let (code, v) = post(&client, server.url("/workflows/approval/ok/terminate"), "").await;
    assert_eq!(code, 200);
    assert_eq!(v["status"], "terminated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_restart_terminate_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = server.admin_client();
    let (code, _) = post(
        &client,
        server.url("/workflows/approval?id=c1"),
        r#"{"request": "ctl", "sleep_secs": 0}"#,
    )
    .await;
    assert_eq!(code, 201);
    let path = "/workflows/approval/c1";
    wait_for_status(&server, &client, path, "waiting").await;
    let (code, v) = post(&client, server.url(&format!("{path}/pause")), "").await;
    assert_eq!((code, v["status"].as_str()), (200, Some("paused")));
    let (code, _) = post(
        &client,
        server.url(&format!("{path}/events/approved")),
        r#""yes""#,
    )
    .await;
    assert_eq!(code, 202);
    let (_, v) = get(&client, server.url(path)).await;
    assert_eq!(
        v["status"], "paused",
        "an event does not wake a paused instance"
    );
    assert_eq!(v["pending_events"], 1);
    let (code, _) = post(&client, server.url(&format!("{path}/resume")), "").await;
    assert_eq!(code, 200);
    let done = wait_for_status(&server, &client, path, "complete").await;
    assert_eq!(done["output"]["approval"], "yes");

    let (code, _) = post(&client, server.url(&format!("{path}/restart")), "").await;
    assert_eq!(code, 200);
    let again = wait_for_status(&server, &client, path, "waiting").await;
    assert_eq!(again["pending_events"], 0, "restart starts with no events");
    assert!(again.get("output").is_none());
    let (code, v) = post(&client, server.url(&format!("{path}/terminate")), "").await;
    assert_eq!((code, v["status"].as_str()), (200, Some("terminated")));
    let (code, _) = post(&client, server.url(&format!("{path}/events/approved")), "1").await;
    assert_eq!(code, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_routes_are_admin_routes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let stranger = reqwest::Client::new();
    let listed = stranger
        .get(server.url("/workflows/approval"))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 401);
    let created = stranger
        .post(server.url("/workflows/approval?id=x"))
        .header("content-type", "application/json")
        .body(r#"{"request": "x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 401);
    // With the token, a body a web page could forge (text/plain) or another site's Origin is
    // still refused.
    let token = server.admin_token();
    let plain = stranger
        .post(server.url("/workflows/approval?id=x"))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body(r#"{"request": "x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 415);
    let cross_site = stranger
        .post(server.url("/workflows/approval/x/terminate"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403);
    let (code, _) = get(&server.admin_client(), server.url("/workflows/approval")).await;
    assert_eq!(code, 200);
}

/// A workflow that completes with its params.
struct Echo;

impl Workflow for Echo {
    type Params = Value;
    type Output = Value;

    async fn run(&self, event: Event<Value>, _step: Step) -> workflow::Result<Value> {
        Ok(event.payload)
    }
}

/// The workflow routes go through the gateway's authentication hook, as object routes do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_routes_go_through_the_auth_hook() {
    let dir = tempfile::tempdir().unwrap();
    let workflows = Workflows::new().add("approval", Echo);
    let runtime = workflows
        .register(denizen::Runtime::builder().data_dir(dir.path()))
        .build()
        .unwrap();
    let registry = workflows.bind(&runtime).unwrap();
    let gateway = denizen::gateway::Gateway::new(runtime, denizen::gateway::Options::default())
        .with_auth(|parts| match parts.headers.get("x-key") {
            Some(_) => Ok(()),
            None => Err(denizen::gateway::Rejection::forbidden("send x-key")),
        });
    let token = gateway.admin_token().unwrap().to_string();
    let app = gateway
        .router()
        .merge(denizen::workflows_http::routes(&gateway, registry));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        gateway
            .serve_router(listener, app, async move {
                let _ = stopped.await;
            })
            .await
    });
    let client = reqwest::Client::new();
    let refused = client
        .get(format!("http://{addr}/workflows/approval"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(refused.text().await.unwrap(), "send x-key\n");
    let allowed = client
        .get(format!("http://{addr}/workflows/approval"))
        .bearer_auth(&token)
        .header("x-key", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    let _ = stop.send(());
    served.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_instances_wakes_none_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--idle-timeout", "200ms"]);
    let client = server.admin_client();
    for i in 0..5 {
        let (code, v) = post(
            &client,
            server.url(&format!("/workflows/approval?id=nap-{i}")),
            r#"{"request": "nap", "sleep_secs": 3600}"#,
        )
        .await;
        assert_eq!(code, 201, "{v}");
        wait_for_status(
            &server,
            &client,
            &format!("/workflows/approval/nap-{i}"),
            "sleeping",
        )
        .await;
    }
    crate::support::wait_until("the sleepers to hibernate", Duration::from_secs(10), || {
        let server = &server;
        async move { server.metric("denizen_live_objects").await == 0.0 }
    })
    .await;
    let before = server.metric("denizen_activations_total").await;
    let (code, list) = get(&client, server.url("/workflows/approval")).await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["total"], 5, "{list}");
    let statuses: Vec<&str> = list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["sleeping"; 5], "{list}");
    // The workflow's status index may wake; none of the instances does.
    let woken = server.metric("denizen_activations_total").await - before;
    assert!(woken <= 1.0, "{woken} objects woke to list the instances");
}
