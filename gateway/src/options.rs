//! The gateway's settings.

use std::time::Duration;

use crate::Error;

/// Gateway options.
#[derive(Clone, Debug)]
pub struct Options {
    /// Largest incoming WebSocket message (and frame); a bigger one closes that socket with 1009.
    /// Default 32 MiB, as in Durable Objects.
    pub max_message_size: usize,
    /// Largest HTTP request body forwarded to an object (413 beyond). Default 32 MiB.
    pub max_body_size: usize,
    /// Ping interval; a peer silent for two intervals is dropped (1006 to the object).
    /// Default 30 s; `None` disables heartbeats.
    pub heartbeat_interval: Option<Duration>,
    /// The token admin routes (`/admin/*`, `/workflows/*`, `/inspector`) need as
    /// `Authorization: Bearer <token>`. They always need one: when this is `None` the gateway
    /// generates one and keeps it in `<data-dir>/admin.token` (mode 0600), where the CLI finds
    /// it. When set here it also guards `/metrics`, which is otherwise open.
    pub admin_token: Option<String>,
    /// How long shutdown waits for sockets to finish their close handshakes. Default 5 s.
    pub shutdown_grace: Duration,
    /// How long a closing socket waits for the peer's close frame. Default 5 s.
    pub close_timeout: Duration,
    /// Bytes an object's messages to one WebSocket may add up to while the client has not read
    /// them; past it they are dropped and the socket is closed with 1008 (a single message to an
    /// empty queue always goes). Default 16 MiB.
    pub max_send_backlog: usize,
    /// How long a client may take to send a request's headers, counted from the moment the
    /// connection waits for a request: it bounds a slow header and an idle keep-alive connection
    /// alike (that long without a new request, the connection is closed). Default 30 s.
    pub header_read_timeout: Duration,
    /// Open connections (WebSockets included) at most; past it new connections wait in the
    /// listen backlog until one closes. Default 16384.
    pub max_connections: usize,
    /// How long shutdown lets HTTP requests in flight finish; connections still open then are
    /// closed (a slow client or a handler that never returns cannot hold the process). Default
    /// 10 s.
    pub shutdown_timeout: Duration,
    /// Bytes tungstenite reads per syscall and keeps allocated per socket. Small keeps idle
    /// sockets cheap (this buffer is most of what the gateway keeps per idle socket); big messages
    /// still arrive, in more reads. Default 1 KiB.
    pub socket_read_buffer: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_message_size: 32 << 20,
            max_body_size: 32 << 20,
            heartbeat_interval: Some(Duration::from_secs(30)),
            admin_token: None,
            shutdown_grace: Duration::from_secs(5),
            close_timeout: Duration::from_secs(5),
            socket_read_buffer: 1024,
            max_send_backlog: 16 << 20,
            header_read_timeout: Duration::from_secs(30),
            max_connections: 16384,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

impl Options {
    /// Checks that every value can work ([`crate::Gateway::serve_router`] does too), so that a
    /// command line can refuse bad values before it opens anything.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field: &'static str, why: &str| {
            Err(Error::InvalidOptions {
                field,
                reason: why.to_string(),
            })
        };
        if self.max_message_size == 0 {
            return bad("max_message_size", "must be at least 1 byte");
        }
        if self.heartbeat_interval.is_some_and(|d| d.is_zero()) {
            return bad(
                "heartbeat_interval",
                "must be above zero; use None to disable heartbeats",
            );
        }
        if self.socket_read_buffer == 0 {
            return bad("socket_read_buffer", "must be at least 1 byte");
        }
        if self.header_read_timeout.is_zero() {
            return bad("header_read_timeout", "must be above zero");
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1");
        }
        if let Some(token) = &self.admin_token {
            // An empty token (an unset variable in a deployment template) would open the admin
            // routes to `Authorization: Bearer ` alone; a short one to guessing.
            if token.chars().count() < MIN_ADMIN_TOKEN_CHARS
                || token.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return bad(
                    "admin_token",
                    "must be at least 16 characters without spaces; generate one with `openssl rand -hex 32`, or leave it unset to have the server generate one",
                );
            }
        }
        Ok(())
    }
}

/// The shortest admin token accepted.
const MIN_ADMIN_TOKEN_CHARS: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_validated() {
        assert!(Options::default().validate().is_ok());
        let zero_beat = Options {
            heartbeat_interval: Some(Duration::ZERO),
            ..Options::default()
        };
        let err = zero_beat.validate().unwrap_err().to_string();
        assert!(err.contains("heartbeat_interval"), "{err}");
    }

    #[test]
    fn an_empty_short_or_spaced_admin_token_is_refused() {
        for token in [
            "",
            "   ",
            "s3cret",
            "0123456789abcde",
            "0123456789 abcdef",
            "0123456789abcdef\n",
        ] {
            let options = Options {
                admin_token: Some(token.into()),
                ..Options::default()
            };
            let err = options.validate().unwrap_err().to_string();
            assert!(err.contains("admin_token"), "{token:?}: {err}");
        }
        let options = Options {
            admin_token: Some("0123456789abcdef".into()),
            ..Options::default()
        };
        assert!(options.validate().is_ok());
    }
}
