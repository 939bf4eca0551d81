//! OAuth around the connections: the authorization at connect time, the step-up when a
//! request's token is refused, and the callback that completes either.

use tracing::{info, warn};

use super::{Inner, McpClientManager, Server, ServerState, lock, set_state};
use crate::{
    Error, Result,
    auth::{self, OAuthOptions, OAuthRecord},
};

/// Re-authorizations for more scope in a row before a request fails for good.
const MAX_STEP_UPS: u32 = 2;

impl McpClientManager {
    /// Every server's OAuth record (registration, tokens, pending PKCE states), to persist.
    pub fn oauth_records(&self) -> Vec<(String, OAuthRecord)> {
        lock(&self.inner.servers)
            .iter()
            .map(|(id, s)| (id.clone(), lock(&s.oauth.record).clone()))
            .collect()
    }

    /// Finishes an authorization with the URL the user was redirected to (the object's callback
    /// route): checks `state` (and `iss`), exchanges the code with PKCE and the resource
    /// indicator, stores the tokens and reconnects the server.
    pub async fn complete_authorization(&self, id: &str, callback_url: &str) -> Result<()> {
        let server = self.get(id)?;
        let session = lock(&server.session).take();
        let result = match session {
            Some(session) => match session.handle_callback_url(callback_url).await {
                Ok(_) => Ok(()),
                Err(e) => {
                    // Keep the session: the user may retry with a correct callback.
                    *lock(&server.session) = Some(session);
                    Err(e.to_string())
                }
            },
            // The object restarted since the URL was handed out: rebuild from storage.
            None => {
                let url = lock(&server.config).url.clone();
                auth::resume(
                    &url,
                    callback_url,
                    &server.oauth,
                    self.inner.options.allow_private_oauth_metadata,
                )
                .await
            }
        };
        result.map_err(|message| Error::Authorization {
            server: id.to_owned(),
            message,
        })?;
        *lock(&server.session) = None;
        let redial = {
            let mut live = lock(&server.live);
            live.auth_url = None;
            // A step-up on a live connection: its requests read the new token, so it serves on.
            // Without a token attached it must be dialled again to carry one.
            let stepped_up = live.state == ServerState::Authenticating && live.peer.is_some();
            if stepped_up && live.oauth_attached {
                live.state = ServerState::Ready;
                live.error = None;
            }
            stepped_up && !live.oauth_attached
        };
        if redial {
            server.redial.notify_one();
        }
        server.authorized.send_modify(|n| *n += 1);
        self.bump();
        Ok(())
    }

    /// The server whose authorization in progress issued the `state` of this callback URL, for
    /// routing a callback request to [`McpClientManager::complete_authorization`].
    pub fn server_for_callback(&self, callback_url: &str) -> Option<String> {
        let state = url::Url::parse(callback_url)
            .ok()?
            .query_pairs()
            .find(|(k, _)| k == "state")
            .map(|(_, v)| v.into_owned())?;
        lock(&self.inner.servers)
            .iter()
            .find(|(_, s)| lock(&s.oauth.record).pending.contains_key(&state))
            .map(|(id, _)| id.clone())
    }

    /// Re-authorizes after a request's token was refused with `challenge`, and waits until the
    /// server serves again (the callback came) or `deadline` passes. The connection is kept:
    /// its requests read the token from the OAuth cell, so the new one applies at once.
    pub(super) async fn step_up(
        &self,
        server: &Server,
        id: &str,
        challenge: &str,
        deadline: tokio::time::Instant,
    ) -> Result<()> {
        use std::sync::atomic::Ordering;
        let refused = |message: String| Error::Authorization {
            server: id.to_owned(),
            message,
        };
        if lock(&server.config).oauth.is_none() {
            return Err(refused(format!(
                "the server refused the token ({challenge}); give the server OAuth options so \
                 the manager can authorize again"
            )));
        }
        let url = lock(&server.config).url.clone();
        let timed_out = || Error::AuthorizationRequired {
            url: url.clone(),
            challenge: Some(challenge.to_owned()),
        };
        let mut authorized = server.authorized.subscribe();
        let _one = tokio::time::timeout_at(deadline, server.step_up.lock())
            .await
            .map_err(|_| timed_out())?;
        if authorized.has_changed().unwrap_or(false) {
            // Refused together with a request whose step-up completed meanwhile: retry as is.
            return self.until_ready(id, deadline).await;
        }
        // Bounded, or a server that never accepts any scope would loop forever.
        let n = server.step_ups.fetch_add(1, Ordering::SeqCst) + 1;
        if n > MAX_STEP_UPS {
            return Err(refused(format!(
                "the server still refuses the token ({challenge}) after {MAX_STEP_UPS} \
                 re-authorizations"
            )));
        }
        info!(server = %id, challenge, "MCP server wants more authorization; re-authorizing");
        let options = scoped_options(server, Some(challenge));
        let session = auth::start(
            &url,
            Some(challenge),
            &options,
            &self.inner.options.client_name,
            &server.oauth,
            self.inner.options.allow_private_oauth_metadata,
        )
        .await
        .map_err(refused)?;
        let auth_url = session.get_authorization_url().to_owned();
        *lock(&server.session) = Some(session);
        {
            let mut live = lock(&server.live);
            if live.state == ServerState::Closed {
                return Err(Error::NotReady {
                    id: id.to_owned(),
                    state: live.state.to_string(),
                });
            }
            live.auth_url = Some(auth_url);
            // The peer stays: the callback puts this connection back to `ready`.
            live.state = ServerState::Authenticating;
        }
        self.bump();
        tokio::select! {
            changed = authorized.changed() => {
                if changed.is_err() {
                    return Err(Error::UnknownServer(id.to_owned()));
                }
            }
            _ = server.shutdown.cancelled() => {
                return Err(Error::NotReady { id: id.to_owned(), state: ServerState::Closed.to_string() });
            }
            _ = tokio::time::sleep_until(deadline) => return Err(timed_out()),
        }
        self.until_ready(id, deadline).await
    }

    /// Waits until the server is ready again, at most until `deadline`.
    pub(super) async fn until_ready(&self, id: &str, deadline: tokio::time::Instant) -> Result<()> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.wait_ready(id, left).await.map(|_| ())
    }
}

pub(super) enum Authorize {
    /// The callback came: dial again.
    Redial,
    Shutdown,
    Failed,
}

/// Starts an authorization and waits (without retrying) for the callback to complete it.
pub(super) async fn authorize(
    inner: &Inner,
    server: &Server,
    challenge: Option<&str>,
) -> Authorize {
    let url = lock(&server.config).url.clone();
    // A challenge while holding a token is a step-up; bounded, or a server that never accepts
    // any scope would loop forever.
    if lock(&server.oauth.record).has_token() {
        let n = server
            .step_ups
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        if n > MAX_STEP_UPS {
            let message = format!(
                "the server still refuses the token after {MAX_STEP_UPS} re-authorizations"
            );
            set_state(inner, server, ServerState::Failed, Some(message));
            return Authorize::Failed;
        }
    }
    let options = scoped_options(server, challenge);
    // Subscribed before the URL is handed out: a callback cannot complete unseen.
    let mut authorized = server.authorized.subscribe();
    let started = auth::start(
        &url,
        challenge,
        &options,
        &inner.options.client_name,
        &server.oauth,
        inner.options.allow_private_oauth_metadata,
    )
    .await;
    match started {
        Ok(session) => {
            let auth_url = session.get_authorization_url().to_owned();
            *lock(&server.session) = Some(session);
            lock(&server.live).auth_url = Some(auth_url);
            set_state(inner, server, ServerState::Authenticating, None);
            info!("MCP server needs authorization; waiting for the callback");
            // No retries while the user is away: the callback redials.
            tokio::select! {
                changed = authorized.changed() => match changed {
                    Ok(()) => Authorize::Redial,
                    Err(_) => Authorize::Shutdown,
                },
                _ = server.shutdown.cancelled() => Authorize::Shutdown,
            }
        }
        Err(message) => {
            warn!(error = %message, "MCP authorization could not start");
            set_state(inner, server, ServerState::Failed, Some(message));
            Authorize::Failed
        }
    }
}

/// The server's OAuth options for an authorization answering `challenge`: a challenge with a
/// scope asks for the configured scopes, those granted and those challenged (MCP scope
/// challenge handling: the union, never fewer scopes than before).
fn scoped_options(server: &Server, challenge: Option<&str>) -> OAuthOptions {
    let mut options = lock(&server.config).oauth.clone().unwrap_or_default();
    if let Some(wanted) = challenge.and_then(challenge_scope) {
        let granted = lock(&server.oauth.record)
            .credentials
            .as_ref()
            .map(|c| c.granted_scopes.clone())
            .unwrap_or_default();
        for scope in granted.iter().map(String::as_str).chain(wanted.split(' ')) {
            if !scope.is_empty() && !options.scopes.iter().any(|s| s == scope) {
                options.scopes.push(scope.to_owned());
            }
        }
    }
    options
}

/// The `scope` parameter of a `WWW-Authenticate: Bearer` challenge.
fn challenge_scope(header: &str) -> Option<String> {
    let start = header.find("scope=\"")? + "scope=\"".len();
    let rest = &header[start..];
    Some(rest[..rest.find('"')?].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_scopes_are_read() {
        assert_eq!(
            challenge_scope(
                r#"Bearer error="insufficient_scope", scope="a b", resource_metadata="x""#
            )
            .as_deref(),
            Some("a b")
        );
        assert_eq!(challenge_scope("Bearer realm=\"x\""), None);
    }
}
