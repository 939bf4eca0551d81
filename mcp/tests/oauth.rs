//! The full OAuth 2.1 flow against the TypeScript SDK's example server and its in-memory
//! authorization server: 401 → metadata discovery → dynamic registration → PKCE S256 URL →
//! callback → token → authorized calls; then an object restart that reuses the stored token.

mod support;

use std::time::Duration;

use denizen_mcp::{
    CallOptions, ManagerOptions, McpClientManager, OAuthOptions, ServerConfig, ServerState, store,
};
use denizen_storage::{Database, Durability};
use serde_json::json;
use support::{Peer, authorize, free_port, init_tracing};

const READY: Duration = Duration::from_secs(30);
const CALLBACK: &str = "http://localhost:1/agents/assistant/callback";

fn options() -> ManagerOptions {
    ManagerOptions {
        // The test's authorization server is on loopback.
        allow_private_oauth_metadata: true,
        ..ManagerOptions::default()
    }
}

async fn wait_for_auth_url(manager: &McpClientManager, id: &str) -> String {
    let mut changes = manager.subscribe();
    tokio::time::timeout(READY, async {
        loop {
            let status = manager.server(id).expect("server");
            if status.state == ServerState::Authenticating
                && let Some(url) = status.auth_url
            {
                return url;
            }
            changes.changed().await.expect("manager alive");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no authorization URL: {:?}", manager.server(id)))
}

async fn greet(manager: &McpClientManager) -> String {
    let result = manager
        .call_tool("ts__greet", json!({"name": "Ada"}), CallOptions::default())
        .await
        .expect("greet");
    assert_ne!(result.is_error, Some(true), "{result:?}");
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect()
}

#[tokio::test]
async fn full_flow_then_token_reused_after_restart() {
    init_tracing();
    let peer = Peer::ts_oauth(free_port(), free_port()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("agent.sqlite");

    {
        let mut storage = Database::open(&db, Durability::Normal).expect("open");
        let manager = McpClientManager::new(options());
        let mut config = ServerConfig::new("ts", &peer.url);
        config.oauth = Some(OAuthOptions {
            redirect_uri: CALLBACK.into(),
            ..OAuthOptions::default()
        });
        manager.add_server(config).expect("add");
        let auth_url = wait_for_auth_url(&manager, "ts").await;
        assert!(
            auth_url.contains("code_challenge_method=S256"),
            "{auth_url}"
        );
        assert!(auth_url.contains("resource="), "{auth_url}");
        // Persisting mid-flow keeps the PKCE verifier and the registration.
        store::save_all(&mut storage, &manager).expect("save");

        // A callback with a forged state is refused and the flow stays open.
        let forged = format!("{CALLBACK}?code=nope&state=forged");
        assert!(manager.complete_authorization("ts", &forged).await.is_err());

        let callback = authorize(&auth_url, CALLBACK).await;
        let state = manager.agents_state();
        assert_eq!(state["servers"]["ts"]["state"], "authenticating");
        assert_eq!(state["servers"]["ts"]["auth_url"], auth_url.as_str());
        // The object's callback route finds the server from the callback's `state`.
        assert_eq!(
            manager.server_for_callback(&callback).as_deref(),
            Some("ts")
        );
        assert_eq!(manager.server_for_callback(&forged), None);
        manager
            .complete_authorization("ts", &callback)
            .await
            .expect("complete authorization");
        manager.wait_ready("ts", READY).await.expect("ready");
        assert!(greet(&manager).await.contains("Ada"));

        let record = manager
            .oauth_records()
            .into_iter()
            .find(|(id, _)| id == "ts")
            .map(|(_, r)| r)
            .expect("record");
        assert!(record.has_token());
        store::save_all(&mut storage, &manager).expect("save");
        storage.commit().expect("commit");
        manager.close().await;
    }

    // The object restarts: the stored registration and token are used, nobody is asked.
    let mut storage = Database::open(&db, Durability::Normal).expect("reopen");
    let manager = McpClientManager::new(options());
    store::restore(&mut storage, &manager).expect("restore");
    let mut changes = manager.subscribe();
    let status = tokio::time::timeout(READY, async {
        loop {
            let s = manager.server("ts").expect("server");
            assert_ne!(
                s.state,
                ServerState::Authenticating,
                "asked to authorize again: {s:?}"
            );
            if s.state == ServerState::Ready {
                return s;
            }
            changes.changed().await.expect("alive");
        }
    })
    .await
    .expect("ready without the user");
    assert_eq!(status.auth_url, None);
    assert!(greet(&manager).await.contains("Ada"));
    manager.close().await;
}

#[tokio::test]
async fn a_protected_server_without_oauth_options_fails_clearly() {
    init_tracing();
    let peer = Peer::ts_oauth(free_port(), free_port()).await;
    let manager = McpClientManager::new(options());
    manager
        .add_server(ServerConfig::new("ts", &peer.url))
        .expect("add");
    let mut changes = manager.subscribe();
    let status = tokio::time::timeout(READY, async {
        loop {
            let s = manager.server("ts").expect("server");
            if s.state == ServerState::Failed {
                return s;
            }
            changes.changed().await.expect("alive");
        }
    })
    .await
    .expect("fails");
    let text = status.error.unwrap_or_default();
    assert!(text.contains("requires authorization"), "{text}");
    // Calls say why instead of hanging.
    let call = manager
        .call_tool("ts__greet", json!({"name": "x"}), CallOptions::default())
        .await;
    assert!(
        matches!(call, Err(denizen_mcp::Error::NotReady { .. })),
        "{call:?}"
    );
    manager.close().await;
}

#[tokio::test]
async fn callback_after_the_object_restarted_mid_flow() {
    init_tracing();
    let peer = Peer::ts_oauth(free_port(), free_port()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("agent.sqlite");
    let auth_url = {
        let mut storage = Database::open(&db, Durability::Normal).expect("open");
        let manager = McpClientManager::new(options());
        let mut config = ServerConfig::new("ts", &peer.url);
        config.oauth = Some(OAuthOptions {
            redirect_uri: CALLBACK.into(),
            ..OAuthOptions::default()
        });
        manager.add_server(config).expect("add");
        let auth_url = wait_for_auth_url(&manager, "ts").await;
        store::save_all(&mut storage, &manager).expect("save");
        storage.commit().expect("commit");
        manager.close().await;
        auth_url
    };
    // The user authorizes while the object is gone (hibernated or restarted).
    let callback = authorize(&auth_url, CALLBACK).await;

    let mut storage = Database::open(&db, Durability::Normal).expect("reopen");
    let manager = McpClientManager::new(options());
    store::restore(&mut storage, &manager).expect("restore");
    manager
        .complete_authorization("ts", &callback)
        .await
        .expect("the callback completes with the stored registration and PKCE verifier");
    manager.wait_ready("ts", READY).await.expect("ready");
    assert!(greet(&manager).await.contains("Ada"));
    manager.close().await;
}
