//! The life of one server's connection: dial, discover, serve, re-authorize, back off, again.

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{
    Inner, McpClientManager, Server, ServerState,
    authorize::{Authorize, authorize},
    catalog::{discover, listen},
    lock, set_state,
};
use crate::{
    Error, Result,
    client::{self, Connected, Dial, Era, ServerEvent},
};

impl McpClientManager {
    /// Drops the server's connection and dials again at once.
    pub fn reconnect(&self, id: &str) -> Result<()> {
        self.get(id)?.redial.notify_one();
        Ok(())
    }
}

/// Aborts a background task when the connection it belongs to ends.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// The life of one server: dial, discover, serve until the connection ends, back off, again.
pub(super) async fn supervise(inner: Arc<Inner>, server: Arc<Server>) {
    let mut attempt: u32 = 0;
    loop {
        if server.shutdown.is_cancelled() {
            return;
        }
        set_state(&inner, &server, ServerState::Connecting, None);
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let listen_tx = events_tx.clone();
        let dial = {
            let config = lock(&server.config);
            Dial {
                url: config.url.clone(),
                preference: config.transport,
                remembered: config.route,
                bearer_token: config.bearer_token.clone(),
                client_name: inner.options.client_name.clone(),
                client_version: inner.options.client_version.clone(),
                http: inner.http.clone(),
                connect_timeout: inner.options.connect_timeout,
                server_id: config.id.clone(),
                elicitation: inner.options.elicitation.clone(),
                oauth: config.oauth.as_ref().map(|_| {
                    (
                        server.oauth.clone(),
                        inner.options.allow_private_oauth_metadata,
                    )
                }),
            }
        };
        let connected = tokio::select! {
            r = client::connect(&dial, events_tx) => r,
            _ = server.shutdown.cancelled() => return,
        };
        match connected {
            Ok(Connected {
                service,
                route,
                progress,
                oauth,
            }) => {
                let peer = service.peer().clone();
                let stop = service.cancellation_token();
                lock(&server.config).route = Some(route);
                set_state(&inner, &server, ServerState::Discovering, None);
                match discover(&peer, None).await {
                    Ok(lists) => {
                        attempt = 0;
                        {
                            let mut live = lock(&server.live);
                            let info = peer.peer_info();
                            live.protocol_version =
                                info.as_ref().map(|i| i.protocol_version.to_string());
                            live.server_name = info
                                .as_ref()
                                .and_then(|i| i.server_info.as_ref().map(|s| s.name.clone()));
                            live.instructions = info.as_ref().and_then(|i| i.instructions.clone());
                            live.capabilities = info
                                .as_ref()
                                .and_then(|i| serde_json::to_value(&i.capabilities).ok());
                            live.lists = lists;
                            live.connections += 1;
                            live.progress = Some(progress);
                            live.oauth_attached = oauth;
                            if live.state != ServerState::Closed {
                                live.state = ServerState::Ready;
                                live.error = None;
                                live.peer = Some(peer.clone());
                            }
                        }
                        inner.version.send_modify(|v| *v += 1);
                        info!(route = ?route, "MCP server ready");
                        // The stateless era has no session stream: list changes come on a
                        // `subscriptions/listen` stream the client opens.
                        let listener = (route.era == Era::Modern)
                            .then(|| tokio::spawn(listen(peer.clone(), listen_tx)));
                        let _listener = AbortOnDrop(listener);
                        let mut ended = std::pin::pin!(service.waiting());
                        loop {
                            tokio::select! {
                                quit = &mut ended => {
                                    warn!(reason = ?quit.ok(), "MCP connection ended");
                                    set_state(&inner, &server, ServerState::Failed, Some("the connection ended".into()));
                                    break;
                                }
                                Some(event) = events.recv() => {
                                    match discover(&peer, Some(event)).await {
                                        Ok(fresh) => {
                                            let mut live = lock(&server.live);
                                            match event {
                                                ServerEvent::Tools => live.lists.tools = fresh.tools,
                                                ServerEvent::Prompts => live.lists.prompts = fresh.prompts,
                                                ServerEvent::Resources => {
                                                    live.lists.resources = fresh.resources;
                                                    live.lists.templates = fresh.templates;
                                                }
                                            }
                                            drop(live);
                                            debug!(?event, "MCP list refreshed");
                                            inner.version.send_modify(|v| *v += 1);
                                        }
                                        Err(e) => warn!(?event, error = %e, "MCP list refresh failed"),
                                    }
                                }
                                _ = server.redial.notified() => {
                                    stop.cancel();
                                    let _ = (&mut ended).await;
                                    set_state(&inner, &server, ServerState::Failed, Some("reconnecting after a lost request".into()));
                                    break;
                                }
                                _ = server.shutdown.cancelled() => {
                                    stop.cancel();
                                    let _ = (&mut ended).await;
                                    return;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        stop.cancel();
                        let challenge = e.auth_challenge().map(str::to_owned);
                        if challenge.is_some() && lock(&server.config).oauth.is_some() {
                            // Some servers let `initialize` through and protect the lists.
                            match authorize(&inner, &server, challenge.as_deref()).await {
                                Authorize::Redial => {
                                    attempt = 0;
                                    continue;
                                }
                                Authorize::Shutdown => return,
                                Authorize::Failed => {}
                            }
                        } else {
                            set_state(
                                &inner,
                                &server,
                                ServerState::Failed,
                                Some(format!("discovery failed: {}", client::error_chain(&e))),
                            );
                        }
                    }
                }
            }
            Err(Error::AuthorizationRequired { challenge, .. })
                if lock(&server.config).oauth.is_some() =>
            {
                match authorize(&inner, &server, challenge.as_deref()).await {
                    Authorize::Redial => {
                        attempt = 0;
                        continue;
                    }
                    Authorize::Shutdown => return,
                    Authorize::Failed => {}
                }
            }
            Err(e) => {
                warn!(error = %e, "MCP connect failed");
                set_state(&inner, &server, ServerState::Failed, Some(e.to_string()));
            }
        }
        // The reconnect policy's delay; a redial request skips the wait.
        attempt = attempt.saturating_add(1);
        let Some(delay) = inner.options.reconnect.next_delay(attempt) else {
            warn!(
                attempts = attempt,
                "MCP server unreachable; giving up as the reconnect policy says"
            );
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = server.redial.notified() => {}
            _ = server.shutdown.cancelled() => return,
        }
    }
}
