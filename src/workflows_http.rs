//! The HTTP surface of workflows, mounted beside the gateway's routes:
//!
//! - `GET /workflows/<name>` lists the instances with their status
//! - `POST /workflows/<name>[?id=<id>]` creates an instance; the body is its JSON params;
//!   answers `{"id": ...}`
//! - `GET /workflows/<name>/<id>` answers the status (`status`, `output` or `error`, `steps`)
//! - `POST /workflows/<name>/<id>/events/<type>` sends an event; the body is its JSON payload
//! - `POST /workflows/<name>/<id>/{pause,resume,terminate,restart}` answers the new status
//!
//! The routes are admin routes: they need the admin token and JSON (see
//! [`Gateway::guard_admin`]), and the gateway's authentication hook sees every request first.
//!
//! Errors answer `{"error": "..."}` with 404 (unknown workflow or instance), 400 (bad params, id
//! or JSON), 409 (an action the instance's status does not allow, an id already taken) or 503.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use denizen_agents::workflow::{Action, CreateOptions, Error, Registry};
use denizen_gateway::Gateway;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

/// Instances listed by `GET /workflows/<name>` (with their status) at most.
const LIST_LIMIT: usize = 1000;

/// The `/workflows` routes over `registry`, behind `gateway`'s authentication hook and admin
/// token; merge them into the gateway's router.
pub fn routes(gateway: &Gateway, registry: Registry) -> Router {
    let routes = Router::new()
        .route("/workflows/{name}", get(list).post(create))
        .route("/workflows/{name}/{id}", get(status))
        .route("/workflows/{name}/{id}/events/{event_type}", post(event))
        .route("/workflows/{name}/{id}/{action}", post(control))
        .with_state(registry);
    gateway.guard_admin(gateway.guard_auth(routes))
}

fn error(e: Error) -> Response {
    let status = match &e {
        Error::UnknownWorkflow(_) | Error::UnknownInstance { .. } => StatusCode::NOT_FOUND,
        Error::InvalidParams(_) | Error::InvalidId(_) | Error::Codec(_) => StatusCode::BAD_REQUEST,
        Error::AlreadyExists { .. } | Error::InvalidState { .. } => StatusCode::CONFLICT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    reply(status, &json!({ "error": e.to_string() }))
}

fn reply<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    denizen_runtime::http_util::json(status, value)
        .map(axum::body::Body::from)
        .into_response()
}

/// The body as JSON (an empty body is `null`).
fn body_json(body: &Bytes) -> Result<Value, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body)
        .map_err(|e| Error::InvalidParams(format!("the body is not JSON: {e}")))
}

#[derive(Deserialize)]
struct CreateQuery {
    id: Option<String>,
}

async fn create(
    State(registry): State<Registry>,
    Path(name): Path<String>,
    Query(q): Query<CreateQuery>,
    body: Bytes,
) -> Response {
    let params = match body_json(&body) {
        Ok(v) => v,
        Err(e) => return error(e),
    };
    let options = CreateOptions {
        id: q.id,
        notify: None,
    };
    match registry.create(&name, options, params).await {
        Ok(id) => reply(StatusCode::CREATED, &json!({ "id": id })),
        Err(e) => error(e),
    }
}

async fn list(State(registry): State<Registry>, Path(name): Path<String>) -> Response {
    // From the catalog and the workflow's status index: listing wakes no instance.
    let instances = match registry.list_statuses(&name).await {
        Ok(instances) => instances,
        Err(e) => return error(e),
    };
    let out: Vec<_> = instances.iter().take(LIST_LIMIT).collect();
    reply(
        StatusCode::OK,
        &json!({ "instances": out, "total": instances.len() }),
    )
}

async fn status(
    State(registry): State<Registry>,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    match registry.status(&name, &id).await {
        Ok(s) => reply(StatusCode::OK, &s),
        Err(e) => error(e),
    }
}

async fn event(
    State(registry): State<Registry>,
    Path((name, id, event_type)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let payload = match body_json(&body) {
        Ok(v) => v,
        Err(e) => return error(e),
    };
    match registry.send_event(&name, &id, &event_type, payload).await {
        Ok(()) => reply(StatusCode::ACCEPTED, &json!({ "ok": true })),
        Err(e) => error(e),
    }
}

async fn control(
    State(registry): State<Registry>,
    Path((name, id, action)): Path<(String, String, String)>,
) -> Response {
    let action = match action.as_str() {
        "pause" => Action::Pause,
        "resume" => Action::Resume,
        "terminate" => Action::Terminate,
        "restart" => Action::Restart,
        other => {
            let message = format!(
                "no action `{other}`; use pause, resume, terminate, restart or events/<type>"
            );
            return reply(StatusCode::NOT_FOUND, &json!({ "error": message }));
        }
    };
    match registry.control(&name, &id, action).await {
        Ok(s) => reply(StatusCode::OK, &s),
        Err(e) => error(e),
    }
}
