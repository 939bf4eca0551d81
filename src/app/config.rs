//! [`Config`]: a server's settings, read from `denizen.toml`, `DENIZEN_*` environment variables
//! and flags, in that order of precedence (a flag beats the environment, which beats the file).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use denizen_runtime::storage::QueryLimits;
use denizen_runtime::{Durability, Options};
use serde::{Deserialize, Serialize};

use crate::app::Error;
use denizen_agents::chat::model::ModelConfig;

/// Every setting of a server, each with its default. The same struct is the TOML file (keys as
/// the field names), the flags of `serve` (`--idle-timeout`) and the environment
/// (`DENIZEN_IDLE_TIMEOUT`). Durations are written like `10s`, `500ms` or `2m`.
///
/// ```
/// use denizen::app::Config;
///
/// let config = Config::from_toml("idle_timeout = \"2s\"\nmailbox_capacity = 64").unwrap();
/// assert_eq!(config.idle_timeout, std::time::Duration::from_secs(2));
/// assert_eq!(config.mailbox_capacity, 64);
/// assert_eq!(config.listen, Config::default().listen);
/// assert!(Config::from_toml("idle_timout = \"2s\"").is_err()); // misspelled: refused
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    #[cfg_attr(feature = "cli", arg(long, env = "DENIZEN_LISTEN"))]
    pub listen: SocketAddr,
    /// Where object databases live.
    #[cfg_attr(feature = "cli", arg(long, env = "DENIZEN_DATA_DIR"))]
    pub data_dir: PathBuf,
    /// Evict objects idle this long, e.g. 10s or 500ms.
    #[cfg_attr(feature = "cli", arg(long, env = "DENIZEN_IDLE_TIMEOUT", value_parser = parse_duration))]
    #[serde(with = "human_duration")]
    pub idle_timeout: Duration,
    /// `normal` (survives a crash) or `fsync` (survives power loss).
    #[cfg_attr(feature = "cli", arg(long, env = "DENIZEN_DURABILITY"))]
    pub durability: Durability,
    /// Events queued per object before callers get 503.
    #[cfg_attr(feature = "cli", arg(long, env = "DENIZEN_MAILBOX_CAPACITY"))]
    pub mailbox_capacity: usize,
    /// A handler running longer is stopped, its writes rolled back and the object reset; the
    /// caller gets 504. `0s` disables.
    #[cfg_attr(feature = "cli", arg(long, env = "DENIZEN_EVENT_TIMEOUT", value_parser = parse_duration))]
    #[serde(with = "human_duration")]
    pub event_timeout: Duration,
    /// WebSocket messages one connection may have waiting in its object's mailbox before the
    /// server stops reading from it.
    #[cfg_attr(feature = "cli", arg(long, env = "DENIZEN_SOCKET_MESSAGE_QUOTA"))]
    pub socket_message_quota: usize,
    /// Time budget of one operator query (`sql` command, /admin/sql).
    #[cfg_attr(feature = "cli", arg(long, env = "DENIZEN_SQL_TIME_BUDGET", value_parser = parse_duration))]
    #[serde(with = "human_duration")]
    pub sql_time_budget: Duration,
    /// Rows one operator query may return.
    #[cfg_attr(feature = "cli", arg(long, env = "DENIZEN_SQL_MAX_ROWS"))]
    pub sql_max_rows: usize,
    /// Bytes of values one operator query may return.
    #[cfg_attr(feature = "cli", arg(long, env = "DENIZEN_SQL_MAX_BYTES"))]
    pub sql_max_bytes: usize,
    /// Objects kept in memory (each with its SQLite database open, about 80 KiB) before idle
    /// ones hibernate early.
    #[cfg_attr(feature = "cli", arg(long, env = "DENIZEN_MAX_OPEN_OBJECTS"))]
    pub max_open_objects: usize,
    /// Largest WebSocket message in bytes; bigger closes the socket with 1009.
    #[cfg_attr(feature = "cli", arg(long, env = "DENIZEN_MAX_MESSAGE_SIZE"))]
    pub max_message_size: usize,
    /// Bytes of unwritten messages one WebSocket may hold; past it the client is too slow and
    /// the socket closes with 1008.
    #[cfg_attr(feature = "cli", arg(long, env = "DENIZEN_MAX_SEND_BACKLOG"))]
    pub max_send_backlog: usize,
    /// Server ping interval for WebSockets, e.g. 30s; `0s` disables.
    #[cfg_attr(feature = "cli", arg(long, env = "DENIZEN_HEARTBEAT_INTERVAL", value_parser = parse_duration))]
    #[serde(with = "human_duration")]
    pub heartbeat_interval: Duration,
    /// Bearer token required by /admin and /workflows routes (and then /metrics); by default
    /// the server generates one and keeps it in `<data-dir>/admin.token`.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "DENIZEN_ADMIN_TOKEN", hide_env_values = true)
    )]
    pub admin_token: Option<String>,
    /// How long a client may take to send a request's headers; also how long a keep-alive
    /// connection may wait idle for its next request.
    #[cfg_attr(feature = "cli", arg(long, env = "DENIZEN_HEADER_READ_TIMEOUT", value_parser = parse_duration))]
    #[serde(with = "human_duration")]
    pub header_read_timeout: Duration,
    /// Open connections (WebSockets included) at most; past it new ones wait until one closes.
    #[cfg_attr(feature = "cli", arg(long, env = "DENIZEN_MAX_CONNECTIONS"))]
    pub max_connections: usize,
    /// How long shutdown lets HTTP requests in flight and objects' queued events finish.
    #[cfg_attr(feature = "cli", arg(long, env = "DENIZEN_SHUTDOWN_TIMEOUT", value_parser = parse_duration))]
    #[serde(with = "human_duration")]
    pub shutdown_timeout: Duration,
    /// How long idle CPUs poll (with the idle scheduling class) before they halt, so the next
    /// message needs no wake-up of a halted CPU, e.g. 200us; `0s` disables.
    #[cfg_attr(feature = "cli", arg(long, env = "DENIZEN_IDLE_POLL", value_parser = parse_duration))]
    #[serde(with = "human_duration")]
    pub idle_poll: Duration,
    /// Where browsers reach this server, e.g. `https://agents.example`; MCP OAuth callbacks come
    /// back to `<public-url>/agents/<class>/<name>/callback`; by default `http://<listen address>`.
    #[cfg_attr(feature = "cli", arg(long, env = "DENIZEN_PUBLIC_URL"))]
    pub public_url: Option<String>,
    /// The OpenAI-compatible model server of the app's chat agents: its base URL, e.g.
    /// `http://127.0.0.1:8080/v1` (llama.cpp, vLLM, Ollama) or `https://api.openai.com/v1`.
    #[cfg_attr(feature = "cli", arg(long, env = "DENIZEN_LLM_URL"))]
    pub llm_url: Option<String>,
    /// The model the chat agents ask for (servers of one model ignore it).
    #[cfg_attr(feature = "cli", arg(long, env = "DENIZEN_LLM_MODEL"))]
    pub llm_model: String,
    /// The model server's API key, sent as a bearer token.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "DENIZEN_LLM_API_KEY", hide_env_values = true)
    )]
    pub llm_api_key: Option<String>,
}

impl Default for Config {
    /// The defaults of the runtime's and the gateway's own options, on 127.0.0.1:8787 with the
    /// data in `./data`.
    fn default() -> Self {
        let runtime = Options::default();
        let gateway = denizen_gateway::Options::default();
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            data_dir: runtime.data_dir,
            idle_timeout: runtime.idle_timeout,
            durability: runtime.durability,
            mailbox_capacity: runtime.mailbox_capacity,
            event_timeout: runtime.event_timeout.unwrap_or(Duration::ZERO),
            socket_message_quota: runtime.socket_message_quota,
            sql_time_budget: runtime.operator_query_limits.time_budget,
            sql_max_rows: runtime.operator_query_limits.max_rows,
            sql_max_bytes: runtime.operator_query_limits.max_bytes,
            max_open_objects: runtime.max_open_objects,
            max_message_size: gateway.max_message_size,
            max_send_backlog: gateway.max_send_backlog,
            heartbeat_interval: gateway.heartbeat_interval.unwrap_or(Duration::ZERO),
            admin_token: gateway.admin_token,
            header_read_timeout: gateway.header_read_timeout,
            max_connections: gateway.max_connections,
            shutdown_timeout: gateway.shutdown_timeout,
            idle_poll: denizen_runtime::IdlePoll::DEFAULT_WINDOW,
            public_url: None,
            llm_url: None,
            llm_model: "default".into(),
            llm_api_key: None,
        }
    }
}

impl Config {
    /// The settings in a TOML document; what it leaves out keeps its default. An unknown key
    /// is an error (a misspelled setting would otherwise be ignored).
    pub fn from_toml(text: &str) -> Result<Config, Error> {
        let config: Config = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The settings in the TOML file at `path`; a missing file means every default.
    pub fn from_file(path: &Path) -> Result<Config, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => {
                return Err(Error::ConfigFile {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let config: Config = toml::from_str(&text).map_err(|e| Error::ConfigSyntax {
            path: path.to_path_buf(),
            message: one_line(&text, &e),
        })?;
        config.validate().map_err(|e| Error::ConfigSyntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(config)
    }

    /// These settings with each key of the JSON object `over` replaced (a `null` is not given,
    /// and replaces nothing), checked as a whole.
    #[cfg(any(test, feature = "cli"))]
    pub(crate) fn overlay(self, over: serde_json::Value) -> Result<Config, Error> {
        let mut merged = serde_json::to_value(&self).map_err(|e| Error::Config(e.to_string()))?;
        if let (Some(base), serde_json::Value::Object(over)) = (merged.as_object_mut(), over) {
            base.extend(over.into_iter().filter(|(_, v)| !v.is_null()));
        }
        let config: Config =
            serde_json::from_value(merged).map_err(|e| Error::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Refuses values no server can run with, before anything is opened.
    pub fn validate(&self) -> Result<(), Error> {
        for (name, value) in [
            ("mailbox_capacity", self.mailbox_capacity),
            ("max_open_objects", self.max_open_objects),
            ("socket_message_quota", self.socket_message_quota),
            ("sql_max_rows", self.sql_max_rows),
            ("sql_max_bytes", self.sql_max_bytes),
        ] {
            if value == 0 {
                return Err(Error::Config(format!("{name} must be at least 1")));
            }
        }
        if self.sql_time_budget.is_zero() {
            return Err(Error::Config("sql_time_budget must be more than 0s".into()));
        }
        for (name, url) in [("public_url", &self.public_url), ("llm_url", &self.llm_url)] {
            if let Some(url) = url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(Error::Config(format!(
                    "{name} must start with http:// or https://, got `{url}`"
                )));
            }
        }
        self.gateway_options().validate()?;
        Ok(())
    }

    /// The chat agents' model, if `llm_url` is set.
    pub fn model_config(&self) -> Option<ModelConfig> {
        let url = self.llm_url.as_ref()?;
        Some(
            ModelConfig::new(url.clone(), self.llm_model.clone())
                .with_api_key(self.llm_api_key.clone()),
        )
    }

    /// The runtime's options.
    pub fn runtime_options(&self) -> Options {
        Options {
            data_dir: self.data_dir.clone(),
            idle_timeout: self.idle_timeout,
            durability: self.durability,
            mailbox_capacity: self.mailbox_capacity,
            max_open_objects: self.max_open_objects,
            event_timeout: nonzero(self.event_timeout),
            socket_message_quota: self.socket_message_quota,
            operator_query_limits: QueryLimits {
                time_budget: self.sql_time_budget,
                max_rows: self.sql_max_rows,
                max_bytes: self.sql_max_bytes,
            },
            // One deadline for the operator: requests in flight, then objects' queued events.
            shutdown_timeout: self.shutdown_timeout,
            ..Options::default()
        }
    }

    /// The gateway's options.
    pub fn gateway_options(&self) -> denizen_gateway::Options {
        denizen_gateway::Options {
            max_message_size: self.max_message_size,
            max_send_backlog: self.max_send_backlog,
            heartbeat_interval: nonzero(self.heartbeat_interval),
            admin_token: self.admin_token.clone(),
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections,
            shutdown_timeout: self.shutdown_timeout,
            ..denizen_gateway::Options::default()
        }
    }
}

/// A TOML error on one line, with where it is: `line 3, column 10: invalid socket address`.
fn one_line(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', "; ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = before.len() - start + 1;
            let source = text[start..].lines().next().unwrap_or("").trim();
            format!("line {line}, column {column} (`{source}`): {message}")
        }
        None => message,
    }
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

#[cfg(feature = "cli")]
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e}; write a duration like 10s or 500ms"))
}

/// Durations in the file as people write them: `10s`, `500ms`, `2m`.
mod human_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            D::Error::custom(format!(
                "`{text}` is not a duration like 10s or 500ms ({e})"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_round_trips_through_its_text() {
        let text = serde_json::to_value(Config::default()).unwrap();
        assert_eq!(Config::default().overlay(text).unwrap(), Config::default());
    }

    #[test]
    fn the_defaults_are_the_runtime_and_gateway_defaults() {
        let config = Config::default();
        assert_eq!(
            config.runtime_options().idle_timeout,
            Options::default().idle_timeout
        );
        assert_eq!(
            config.runtime_options().event_timeout,
            Options::default().event_timeout
        );
        assert_eq!(
            config.gateway_options().heartbeat_interval,
            denizen_gateway::Options::default().heartbeat_interval
        );
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        let e = Config::from_toml("idle_timeout = \"soon\"").unwrap_err();
        assert!(e.to_string().contains("soon"), "{e}");
        let e = Config::from_toml("mailbox_capacity = 0").unwrap_err();
        assert!(e.to_string().contains("mailbox_capacity"), "{e}");
        let e = Config::from_toml("public_url = \"example.com\"").unwrap_err();
        assert!(e.to_string().contains("public_url"), "{e}");
        let e = Config::from_toml("colour = \"red\"").unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }

    #[test]
    fn a_file_error_is_one_line_saying_where() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("denizen.toml");
        std::fs::write(&path, "data_dir = \"d\"\nlisten = \"x\"\n").unwrap();
        let e = Config::from_file(&path).unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("line 2, column 10 (`listen = \"x\"`)"), "{e}");
        assert!(e.contains("socket address"), "{e}");
    }

    #[test]
    fn zero_disables_the_timeouts_that_can_be_disabled() {
        let config =
            Config::from_toml("event_timeout = \"0s\"\nheartbeat_interval = \"0s\"").unwrap();
        assert_eq!(config.runtime_options().event_timeout, None);
        assert_eq!(config.gateway_options().heartbeat_interval, None);
    }
}
