//! The command line: subcommands and the flags of `serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use denizen::Durability;

#[derive(Parser)]
#[command(
    name = "denizen",
    version,
    about = "Durable objects and agents, self-hosted"
)]
pub(crate) struct Cli {
    /// Configuration file (TOML). Missing is fine; flags and environment override it.
    #[arg(
        long,
        global = true,
        env = "DENIZEN_CONFIG",
        default_value = "denizen.toml"
    )]
    pub(crate) config: PathBuf,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the server with the example apps.
    Serve(Box<ServeArgs>),
    /// List the objects of a namespace: name, id, size, last active.
    Objects {
        namespace: String,
        #[arg(long, env = "DENIZEN_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run SQL against one object's database (its name, or its hex id with --id). While a
    /// server runs on the data directory the query goes through it, as an event of the object.
    Sql {
        namespace: String,
        object: String,
        query: String,
        #[arg(long)]
        id: bool,
        #[arg(long, env = "DENIZEN_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Run the query through this server (e.g. http://127.0.0.1:8787) instead of opening the
        /// file [default: the server running on the data directory, if any].
        #[arg(long, env = "DENIZEN_SERVER")]
        server: Option<String>,
        /// The server's admin token [default: the config file's, else the one the server
        /// keeps in <data-dir>/admin.token].
        #[arg(long, env = "DENIZEN_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
    },
    /// List the instances of a workflow with their status (reads the data directory).
    Workflows {
        name: String,
        #[arg(long, env = "DENIZEN_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Print JSON lines (the full status) instead of a table.
        #[arg(long)]
        json: bool,
        /// Ask this server for each status (e.g. http://127.0.0.1:8787) instead of opening the
        /// files [default: the server running on the data directory, if any].
        #[arg(long, env = "DENIZEN_SERVER")]
        server: Option<String>,
        /// The server's admin token [default: the config file's, else the one the server
        /// keeps in <data-dir>/admin.token].
        #[arg(long, env = "DENIZEN_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
    },
}

#[derive(clap::Args, Default)]
pub(crate) struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8787].
    #[arg(long, env = "DENIZEN_LISTEN")]
    pub(crate) listen: Option<SocketAddr>,
    /// Where object databases live [default: ./data].
    #[arg(long, env = "DENIZEN_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Evict objects idle this long, e.g. 10s or 500ms [default: 10s].
    #[arg(long, env = "DENIZEN_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub(crate) idle_timeout: Option<Duration>,
    /// `normal` (survives a crash) or `fsync` (survives power loss) [default: normal].
    #[arg(long, env = "DENIZEN_DURABILITY")]
    pub(crate) durability: Option<Durability>,
    /// Events queued per object before callers get 503 [default: 1024].
    #[arg(long, env = "DENIZEN_MAILBOX_CAPACITY")]
    pub(crate) mailbox_capacity: Option<usize>,
    /// A handler running longer is stopped, its writes rolled back and the object reset; the
    /// caller gets 504. E.g. 30s; `0s` disables [default: 30s].
    #[arg(long, env = "DENIZEN_EVENT_TIMEOUT", value_parser = humantime::parse_duration)]
    pub(crate) event_timeout: Option<Duration>,
    /// WebSocket messages one connection may have waiting in its object's mailbox before the
    /// server stops reading from it [default: 32].
    #[arg(long, env = "DENIZEN_SOCKET_MESSAGE_QUOTA")]
    pub(crate) socket_message_quota: Option<usize>,
    /// Time budget of one operator query (`denizen sql`, /admin/sql) [default: 5s].
    #[arg(long, env = "DENIZEN_SQL_TIME_BUDGET", value_parser = humantime::parse_duration)]
    pub(crate) sql_time_budget: Option<Duration>,
    /// Rows one operator query may return [default: 10000].
    #[arg(long, env = "DENIZEN_SQL_MAX_ROWS")]
    pub(crate) sql_max_rows: Option<usize>,
    /// Bytes of values one operator query may return [default: 16 MiB].
    #[arg(long, env = "DENIZEN_SQL_MAX_BYTES")]
    pub(crate) sql_max_bytes: Option<usize>,
    /// Objects kept in memory (each with its SQLite database open, about 80 KiB) before idle
    /// ones hibernate early [default: 16384].
    #[arg(long, env = "DENIZEN_MAX_OPEN_OBJECTS")]
    pub(crate) max_open_objects: Option<usize>,
    /// Largest WebSocket message in bytes; bigger closes the socket with 1009 [default: 32 MiB].
    #[arg(long, env = "DENIZEN_MAX_MESSAGE_SIZE")]
    pub(crate) max_message_size: Option<usize>,
    /// Bytes of unwritten messages one WebSocket may hold; past it the client is too slow and
    /// the socket closes with 1008 [default: 16 MiB].
    #[arg(long, env = "DENIZEN_MAX_SEND_BACKLOG")]
    pub(crate) max_send_backlog: Option<usize>,
    /// Server ping interval for WebSockets, e.g. 30s; `0s` disables [default: 30s].
    #[arg(long, env = "DENIZEN_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    pub(crate) heartbeat_interval: Option<Duration>,
    /// Bearer token required by /admin and /workflows routes (and then /metrics) [default: a
    /// generated one, kept in <data-dir>/admin.token].
    #[arg(long, env = "DENIZEN_ADMIN_TOKEN", hide_env_values = true)]
    pub(crate) admin_token: Option<String>,
    /// How long a client may take to send a request's headers; also how long a keep-alive
    /// connection may wait idle for its next request, e.g. 30s [default: 30s].
    #[arg(long, env = "DENIZEN_HEADER_READ_TIMEOUT", value_parser = humantime::parse_duration)]
    pub(crate) header_read_timeout: Option<Duration>,
    /// Open connections (WebSockets included) at most; past it new ones wait until one closes
    /// [default: 16384].
    #[arg(long, env = "DENIZEN_MAX_CONNECTIONS")]
    pub(crate) max_connections: Option<usize>,
    /// How long shutdown lets HTTP requests in flight finish before closing their connections,
    /// e.g. 10s [default: 10s].
    #[arg(long, env = "DENIZEN_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration)]
    pub(crate) shutdown_timeout: Option<Duration>,
    /// How long idle CPUs poll (with the idle scheduling class) before they halt, so the next
    /// message needs no wake-up of a halted CPU, e.g. 200us; `0s` disables [default: 200us].
    #[arg(long, env = "DENIZEN_IDLE_POLL", value_parser = humantime::parse_duration)]
    pub(crate) idle_poll: Option<Duration>,
    /// Where browsers reach this server, e.g. https://agents.example; MCP OAuth callbacks come
    /// back to <public-url>/agents/<class>/<name>/callback [default: http://<listen address>].
    #[arg(long, env = "DENIZEN_PUBLIC_URL")]
    pub(crate) public_url: Option<String>,
}
