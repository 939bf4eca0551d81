//! Small helpers to build responses without naming the `http` builder each time.

use bytes::Bytes;
use http::{StatusCode, header};
use serde::Serialize;

use crate::object::Response;

/// A JSON response with the given status.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => with_type(status, "application/json", body.into()),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("could not encode the response as JSON: {e}\n"),
        ),
    }
}

/// A plain-text response.
pub fn text(status: StatusCode, body: &str) -> Response {
    with_type(
        status,
        "text/plain; charset=utf-8",
        Bytes::copy_from_slice(body.as_bytes()),
    )
}

/// An HTML page.
pub fn html(status: StatusCode, body: &str) -> Response {
    with_type(
        status,
        "text/html; charset=utf-8",
        Bytes::copy_from_slice(body.as_bytes()),
    )
}

/// A redirect (`302 Found`, `303 See Other`, ...) to `location`; a location that is not a valid
/// header value answers 500 instead.
pub fn redirect(status: StatusCode, location: &str) -> Response {
    match header::HeaderValue::from_str(location) {
        Ok(value) => {
            let mut resp = Response::new(Bytes::new());
            *resp.status_mut() = status;
            resp.headers_mut().insert(header::LOCATION, value);
            resp
        }
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the redirect location is not a valid header value\n",
        ),
    }
}

/// The answer to a WebSocket upgrade the object accepted with `ctx.accept_websocket`.
pub fn switching_protocols() -> Response {
    let mut resp = Response::new(Bytes::new());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp
}

fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}
