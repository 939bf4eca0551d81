//! MCP client figures against real servers on 127.0.0.1 (installed by
//! `mcp/tests/peers/install.sh`): connect time (transport probing + discovery) and the median
//! `call_tool` round trip per transport and era. Prints one line per figure.
//!
//! `cargo bench -p denizen-mcp --bench calls`

#![allow(clippy::print_stdout)] // a bench reports its figures on stdout

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use denizen_mcp::{
    CallOptions, Era, ManagerOptions, McpClientManager, Route, ServerConfig, TransportKind,
};
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

const CALLS: usize = 300;

fn peers() -> PathBuf {
    std::env::var_os("DENIZEN_MCP_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.peers/mcp"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts the Python SDK test server and waits for uvicorn's "running on" line.
async fn python(transport: &str, port: u16) -> anyhow::Result<Child> {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/py_server.py");
    let mut child = Command::new(peers().join("venv/bin/python"))
        .arg(here)
        .arg(port.to_string())
        .arg(transport)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start the Python MCP server (run mcp/tests/peers/install.sh)")?;
    let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
    let needle = format!("127.0.0.1:{port}");
    while let Some(line) = lines.next_line().await? {
        if line.contains(&needle) {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(child);
        }
    }
    bail!("the Python MCP server exited before listening")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn figure(label: &str, transport: &str, route: Option<Route>) -> anyhow::Result<()> {
    let port = free_port()?;
    let _server = python(transport, port).await?;
    let path = if transport == "sse" { "sse" } else { "mcp" };
    let manager = McpClientManager::new(ManagerOptions::default());
    let mut config = ServerConfig::new("py", format!("http://127.0.0.1:{port}/{path}"));
    config.route = route;
    let started = Instant::now();
    manager.connect(config, Duration::from_secs(30)).await?;
    let connect = started.elapsed();
    let mut times = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        let t = Instant::now();
        manager
            .call_tool("py__add", json!({"a": i, "b": 1}), CallOptions::default())
            .await?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    println!(
        "{label}: connect {:.1} ms, call_tool median {:.0} µs ({CALLS} calls)",
        connect.as_secs_f64() * 1e3,
        median(times)
    );
    manager.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let streamable = |era| {
        Some(Route {
            transport: TransportKind::StreamableHttp,
            era,
        })
    };
    figure(
        "Streamable HTTP, probed (first connect)",
        "streamable-http",
        None,
    )
    .await?;
    figure(
        "Streamable HTTP 2026-07-28 (remembered)",
        "streamable-http",
        streamable(Era::Modern),
    )
    .await?;
    figure(
        "Streamable HTTP 2025-11-25 (remembered)",
        "streamable-http",
        streamable(Era::Legacy),
    )
    .await?;
    figure("legacy SSE, probed (first connect)", "sse", None).await?;
    Ok(())
}
