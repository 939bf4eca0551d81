//! OAuth 2.1 for MCP servers, on rmcp's authorization module.
//!
//! rmcp does the protocol steps (401 challenge → protected-resource metadata → authorization
//! server metadata → registration → PKCE S256 URL → code exchange with the RFC 8707 `resource`
//! → refresh). This module adds what an object needs around them: the credentials and pending
//! PKCE states live in a cell the manager persists ([`crate::store`]), the authorization URL is
//! handed to the application through the server's status, and the callback is completed by
//! [`crate::McpClientManager::complete_authorization`] from the object's own route.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use rmcp::transport::{
    AuthError, AuthorizationManager, AuthorizationRequest, AuthorizationSession, CredentialStore,
    StateStore, StoredAuthorizationState, StoredCredentials,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// How the client registers with the server's authorization server, and where the user comes
/// back to. Without these a server that answers 401 stays `failed`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthOptions {
    /// The object's callback route, e.g. `https://app.example/agents/a/b/callback`.
    pub redirect_uri: String,
    /// A pre-registered client id (tried first).
    pub client_id: Option<String>,
    /// Its secret, for confidential pre-registered clients.
    pub client_secret: Option<String>,
    /// An HTTPS client metadata document URL, used as client id when the server supports it.
    pub client_metadata_url: Option<String>,
    /// Scopes to ask for; empty = what the challenge or the resource metadata suggests.
    pub scopes: Vec<String>,
}

/// What is persisted per server: the client registration and tokens (refresh token included),
/// and the PKCE verifiers of authorizations in progress, keyed by `state`.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct OAuthRecord {
    pub credentials: Option<StoredCredentials>,
    pub pending: HashMap<String, StoredAuthorizationState>,
}

impl std::fmt::Debug for OAuthRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthRecord")
            .field("credentials", &self.credentials)
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl OAuthRecord {
    /// True when there is an access token to try.
    pub fn has_token(&self) -> bool {
        self.credentials
            .as_ref()
            .is_some_and(|c| c.token_response.is_some())
    }
}

/// The store rmcp writes credentials and PKCE states to; every write bumps `changed` so the
/// owning object knows to persist.
#[derive(Clone, Debug)]
pub(crate) struct OAuthCell {
    pub(crate) record: Arc<Mutex<OAuthRecord>>,
    pub(crate) changed: watch::Sender<u64>,
}

impl OAuthCell {
    fn with<R>(&self, f: impl FnOnce(&mut OAuthRecord) -> R) -> R {
        let mut guard = self.record.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }
}

#[async_trait::async_trait]
impl CredentialStore for OAuthCell {
    async fn load(&self) -> Result<Option<StoredCredentials>, AuthError> {
        Ok(self.with(|r| r.credentials.clone()))
    }

    async fn save(&self, credentials: StoredCredentials) -> Result<(), AuthError> {
        self.with(|r| r.credentials = Some(credentials));
        self.bump();
        Ok(())
    }

    async fn clear(&self) -> Result<(), AuthError> {
        self.with(|r| r.credentials = None);
        self.bump();
        Ok(())
    }
}

#[async_trait::async_trait]
impl StateStore for OAuthCell {
    async fn save(
        &self,
        csrf_token: &str,
        state: StoredAuthorizationState,
    ) -> Result<(), AuthError> {
        self.with(|r| r.pending.insert(csrf_token.to_owned(), state));
        self.bump();
        Ok(())
    }

    async fn load(&self, csrf_token: &str) -> Result<Option<StoredAuthorizationState>, AuthError> {
        Ok(self.with(|r| r.pending.get(csrf_token).cloned()))
    }

    async fn delete(&self, csrf_token: &str) -> Result<(), AuthError> {
        self.with(|r| r.pending.remove(csrf_token));
        self.bump();
        Ok(())
    }
}

/// An rmcp authorization manager for `url` whose stores are the cell.
pub(crate) async fn authorization_manager(
    url: &str,
    cell: &OAuthCell,
    allow_private_addresses: bool,
) -> Result<AuthorizationManager, AuthError> {
    let mut manager = if allow_private_addresses {
        AuthorizationManager::new_allowing_private_addresses(url).await?
    } else {
        AuthorizationManager::new(url).await?
    };
    manager.set_credential_store(cell.clone());
    manager.set_state_store(cell.clone());
    Ok(manager)
}

/// Discovers the authorization server from the 401 challenge, refuses one that does not
/// advertise PKCE S256, registers the client and builds the authorization URL.
pub(crate) async fn start(
    url: &str,
    challenge: Option<&str>,
    options: &OAuthOptions,
    client_name: &str,
    cell: &OAuthCell,
    allow_private_addresses: bool,
) -> Result<AuthorizationSession, String> {
    let mut manager = authorization_manager(url, cell, allow_private_addresses)
        .await
        .map_err(|e| format!("authorization setup: {e}"))?;
    let resolution = manager
        .resolve_metadata_from_challenge(challenge)
        .await
        .map_err(|e| format!("authorization server discovery: {e}"))?;
    // MCP: a client MUST refuse to proceed when S256 is not advertised (rmcp tolerates absence).
    let s256 = resolution
        .metadata
        .code_challenge_methods_supported
        .as_ref()
        .is_some_and(|m| m.iter().any(|m| m == "S256"));
    if !s256 {
        return Err(format!(
            "the authorization server of {url} does not advertise PKCE S256 \
             (code_challenge_methods_supported); refusing to authorize"
        ));
    }
    manager.set_metadata(resolution.metadata);
    let mut request =
        AuthorizationRequest::new(options.redirect_uri.clone()).with_client_name(client_name);
    if let Some(challenge) = challenge {
        request = request.with_challenge(challenge);
    }
    if let Some(id) = &options.client_id {
        request = request.with_preregistered_client(id.clone());
        if let Some(secret) = &options.client_secret {
            request = request.with_client_secret(secret.clone());
        }
    }
    if let Some(doc) = &options.client_metadata_url {
        request = request.with_client_metadata_url(doc.clone());
    }
    if !options.scopes.is_empty() {
        request = request.with_scopes(options.scopes.iter().cloned());
    }
    AuthorizationSession::new(manager, request)
        .await
        .map_err(|(_, e)| format!("client registration / authorization URL: {e}"))
}
