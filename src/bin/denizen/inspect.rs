//! `denizen objects` and `denizen workflows`: what a data directory holds.

use std::path::Path;

use anyhow::{Context, Result};
use denizen::Durability;
use denizen::admin::{self, Address};
use denizen::agent::workflow;

use crate::escape::printable;
use crate::remote::segment;

/// `denizen objects <namespace>`: a table, or JSON lines.
pub(crate) fn objects(dir: &Path, namespace: &str, json: bool) -> Result<()> {
    let objects = admin::list_objects(dir, namespace)?;
    if json {
        for o in &objects {
            println!("{}", serde_json::to_string(o)?);
        }
    } else {
        println!("{:<24} {:<64} {:>10}  LAST ACTIVE", "NAME", "ID", "SIZE");
        for o in &objects {
            println!(
                "{:<24} {:<64} {:>10}  {}",
                printable(o.name.as_deref().unwrap_or("-")),
                o.id,
                o.size_bytes,
                humantime::format_rfc3339_millis(denizen::time::from_ms(o.last_active_ms))
            );
        }
    }
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
) -> Option<Result<workflow::InstanceStatus>> {
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
            Err(e) => return Some(Err(e.into())),
        };
        if !status.is_success() {
            return Some(Err(anyhow::anyhow!("{status}: {}", body.trim())));
        }
        Some(serde_json::from_str(&body).map_err(anyhow::Error::from))
    })
}

pub(crate) fn list_workflows(
    dir: &Path,
    name: &str,
    json: bool,
    server: Option<&str>,
    token: Option<&str>,
) -> Result<()> {
    // A running server holds the data directory: its instances are asked from it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut server = server.map(str::to_string);
    let namespace = workflow::namespace_of(name);
    let objects = admin::list_objects(dir, &namespace)?;
    if objects.is_empty() && !json {
        eprintln!(
            "no instances of workflow `{}` in {}",
            printable(name),
            printable(&dir.display().to_string())
        );
    }
    if !json {
        println!("{:<36} {:<10} {:>5}  UPDATED", "ID", "STATUS", "STEPS");
    }
    for o in &objects {
        let Some(id) = o.name.as_deref() else {
            continue;
        };
        // From the file when no server runs on the directory; from the server when one does.
        let status =
            match admin::open_object(dir, &namespace, Address::Name(id), Durability::Normal) {
                Ok(mut opened) => {
                    workflow::read_status(&mut opened.storage).map_err(anyhow::Error::from)
                }
                Err(denizen::Error::Storage(denizen::storage::Error::Held { path })) => {
                    match server
                        .as_deref()
                        .and_then(|url| remote_status(&rt, url, token, name, id))
                    {
                        Some(status) => status.map(Some),
                        None => {
                            // Nobody answers (the address file outlived a killed server).
                            server = None;
                            Err(denizen::storage::Error::Held { path }.into())
                        }
                    }
                }
                Err(e) => Err(e.into()),
            };
        match (status, json) {
            (Ok(Some(s)), true) => println!("{}", serde_json::to_string(&s)?),
            (Ok(Some(s)), false) => println!(
                "{:<36} {:<10} {:>5}  {}",
                printable(id),
                s.status,
                s.steps.len(),
                humantime::format_rfc3339_millis(denizen::time::from_ms(s.updated_ms))
            ),
            (Ok(None), _) => {}
            // One instance that cannot be read: say so and go on.
            (Err(e), true) => println!("{}", serde_json::json!({"id": id, "error": e.to_string()})),
            (Err(e), false) => println!(
                "{:<36} {:<10} {}",
                printable(id),
                "?",
                printable(&format!("{e:#}"))
            ),
        }
    }
    Ok(())
}
