//! Reaching the server that runs on a data directory.

use std::path::Path;

use crate::app::serve::SERVER_ADDRESS_FILE;

/// The address of the server running on `dir`, from the file it keeps there while it runs.
pub(super) fn running_server(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(SERVER_ADDRESS_FILE)).ok()?;
    let url = text.trim();
    (!url.is_empty()).then(|| url.to_string())
}

/// The admin token for the server on `dir`: the one given (flag, environment, config file), else
/// the one the server generated into `<dir>/admin.token`.
pub(super) fn admin_token(dir: &Path, given: Option<String>) -> Option<String> {
    given.or_else(|| {
        let text = std::fs::read_to_string(dir.join(denizen_gateway::ADMIN_TOKEN_FILE)).ok()?;
        let token = text.trim();
        (!token.is_empty()).then(|| token.to_string())
    })
}

pub(super) enum Remote {
    /// Nothing answered: no server there.
    Unreachable(String),
    /// The server answered with an error (bad SQL, unknown object, wrong token).
    Refused(String),
}

/// `s` percent-encoded as one URL path segment.
pub(super) fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
