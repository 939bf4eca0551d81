//! `denizen serve`: the example apps behind the gateway.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use denizen::storage::QueryLimits;
use denizen::{Options, Runtime};

use crate::cli::ServeArgs;
use crate::config::{FileConfig, duration};
use crate::remote::SERVER_ADDRESS_FILE;

pub(crate) fn serve(args: ServeArgs, file: FileConfig) -> Result<()> {
    let defaults = Options::default();
    let mut options = Options {
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
        event_timeout: match args.event_timeout {
            Some(d) => Some(d),
            None => duration("event_timeout", file.event_timeout.as_deref())?,
        }
        .map_or(defaults.event_timeout, |d| (!d.is_zero()).then_some(d)),
        socket_message_quota: args
            .socket_message_quota
            .or(file.socket_message_quota)
            .unwrap_or(defaults.socket_message_quota),
        operator_query_limits: QueryLimits {
            time_budget: match args.sql_time_budget {
                Some(d) => d,
                None => duration("sql_time_budget", file.sql_time_budget.as_deref())?
                    .unwrap_or(defaults.operator_query_limits.time_budget),
            },
            max_rows: args
                .sql_max_rows
                .or(file.sql_max_rows)
                .unwrap_or(defaults.operator_query_limits.max_rows),
            max_bytes: args
                .sql_max_bytes
                .or(file.sql_max_bytes)
                .unwrap_or(defaults.operator_query_limits.max_bytes),
        },
        ..defaults
    };
    for (name, value) in [
        ("mailbox_capacity", options.mailbox_capacity),
        ("max_open_objects", options.max_open_objects),
        ("socket_message_quota", options.socket_message_quota),
        ("sql_max_rows", options.operator_query_limits.max_rows),
        ("sql_max_bytes", options.operator_query_limits.max_bytes),
    ] {
        if value == 0 {
            bail!("{name} must be at least 1");
        }
    }
    if options.operator_query_limits.time_budget.is_zero() {
        bail!("sql_time_budget must be more than 0s");
    }
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8787)));
    let mut gateway_options = denizen::gateway::Options::default();
    if let Some(max) = args.max_message_size.or(file.max_message_size) {
        gateway_options.max_message_size = max;
    }
    if let Some(max) = args.max_send_backlog.or(file.max_send_backlog) {
        gateway_options.max_send_backlog = max;
    }
    let heartbeat = match args.heartbeat_interval {
        Some(d) => Some(d),
        None => duration("heartbeat_interval", file.heartbeat_interval.as_deref())?,
    };
    if let Some(d) = heartbeat {
        gateway_options.heartbeat_interval = (!d.is_zero()).then_some(d);
    }
    gateway_options.admin_token = args.admin_token.or(file.admin_token);
    if let Some(d) = match args.header_read_timeout {
        Some(d) => Some(d),
        None => duration("header_read_timeout", file.header_read_timeout.as_deref())?,
    } {
        gateway_options.header_read_timeout = d;
    }
    if let Some(max) = args.max_connections.or(file.max_connections) {
        gateway_options.max_connections = max;
    }
    if let Some(d) = match args.shutdown_timeout {
        Some(d) => Some(d),
        None => duration("shutdown_timeout", file.shutdown_timeout.as_deref())?,
    } {
        gateway_options.shutdown_timeout = d;
        // One deadline for the operator: requests in flight, then objects' queued events.
        options.shutdown_timeout = d;
    }
    // Before the data directory is opened: a bad value is refused without side effects.
    gateway_options.validate()?;
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
        // Before the address is announced: the admin token file exists once clients may come.
        let gateway = denizen::gateway::Gateway::new(runtime, gateway_options);
        gateway.check()?;
        // The first line on stdout names the address (tests start the server on port 0).
        println!("denizen listening on http://{addr}");
        tracing::info!(%addr, data_dir = %options.data_dir.display(), "serving the example apps: counter, chat, counter-agent, mcp-agent, workflows approval and pipeline");
        let app = gateway
            .router()
            .merge(denizen::agents::routes(&gateway, denizen::apps::AGENTS))
            .merge(denizen::workflows_http::routes(&gateway, registry));
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
