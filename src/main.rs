//! The `denizen` command: serve the example apps, list objects and workflow instances, query one
//! object's database.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use denizen::admin::{self, Address};
use denizen::agent::workflow;
use denizen::{Durability, Options, Runtime, Value};
use serde::Deserialize;

/// Why jemalloc: see its entry in Cargo.toml.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "denizen",
    version,
    about = "Durable objects and agents, self-hosted"
)]
struct Cli {
    /// Configuration file (TOML). Missing is fine; flags and environment override it.
    #[arg(
        long,
        global = true,
        env = "DENIZEN_CONFIG",
        default_value = "denizen.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server with the example apps.
    Serve(ServeArgs),
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
        /// The server's admin token, when it has one.
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
    },
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8787].
    #[arg(long, env = "DENIZEN_LISTEN")]
    listen: Option<SocketAddr>,
    /// Where object databases live [default: ./data].
    #[arg(long, env = "DENIZEN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Evict objects idle this long, e.g. 10s or 500ms [default: 10s].
    #[arg(long, env = "DENIZEN_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    idle_timeout: Option<Duration>,
    /// `normal` (survives a crash) or `fsync` (survives power loss) [default: normal].
    #[arg(long, env = "DENIZEN_DURABILITY")]
    durability: Option<Durability>,
    /// Events queued per object before callers get 503 [default: 1024].
    #[arg(long, env = "DENIZEN_MAILBOX_CAPACITY")]
    mailbox_capacity: Option<usize>,
    /// Objects kept in memory (each with its SQLite database open, about 80 KiB) before idle
    /// ones hibernate early [default: 16384].
    #[arg(long, env = "DENIZEN_MAX_OPEN_OBJECTS")]
    max_open_objects: Option<usize>,
    /// Largest WebSocket message in bytes; bigger closes the socket with 1009 [default: 32 MiB].
    #[arg(long, env = "DENIZEN_MAX_MESSAGE_SIZE")]
    max_message_size: Option<usize>,
    /// Bytes of unwritten messages one WebSocket may hold; past it the client is too slow and
    /// the socket closes with 1008 [default: 16 MiB].
    #[arg(long, env = "DENIZEN_MAX_SEND_BACKLOG")]
    max_send_backlog: Option<usize>,
    /// Server ping interval for WebSockets, e.g. 30s; `0s` disables [default: 30s].
    #[arg(long, env = "DENIZEN_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    heartbeat_interval: Option<Duration>,
    /// Bearer token required by /metrics and /admin routes.
    #[arg(long, env = "DENIZEN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// How long idle CPUs poll (with the idle scheduling class) before they halt, so the next
    /// message needs no wake-up of a halted CPU, e.g. 200us; `0s` disables [default: 200us].
    #[arg(long, env = "DENIZEN_IDLE_POLL", value_parser = humantime::parse_duration)]
    idle_poll: Option<Duration>,
    /// Where browsers reach this server, e.g. https://agents.example; MCP OAuth callbacks come
    /// back to <public-url>/agents/<class>/<name>/callback [default: http://<listen address>].
    #[arg(long, env = "DENIZEN_PUBLIC_URL")]
    public_url: Option<String>,
}

/// `denizen.toml`: the same settings as the flags.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    idle_timeout: Option<String>,
    durability: Option<Durability>,
    mailbox_capacity: Option<usize>,
    max_open_objects: Option<usize>,
    max_message_size: Option<usize>,
    max_send_backlog: Option<usize>,
    heartbeat_interval: Option<String>,
    admin_token: Option<String>,
    idle_poll: Option<String>,
    public_url: Option<String>,
}

fn load_file(path: &Path) -> Result<FileConfig> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn duration(field: &str, value: Option<&str>) -> Result<Option<Duration>> {
    value
        .map(|v| {
            humantime::parse_duration(v).with_context(|| {
                format!("`{field}` in the config file: `{v}` is not a duration like 10s or 500ms")
            })
        })
        .transpose()
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let file = load_file(&cli.config)?;
    match cli.command {
        Command::Serve(args) => serve(args, file),
        Command::Objects {
            namespace,
            data_dir,
            json,
        } => {
            let dir = data_dir.or(file.data_dir).unwrap_or_else(|| "data".into());
            let objects = admin::list_objects(&dir, &namespace)?;
            if json {
                for o in &objects {
                    println!("{}", serde_json::to_string(o)?);
                }
            } else {
                println!("{:<24} {:<64} {:>10}  LAST ACTIVE", "NAME", "ID", "SIZE");
                for o in &objects {
                    println!(
                        "{:<24} {:<64} {:>10}  {}",
                        o.name.as_deref().unwrap_or("-"),
                        o.id,
                        o.size_bytes,
                        humantime::format_rfc3339_millis(denizen::time::from_ms(o.last_active_ms))
                    );
                }
            }
            Ok(())
        }
        Command::Workflows {
            name,
            data_dir,
            json,
            server,
        } => {
            let dir = data_dir.or(file.data_dir).unwrap_or_else(|| "data".into());
            let server = server.or_else(|| running_server(&dir));
            list_workflows(&dir, &name, json, server.as_deref())
        }
        Command::Sql {
            namespace,
            object,
            query,
            id,
            data_dir,
            server,
            admin_token,
        } => {
            let dir = data_dir.or(file.data_dir).unwrap_or_else(|| "data".into());
            let token = admin_token.or(file.admin_token);
            let from_address_file = server.is_none();
            let server = server.or_else(|| running_server(&dir));
            if let Some(url) = server {
                match remote_sql(&url, token.as_deref(), &namespace, &object, id, &query) {
                    Ok(answer) => return print_answer(&answer),
                    // The address file outlived a server killed without a chance to remove it.
                    Err(Remote::Unreachable(e)) if from_address_file => {
                        tracing::debug!(%url, error = %e, "no server answers for this data directory; opening the file");
                    }
                    Err(Remote::Unreachable(e)) => {
                        return Err(e)
                            .with_context(|| format!("no Denizen server answers at {url}"));
                    }
                    Err(Remote::Refused(message)) => bail!("{message}"),
                }
            }
            let address = if id {
                Address::Id(&object)
            } else {
                Address::Name(&object)
            };
            let mut opened = admin::open_object(&dir, &namespace, address, Durability::Normal)?;
            let cursor = opened.storage.exec(&query, [])?;
            opened.storage.commit()?;
            let rows: Vec<Vec<String>> = cursor
                .rows()
                .iter()
                .map(|row| row.iter().map(show).collect())
                .collect();
            print_table(
                cursor.columns(),
                &rows,
                &format!(
                    "{} read, {} written",
                    cursor.rows_read(),
                    cursor.rows_written()
                ),
            );
            Ok(())
        }
    }
}

/// Where `denizen serve` writes its address while it runs on a data directory.
const SERVER_ADDRESS_FILE: &str = "server.address";

/// The address of the server running on `dir`, from the file it keeps there while it runs.
fn running_server(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(SERVER_ADDRESS_FILE)).ok()?;
    let url = text.trim();
    (!url.is_empty()).then(|| url.to_string())
}

enum Remote {
    /// Nothing answered: no server there.
    Unreachable(anyhow::Error),
    /// The server answered with an error (bad SQL, unknown object, wrong token).
    Refused(String),
}

/// `s` percent-encoded as one URL path segment.
fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Runs the query through a server's `/admin/sql` route.
fn remote_sql(
    url: &str,
    token: Option<&str>,
    namespace: &str,
    object: &str,
    by_id: bool,
    query: &str,
) -> std::result::Result<serde_json::Value, Remote> {
    let mut endpoint = format!(
        "{}/admin/sql/{}/{}",
        url.trim_end_matches('/'),
        segment(namespace),
        segment(object)
    );
    if by_id {
        endpoint.push_str("?id");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Remote::Unreachable(e.into()))?;
    rt.block_on(async {
        let mut req = reqwest::Client::new()
            .post(&endpoint)
            .body(query.to_string());
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Remote::Unreachable(e.into()))?;
        let status = resp.status();
        let body = resp
            .text()
            .await
            .map_err(|e| Remote::Unreachable(e.into()))?;
        if !status.is_success() {
            return Err(Remote::Refused(format!(
                "the server at {url} answered {status}: {}",
                body.trim()
            )));
        }
        serde_json::from_str(&body).map_err(|e| {
            Remote::Refused(format!(
                "the server at {url} answered something else than SQL results: {e}"
            ))
        })
    })
}

/// A result as `POST /admin/sql` answers it, printed like one read from the file.
fn print_answer(answer: &serde_json::Value) -> Result<()> {
    let columns: Vec<String> = answer["columns"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|c| c.as_str())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "NULL".to_string(),
        serde_json::Value::String(t) => t.clone(),
        serde_json::Value::Object(o) => match o.get("blob").and_then(|b| b.as_str()) {
            Some(hex) => format!("x'{hex}'"),
            None => v.to_string(),
        },
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = answer["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| {
                    row.as_array()
                        .map(|cells| cells.iter().map(cell).collect())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    print_table(
        &columns,
        &rows,
        &format!(
            "{} read, {} written; through the server",
            answer["rows_read"], answer["rows_written"]
        ),
    );
    Ok(())
}

/// Tab-separated: the column names, then one line per row; the counts on stderr.
fn print_table(columns: &[String], rows: &[Vec<String>], counts: &str) {
    println!("{}", columns.join("\t"));
    for row in rows {
        println!("{}", row.join("\t"));
    }
    eprintln!("({} rows, {counts})", rows.len());
}

/// An instance's status from the server's `GET /workflows/<name>/<id>`; `None` when no server
/// answers there.
fn remote_status(
    rt: &tokio::runtime::Runtime,
    url: &str,
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
        let resp = reqwest::get(&endpoint).await.ok()?;
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

fn list_workflows(dir: &Path, name: &str, json: bool, server: Option<&str>) -> Result<()> {
    // A running server holds the data directory: its instances are asked from it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut server = server.map(str::to_string);
    let namespace = workflow::namespace_of(name);
    let objects = admin::list_objects(dir, &namespace)?;
    if objects.is_empty() && !json {
        eprintln!("no instances of workflow `{name}` in {}", dir.display());
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
                        .and_then(|url| remote_status(&rt, url, name, id))
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
                id,
                s.status,
                s.steps.len(),
                humantime::format_rfc3339_millis(denizen::time::from_ms(s.updated_ms))
            ),
            (Ok(None), _) => {}
            // One instance that cannot be read: say so and go on.
            (Err(e), true) => println!("{}", serde_json::json!({"id": id, "error": e.to_string()})),
            (Err(e), false) => println!("{id:<36} {:<10} {e:#}", "?"),
        }
    }
    Ok(())
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(r) => r.to_string(),
        Value::Text(t) => t.clone(),
        Value::Blob(b) => format!(
            "x'{}'",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        ),
    }
}

fn serve(args: ServeArgs, file: FileConfig) -> Result<()> {
    let defaults = Options::default();
    let options = Options {
        data_dir: args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| defaults.data_dir.clone()),
        idle_timeout: match args.idle_timeout {
            Some(d) => d,
            None => duration("idle_timeout", file.idle_timeout.as_deref())?
                .unwrap_or(defaults.idle_timeout),
        },
        durability: args
            .durability
            .or(file.durability)
            .unwrap_or(defaults.durability),
        mailbox_capacity: args
            .mailbox_capacity
            .or(file.mailbox_capacity)
            .unwrap_or(defaults.mailbox_capacity),
        max_open_objects: args
            .max_open_objects
            .or(file.max_open_objects)
            .unwrap_or(defaults.max_open_objects),
        ..defaults
    };
    if options.mailbox_capacity == 0 || options.max_open_objects == 0 {
        bail!("mailbox_capacity and max_open_objects must be at least 1");
    }
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8787)));
    let mut gateway_config = denizen::gateway::Config::default();
    if let Some(max) = args.max_message_size.or(file.max_message_size) {
        gateway_config.max_message_size = max;
    }
    if let Some(max) = args.max_send_backlog.or(file.max_send_backlog) {
        gateway_config.max_send_backlog = max;
    }
    let heartbeat = match args.heartbeat_interval {
        Some(d) => Some(d),
        None => duration("heartbeat_interval", file.heartbeat_interval.as_deref())?,
    };
    if let Some(d) = heartbeat {
        gateway_config.heartbeat_interval = (!d.is_zero()).then_some(d);
    }
    gateway_config.admin_token = args.admin_token.or(file.admin_token);
    let public_url = args.public_url.or(file.public_url);
    if let Some(url) = &public_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        bail!("public_url must start with http:// or https://, got `{url}`");
    }

    let idle_poll = match args.idle_poll {
        Some(d) => d,
        None => duration("idle_poll", file.idle_poll.as_deref())?
            .unwrap_or(denizen::IdlePoll::DEFAULT_WINDOW),
    };
    let idle_poll = denizen::IdlePoll::start(idle_poll);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(idle_poll.on_park())
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let addr = listener.local_addr()?;
        let public_url = public_url.unwrap_or_else(|| format!("http://{addr}"));
        let workflows = denizen::apps::workflows::workflows();
        let apps = denizen::apps::register(Runtime::builder().options(options.clone()), &public_url);
        let runtime = workflows
            .register(apps)
            .build()
            .with_context(|| format!("opening the data directory {}", options.data_dir.display()))?;
        let registry = workflows.bind(&runtime)?;
        // The first line on stdout names the address (tests start the server on port 0).
        println!("denizen listening on http://{addr}");
        tracing::info!(%addr, data_dir = %options.data_dir.display(), "serving the example apps: counter, chat, counter-agent, mcp-agent, workflows approval and pipeline");
        let gateway = denizen::gateway::Gateway::new(runtime, gateway_config);
        let app = gateway
            .router()
            .merge(denizen::agents::routes(&gateway, denizen::apps::AGENTS))
            .merge(denizen::workflows_http::routes(registry));
        // `denizen sql` finds the server running on this data directory here.
        let address_file = options.data_dir.join(SERVER_ADDRESS_FILE);
        if let Err(e) = std::fs::write(&address_file, format!("http://{addr}\n")) {
            tracing::warn!(path = %address_file.display(), error = %e, "could not record the server's address; `denizen sql` will need --server");
        }
        let served = gateway.serve_router(listener, app, shutdown_signal()).await;
        let _ = std::fs::remove_file(&address_file);
        served?;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
