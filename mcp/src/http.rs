//! The Streamable HTTP client rmcp drives, with one correction for deployed servers.
//!
//! rmcp re-initializes a session (once, replaying the request) when the server answers `404` to a
//! request carrying `Mcp-Session-Id`, as the spec says. The TypeScript SDK's servers — the most
//! deployed ones — answer `400 "No valid session ID provided"` instead. This wrapper turns that
//! answer into rmcp's `SessionExpired`, so both get the same single re-initialization.

use std::{collections::HashMap, sync::Arc};

use futures_util::stream::BoxStream;
use http::{HeaderName, HeaderValue};
use rmcp::{
    model::{ClientJsonRpcMessage, ServerJsonRpcMessage},
    transport::streamable_http_client::{
        StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
        StreamableHttpResponseLimits,
    },
};
use sse_stream::{Error as SseError, Sse};

/// `reqwest::Client` plus the "400 means the session is gone" rule.
#[derive(Clone, Debug)]
pub struct SessionHttpClient {
    inner: reqwest::Client,
}

impl SessionHttpClient {
    /// Wraps a client (its timeouts and TLS settings are kept).
    pub fn new(inner: reqwest::Client) -> Self {
        SessionHttpClient { inner }
    }
}

/// True when an error text from a request that carried a session id says the session is unknown.
fn mentions_lost_session(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    text.contains("session") && !text.contains("protocol version")
}

/// Reclassifies a post result as `SessionExpired` when the server said the session is gone.
fn reclassify(
    result: Result<StreamableHttpPostResponse, StreamableHttpError<reqwest::Error>>,
    session_attached: bool,
) -> Result<StreamableHttpPostResponse, StreamableHttpError<reqwest::Error>> {
    if !session_attached {
        return result;
    }
    match result {
        Err(StreamableHttpError::UnexpectedServerResponse(text))
            if text.starts_with("HTTP 400") && mentions_lost_session(&text) =>
        {
            Err(StreamableHttpError::SessionExpired)
        }
        // A JSON-RPC error without an id (so not an answer to our request) about the session.
        Ok(StreamableHttpPostResponse::Json(ServerJsonRpcMessage::Error(error), session))
            if mentions_lost_session(&error.error.message)
                && matches!(serde_json::to_value(&error.id), Ok(serde_json::Value::Null)) =>
        {
            let _ = session;
            Err(StreamableHttpError::SessionExpired)
        }
        other => other,
    }
}

impl StreamableHttpClient for SessionHttpClient {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        let attached = session_id.is_some();
        let result = self
            .inner
            .post_message(uri, message, session_id, auth_header, custom_headers)
            .await;
        reclassify(result, attached)
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        let attached = session_id.is_some();
        let result = self
            .inner
            .post_message_with_max_sse_event_size(
                uri,
                message,
                session_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await;
        reclassify(result, attached)
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        let attached = session_id.is_some();
        let result = self
            .inner
            .post_message_with_response_limits(
                uri,
                message,
                session_id,
                auth_header,
                custom_headers,
                limits,
            )
            .await;
        reclassify(result, attached)
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<Self::Error>> {
        self.inner
            .delete_session(uri, session_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        self.inner
            .get_stream(uri, session_id, last_event_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        self.inner
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_400_about_the_session_is_a_lost_session() {
        let r = reclassify(
            Err(StreamableHttpError::UnexpectedServerResponse(
                "HTTP 400 Bad Request: No valid session ID provided".into(),
            )),
            true,
        );
        assert!(matches!(r, Err(StreamableHttpError::SessionExpired)));
    }

    #[test]
    fn other_400s_and_sessionless_requests_are_left_alone() {
        let r = reclassify(
            Err(StreamableHttpError::UnexpectedServerResponse(
                "HTTP 400 Bad Request: Unsupported protocol version; session".into(),
            )),
            true,
        );
        assert!(matches!(
            r,
            Err(StreamableHttpError::UnexpectedServerResponse(_))
        ));
        let r = reclassify(
            Err(StreamableHttpError::UnexpectedServerResponse(
                "HTTP 400 Bad Request: No valid session ID provided".into(),
            )),
            false,
        );
        assert!(matches!(
            r,
            Err(StreamableHttpError::UnexpectedServerResponse(_))
        ));
    }
}
