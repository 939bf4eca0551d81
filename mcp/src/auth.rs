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
    auth::{AuthorizationCallback, OAuthClientConfig},
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

/// The client registration used with one authorization server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredClient {
    /// The client id the authorization server knows this client by.
    pub client_id: String,
    /// Its secret, for a confidential client.
    pub client_secret: Option<String>,
    /// The redirect URI it was registered with.
    pub redirect_uri: String,
    /// The authorization server's issuer: a registration is only reused with the same one.
    pub issuer: Option<String>,
}

/// What is persisted per server: the client registration, the tokens (refresh token included),
/// and the PKCE verifiers of authorizations in progress, keyed by `state`.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct OAuthRecord {
    /// The registration with the server's authorization server.
    #[serde(default)]
    pub client: Option<RegisteredClient>,
    /// The tokens and the scopes they were granted for.
    pub credentials: Option<StoredCredentials>,
    /// PKCE states of authorizations waiting for their callback, by `state`.
    pub pending: HashMap<String, StoredAuthorizationState>,
}

impl std::fmt::Debug for OAuthRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthRecord")
            .field("client", &self.client.as_ref().map(|c| &c.client_id))
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
    let issuer = resolution.metadata.issuer.clone();
    manager.set_metadata(resolution.metadata);
    // Reuse our registration with this authorization server (a restart must not register a new
    // client, or a callback for the old one would fail); register again when the server moved.
    let reuse = cell.with(|r| {
        r.client
            .clone()
            .filter(|c| c.issuer == issuer && c.redirect_uri == options.redirect_uri)
    });
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
    } else if let Some(client) = &reuse {
        request = request.with_preregistered_client(client.client_id.clone());
        if let Some(secret) = &client.client_secret {
            request = request.with_client_secret(secret.clone());
        }
    }
    if let Some(doc) = &options.client_metadata_url {
        request = request.with_client_metadata_url(doc.clone());
    }
    if !options.scopes.is_empty() {
        request = request.with_scopes(options.scopes.iter().cloned());
    }
    let session = AuthorizationSession::new(manager, request)
        .await
        .map_err(|(_, e)| format!("client registration / authorization URL: {e}"))?;
    if let Ok((client_id, _)) = session.get_credentials().await {
        let client_secret = match (&options.client_id, &reuse) {
            (Some(_), _) => options.client_secret.clone(),
            (None, Some(c)) if c.client_id == client_id => c.client_secret.clone(),
            _ => None,
        };
        cell.with(|r| {
            r.client = Some(RegisteredClient {
                client_id,
                client_secret,
                redirect_uri: options.redirect_uri.clone(),
                issuer,
            })
        });
        cell.bump();
    }
    Ok(session)
}

/// Finishes an authorization whose session did not survive (the object restarted between
/// handing out the URL and the callback): the registration and the PKCE verifier come from the
/// persisted record.
pub(crate) async fn resume(
    url: &str,
    callback_url: &str,
    cell: &OAuthCell,
    allow_private_addresses: bool,
) -> Result<(), String> {
    let client = cell
        .with(|r| r.client.clone())
        .ok_or("no client registration is stored for this server")?;
    let callback = AuthorizationCallback::from_redirect_url(callback_url)
        .map_err(|e| format!("callback URL: {e}"))?;
    if !cell.with(|r| r.pending.contains_key(&callback.csrf_token)) {
        return Err("the callback's state matches no authorization in progress".into());
    }
    let mut manager = authorization_manager(url, cell, allow_private_addresses)
        .await
        .map_err(|e| format!("authorization setup: {e}"))?;
    let resolution = manager
        .resolve_metadata()
        .await
        .map_err(|e| format!("authorization server discovery: {e}"))?;
    if resolution.metadata.issuer != client.issuer {
        return Err("the authorization server changed since the authorization started".into());
    }
    manager.set_metadata(resolution.metadata);
    let mut config = OAuthClientConfig::new(client.client_id, client.redirect_uri);
    if let Some(secret) = client.client_secret {
        config = config.with_client_secret(secret);
    }
    manager
        .configure_client(config)
        .map_err(|e| format!("client configuration: {e}"))?;
    manager
        .exchange_code_for_token_with_issuer(
            &callback.code,
            &callback.csrf_token,
            callback.issuer.as_deref(),
        )
        .await
        .map_err(|e| format!("token exchange: {e}"))?;
    Ok(())
}
