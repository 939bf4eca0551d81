//! Who may use which door: the admin token (configured, or generated into the data directory)
//! and the checks that keep admin routes out of reach of other web pages.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};

use crate::forward::text;
use crate::{Error, Inner};

/// The file in the data directory holding the generated admin token (mode 0600). The CLI reads
/// it when no token is given.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Random bytes in a generated token (hex-encoded in the file).
const TOKEN_BYTES: usize = 32;

/// The admin token in force, and where it came from.
#[derive(Clone)]
pub(crate) enum AdminSecret {
    /// Given in the gateway's options: also guards `/metrics`.
    Configured(String),
    /// Generated (or read back) from `<data-dir>/admin.token`.
    Generated(String),
    /// No token could be had: admin routes answer 503, and serving refuses to start.
    Unavailable {
        /// The token file.
        path: PathBuf,
        /// Why it could not be used.
        reason: String,
    },
}

impl std::fmt::Debug for AdminSecret {
    // Never print the token itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminSecret::Configured(_) => f.write_str("Configured(..)"),
            AdminSecret::Generated(_) => f.write_str("Generated(..)"),
            AdminSecret::Unavailable { path, reason } => {
                write!(f, "Unavailable({}: {reason})", path.display())
            }
        }
    }
}

impl AdminSecret {
    /// The configured token, else the one kept in `data_dir` (created on first use).
    pub(crate) fn resolve(configured: Option<&str>, data_dir: &Path) -> AdminSecret {
        if let Some(token) = configured {
            return AdminSecret::Configured(token.to_string());
        }
        match load_or_create(data_dir) {
            Ok(token) => AdminSecret::Generated(token),
            Err(Error::AdminToken { path, reason }) => AdminSecret::Unavailable { path, reason },
            Err(e) => AdminSecret::Unavailable {
                path: data_dir.join(ADMIN_TOKEN_FILE),
                reason: e.to_string(),
            },
        }
    }

    /// Why serving cannot start, when no token could be had.
    pub(crate) fn problem(&self) -> Option<Error> {
        match self {
            AdminSecret::Unavailable { path, reason } => Some(Error::AdminToken {
                path: path.clone(),
                reason: reason.clone(),
            }),
            _ => None,
        }
    }

    /// The token, when there is one.
    pub(crate) fn token(&self) -> Option<&str> {
        match self {
            AdminSecret::Configured(t) | AdminSecret::Generated(t) => Some(t),
            AdminSecret::Unavailable { .. } => None,
        }
    }
}

/// The token kept in `<dir>/admin.token`: read back when the file exists, else generated and
/// written to a new file only its owner may read.
pub(crate) fn load_or_create(dir: &Path) -> Result<String, Error> {
    let path = dir.join(ADMIN_TOKEN_FILE);
    let failed = |reason: String| Error::AdminToken {
        path: path.clone(),
        reason,
    };
    let token = generate();
    match create_private(&path) {
        Ok(mut file) => {
            file.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| failed(format!("could not write it: {e}")))?;
            tracing::info!(path = %path.display(), "generated an admin token for /admin and /workflows");
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_existing(&path),
        Err(e) => Err(failed(format!("could not create it: {e}"))),
    }
}

/// Reads an existing token file, refusing one that others may read.
fn read_existing(path: &PathBuf) -> Result<String, Error> {
    let failed = |reason: String| Error::AdminToken {
        path: path.clone(),
        reason,
    };
    let mut file =
        std::fs::File::open(path).map_err(|e| failed(format!("could not open it: {e}")))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file
            .metadata()
            .map_err(|e| failed(format!("could not read its permissions: {e}")))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(failed(format!(
                "it is readable by other users (mode {:o}); run `chmod 600 {}` or delete it to get a new token",
                mode & 0o777,
                path.display()
            )));
        }
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| failed(format!("could not read it: {e}")))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(failed(
            "it is empty; delete it to get a new token, or write one into it".into(),
        ));
    }
    Ok(token.to_string())
}

#[cfg(unix)]
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// 32 random bytes from the OS-seeded generator, hex-encoded.
fn generate() -> String {
    let bytes: [u8; TOKEN_BYTES] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether an `Origin` header names the same origin as the request's `Host`: a page on another
/// site must not drive admin routes with the browser's network position.
pub(crate) fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|authority| authority.eq_ignore_ascii_case(host))
}

/// Whether a `Content-Type` is JSON (`application/json`, parameters allowed). Browsers cannot send
/// it cross-site without a CORS preflight, which the gateway never grants.
pub(crate) fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// An authentication hook's refusal: answered as `status` with `message` as a text body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Usually 401 (who are you?) or 403 (not allowed).
    pub status: StatusCode,
    /// Said to the caller as the answer's text body.
    pub message: String,
}

impl Rejection {
    /// A refusal with any status (use a 4xx).
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Rejection {
            status,
            message: message.into(),
        }
    }

    /// 401: the caller did not prove who it is.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Rejection::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 403: the caller is known but not allowed.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Rejection::new(StatusCode::FORBIDDEN, message)
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

pub(crate) type AuthHook = dyn Fn(&http::request::Parts) -> Result<(), Rejection> + Send + Sync;

pub(crate) async fn auth_guard(
    State(inner): State<Arc<Inner>>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let Some(auth) = &inner.auth else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    if let Err(r) = auth(&parts) {
        tracing::debug!(status = %r.status, "refused by the auth hook");
        return text(r.status, r.message);
    }
    next.run(axum::extract::Request::from_parts(parts, body))
        .await
}

/// Whether `path` is an operator's door: always behind the admin token.
fn is_admin_door(path: &str) -> bool {
    ["/admin", "/workflows", "/inspector"].iter().any(|door| {
        path.strip_prefix(door)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

pub(crate) async fn admin_guard(
    State(inner): State<Arc<Inner>>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    let admin_door = is_admin_door(path);
    let metrics_door = path == "/metrics" && matches!(inner.admin, AdminSecret::Configured(_));
    if !admin_door && !metrics_door {
        return next.run(req).await;
    }
    let Some(token) = inner.admin.token() else {
        let why = inner
            .admin
            .problem()
            .map(|e| e.to_string())
            .unwrap_or_default();
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("admin routes are closed: {why}"),
        );
    };
    let headers = req.headers();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if !presented.is_some_and(|p| same_secret(p.as_bytes(), token.as_bytes())) {
        let mut resp = text(
            StatusCode::UNAUTHORIZED,
            "this route needs Authorization: Bearer <admin token> (the server's admin_token, or the token in <data-dir>/admin.token)",
        );
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }
    if admin_door {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !same_origin(origin, host) {
                return text(
                    StatusCode::FORBIDDEN,
                    "admin routes refuse cross-site requests: the Origin header names another site than this server",
                );
            }
        }
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json);
        if !req.method().is_safe() && !json {
            return text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "admin routes take JSON: send Content-Type: application/json (other types are refused so that web pages cannot forge these requests)",
            );
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_doors() {
        for p in [
            "/admin",
            "/admin/sql/a/b",
            "/workflows",
            "/workflows/x/y",
            "/inspector",
        ] {
            assert!(is_admin_door(p), "{p}");
        }
        for p in [
            "/administrator",
            "/workflowsx",
            "/objects/admin/x",
            "/metrics",
            "/",
        ] {
            assert!(!is_admin_door(p), "{p}");
        }
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }

    #[test]
    fn origins_and_content_types() {
        assert!(same_origin("http://127.0.0.1:8787", Some("127.0.0.1:8787")));
        assert!(same_origin("https://Admin.Example", Some("admin.example")));
        assert!(!same_origin("http://evil.example", Some("127.0.0.1:8787")));
        assert!(!same_origin("null", Some("127.0.0.1:8787")));
        assert!(!same_origin("http://127.0.0.1:8787", None));
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
    }

    #[test]
    fn the_token_file_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        assert_eq!(first.len(), 2 * TOKEN_BYTES);
        assert_eq!(load_or_create(dir.path()).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.path().join(ADMIN_TOKEN_FILE);
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = load_or_create(dir.path()).unwrap_err().to_string();
            assert!(err.contains("readable by other users"), "{err}");
        }
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create(other.path()).unwrap(), first);
    }
}
