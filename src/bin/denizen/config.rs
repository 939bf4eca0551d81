//! `denizen.toml`: the file behind the flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use denizen::Durability;
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) idle_timeout: Option<String>,
    pub(crate) durability: Option<Durability>,
    pub(crate) mailbox_capacity: Option<usize>,
    pub(crate) event_timeout: Option<String>,
    pub(crate) socket_message_quota: Option<usize>,
    pub(crate) sql_time_budget: Option<String>,
    pub(crate) sql_max_rows: Option<usize>,
    pub(crate) sql_max_bytes: Option<usize>,
    pub(crate) max_open_objects: Option<usize>,
    pub(crate) max_message_size: Option<usize>,
    pub(crate) max_send_backlog: Option<usize>,
    pub(crate) heartbeat_interval: Option<String>,
    pub(crate) admin_token: Option<String>,
    pub(crate) header_read_timeout: Option<String>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) shutdown_timeout: Option<String>,
    pub(crate) idle_poll: Option<String>,
    pub(crate) public_url: Option<String>,
}

pub(crate) fn load_file(path: &Path) -> Result<FileConfig> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub(crate) fn duration(field: &str, value: Option<&str>) -> Result<Option<Duration>> {
    value
        .map(|v| {
            humantime::parse_duration(v).with_context(|| {
                format!("`{field}` in the config file: `{v}` is not a duration like 10s or 500ms")
            })
        })
        .transpose()
}
