//! Requests to objects: the `/objects` route, [`crate::Gateway::forward`], bounded bodies and
//! the mapping of runtime errors to HTTP answers.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, OriginalUri, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use denizen_runtime::Error as RuntimeError;
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use percent_encoding::percent_decode_str;
use tracing::Instrument;

use crate::Inner;
use crate::upgrade::upgrade_socket;

/// A plain-text answer ending in a newline.
pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut body = body.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

pub(crate) fn error_response(e: &RuntimeError) -> Response {
    let status = match e {
        RuntimeError::UnknownNamespace(_) | RuntimeError::NoSuchObject { .. } => {
            StatusCode::NOT_FOUND
        }
        RuntimeError::InvalidId { .. } => StatusCode::BAD_REQUEST,
        RuntimeError::Overloaded { .. }
        | RuntimeError::ShuttingDown
        | RuntimeError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        // The object was reset; the caller may try again, the handler's author should look.
        RuntimeError::EventTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    // Overload is the load's doing, counted in the metrics: one line per refused request would
    // let a flood write the log too.
    if status == StatusCode::SERVICE_UNAVAILABLE {
        tracing::debug!(error = %e, "object request refused");
    } else if status.is_server_error() {
        tracing::warn!(error = %e, "object request failed");
    }
    let mut resp = text(status, e.to_string());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// Splits `<namespace>/<name>[/rest]` (a path after its route's prefix): namespace and name
/// percent-decoded as UTF-8, `rest` (at least `/`) keeps its encoding. `None` when the namespace
/// or the name is missing or does not decode. Routes of your own that name objects should use it,
/// so that `caf%C3%A9` and `café` are one object everywhere.
pub fn split_path(path: &str) -> Option<(String, String, String)> {
    let mut parts = path.splitn(3, '/');
    let ns = parts.next().filter(|s| !s.is_empty())?;
    let name = parts.next().filter(|s| !s.is_empty())?;
    let rest = parts.next().unwrap_or("");
    let decode = |s: &str| {
        percent_decode_str(s)
            .decode_utf8()
            .ok()
            .map(|c| c.into_owned())
    };
    Some((decode(ns)?, decode(name)?, format!("/{rest}")))
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

pub(crate) async fn object_route(
    State(inner): State<Arc<Inner>>,
    req: axum::extract::Request,
) -> Response {
    let path = req.uri().path().strip_prefix("/objects/").unwrap_or("");
    let Some((namespace, name, rest)) = split_path(path) else {
        let resp = text(
            StatusCode::NOT_FOUND,
            "address an object as /objects/<namespace>/<name>[/path]",
        );
        inner.metrics.count_status(resp.status());
        return resp;
    };
    // The object sees its own path: /rest?query.
    let object_uri = match req.uri().query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest,
    };
    let span = tracing::info_span!("object", namespace = %namespace, object = %name, method = %req.method());
    let resp = match object_uri.parse::<Uri>() {
        Ok(uri) => {
            forward(inner.clone(), req, &namespace, &name, Some(uri))
                .instrument(span)
                .await
        }
        Err(_) => text(
            StatusCode::BAD_REQUEST,
            "the request path is not a valid URI",
        ),
    };
    inner.metrics.count_status(resp.status());
    resp
}

/// One request to one object: auth hook, upgrade offer, error mapping. `object_uri` replaces the
/// request's URI for the object (the original goes into the extensions either way).
pub(crate) async fn forward(
    inner: Arc<Inner>,
    req: axum::extract::Request,
    namespace: &str,
    name: &str,
    object_uri: Option<Uri>,
) -> Response {
    let (mut parts, body) = req.into_parts();
    if let Some(auth) = &inner.auth
        && let Err(r) = auth(&parts)
    {
        tracing::debug!(status = %r.status, "refused by the auth hook");
        return text(r.status, r.message);
    }
    if !inner.runtime.has_namespace(namespace) {
        return error_response(&RuntimeError::UnknownNamespace(namespace.to_string()));
    }
    let upgrade = if is_upgrade(&parts.headers) {
        match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(ws) => Some(ws),
            Err(rejection) => return text(rejection.status(), rejection.body_text()),
        }
    } else {
        None
    };
    let body = if upgrade.is_some() {
        Bytes::new()
    } else {
        match read_body(&parts.headers, body, inner.options.max_body_size).await {
            Ok(b) => b,
            Err(resp) => return resp,
        }
    };
    let original = parts.uri.clone();
    let mut object_req = http::Request::new(body);
    *object_req.method_mut() = parts.method;
    *object_req.uri_mut() = object_uri.unwrap_or(parts.uri);
    *object_req.version_mut() = parts.version;
    *object_req.headers_mut() = parts.headers;
    // Whatever the application's middleware attached (a user id, say) travels on to the object.
    *object_req.extensions_mut() = parts.extensions;
    object_req.extensions_mut().insert(OriginalUri(original));

    let Some(ws) = upgrade else {
        return match inner.runtime.fetch(namespace, name, object_req).await {
            Ok(resp) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the object answered 101 to a request that is not a WebSocket upgrade",
            ),
            Ok(resp) => {
                let (p, b) = resp.into_parts();
                Response::from_parts(p, Body::from(b))
            }
            Err(e) => error_response(&e),
        };
    };
    upgrade_socket(inner, ws, object_req, namespace, name).await
}

/// The whole body, bounded: 413 past `max`, 400 if the client broke off.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    max: usize,
) -> Result<Bytes, Response> {
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request bodies are limited to {max} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, max).await.map_err(|e| {
        let e = e.into_inner();
        if e.is::<http_body_util::LengthLimitError>() {
            too_large()
        } else {
            text(
                StatusCode::BAD_REQUEST,
                format!("could not read the request body: {e}"),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn paths_split_and_decode() {
        assert_eq!(
            split_path("counter/alice/increment"),
            Some(("counter".into(), "alice".into(), "/increment".into()))
        );
        assert_eq!(
            split_path("chat/the%20lobby"),
            Some(("chat".into(), "the lobby".into(), "/".into()))
        );
        assert_eq!(
            split_path("a/b/c/d%2F"),
            Some(("a".into(), "b".into(), "/c/d%2F".into()))
        );
        assert_eq!(
            split_path("a/b/"),
            Some(("a".into(), "b".into(), "/".into()))
        );
        assert_eq!(split_path("counter"), None);
        assert_eq!(split_path("counter/"), None);
        assert_eq!(split_path("/x"), None);
        assert_eq!(split_path("a/%FF"), None);
    }

    #[test]
    fn runtime_errors_map_to_statuses() {
        let overloaded = error_response(&RuntimeError::Overloaded {
            namespace: "chat".into(),
            id: "abc".into(),
            capacity: 4,
        });
        assert_eq!(overloaded.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(overloaded.headers()[header::RETRY_AFTER], "1");
        let cases = [
            (RuntimeError::UnknownNamespace("x".into()), 404),
            (
                RuntimeError::InvalidId {
                    namespace: "x".into(),
                    reason: "bad".into(),
                },
                400,
            ),
            (RuntimeError::ShuttingDown, 503),
            (
                RuntimeError::EventTimeout {
                    after: Duration::from_secs(1),
                },
                504,
            ),
            (RuntimeError::Unavailable, 503),
            (
                RuntimeError::Panicked {
                    message: "boom".into(),
                },
                500,
            ),
            (RuntimeError::msg("app error"), 500),
        ];
        for (e, status) in cases {
            assert_eq!(error_response(&e).status().as_u16(), status, "{e}");
        }
    }
}
