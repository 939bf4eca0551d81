//! `denizen objects` and `denizen workflows`: what a data directory holds.

use std::path::Path;

use std::io::Write;

use denizen_agents::workflow;
use denizen_runtime::Durability;
use denizen_runtime::admin::{self, Address};

use super::escape::printable;
use super::remote::segment;
use crate::app::Error;

/// `denizen objects <namespace>`: a table, or JSON lines.
pub(super) fn objects(dir: &Path, namespace: &str, json: bool) -> Result<(), Error> {
    let objects = admin::list_objects(dir, namespace)?;
    let mut out = std::io::stdout().lock();
    if json {
        for o in &objects {
            writeln!(out, "{}", serde_json::json!(o))?;
        }
    } else {
        writeln!(
            out,
            "{:<24} {:<64} {:>10}  LAST ACTIVE",
            "NAME", "ID", "SIZE"
        )?;
        for o in &objects {
            writeln!(
                out,
                "{:<24} {:<64} {:>10}  {}",
                printable(o.name.as_deref().unwrap_or("-")),
                o.id,
                o.size_bytes,
                humantime::format_rfc3339_millis(denizen_runtime::time::from_ms(o.last_active_ms))
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

/// An instance's status from the server's `GET /workflows/<name>/<id>`; `None` when no server
/// answers there.
fn remote_status(
    rt: &tokio::runtime::Runtime,
    url: &str,
    token: Option<&str>,
    name: &str,
    id: &str,
) -> Option<Result<workflow::InstanceStatus, String>> {
    let endpoint = format!(
        "{}/workflows/{}/{}",
        url.trim_end_matches('/'),
        segment(name),
        segment(id)
    );
    rt.block_on(async {
        let mut req = reqwest::Client::new().get(&endpoint);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.ok()?;
        let status = resp.status();
        let body = match resp.text().await {
            Ok(b) => b,
            Err(e) => return Some(Err(e.to_string())),
        };
        if !status.is_success() {
            return Some(Err(format!("{status}: {}", body.trim())));
        }
        Some(serde_json::from_str(&body).map_err(|e| e.to_string()))
    })
}

pub(super) fn list_workflows(
    dir: &Path,
    name: &str,
    json: bool,
    server: Option<&str>,
    token: Option<&str>,
) -> Result<(), Error> {
    // A running server holds the data directory: its instances are asked from it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::AsyncRuntime)?;
    let mut server = server.map(str::to_string);
    let namespace = workflow::namespace_of(name);
    let objects = admin::list_objects(dir, &namespace)?;
    if objects.is_empty() && !json {
        writeln!(
            std::io::stderr(),
            "no instances of workflow `{}` in {}",
            printable(name),
            printable(&dir.display().to_string())
        )?;
    }
    let mut out = std::io::stdout().lock();
    if !json {
        writeln!(out, "{:<36} {:<10} {:>5}  UPDATED", "ID", "STATUS", "STEPS")?;
    }
    for o in &objects {
        let Some(id) = o.name.as_deref() else {
            continue;
        };
        // From the file when no server runs on the directory; from the server when one does.
        let status =
            match admin::open_object(dir, &namespace, Address::Name(id), Durability::Normal) {
                Ok(mut opened) => {
                    workflow::read_status(&mut opened.storage).map_err(|e| e.to_string())
                }
                Err(denizen_runtime::Error::Storage(denizen_runtime::storage::Error::Held {
                    path,
                })) => {
                    match server
                        .as_deref()
                        .and_then(|url| remote_status(&rt, url, token, name, id))
                    {
                        Some(status) => status.map(Some),
                        None => {
                            // Nobody answers (the address file outlived a killed server).
                            server = None;
                            Err(denizen_runtime::storage::Error::Held { path }.to_string())
                        }
                    }
                }
                Err(e) => Err(e.to_string()),
            };
        match (status, json) {
            (Ok(Some(s)), true) => writeln!(out, "{}", serde_json::json!(s))?,
            (Ok(Some(s)), false) => writeln!(
                out,
                "{:<36} {:<10} {:>5}  {}",
                printable(id),
                s.status,
                s.steps.len(),
                humantime::format_rfc3339_millis(denizen_runtime::time::from_ms(s.updated_ms))
            )?,
            (Ok(None), _) => {}
            // One instance that cannot be read: say so and go on.
            (Err(e), true) => writeln!(out, "{}", serde_json::json!({"id": id, "error": e}))?,
            (Err(e), false) => {
                writeln!(out, "{:<36} {:<10} {}", printable(id), "?", printable(&e))?
            }
        }
    }
    out.flush()?;
    Ok(())
}
