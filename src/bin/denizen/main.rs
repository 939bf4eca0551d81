//! The `denizen` command: serve the example apps, list objects and workflow instances, query one
//! object's database.

mod cli;
mod config;
mod inspect;
mod remote;
mod serve;
mod sql;

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

use cli::{Cli, Command};
use remote::running_server;

/// Why jemalloc: see its entry in Cargo.toml.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let file = config::load_file(&cli.config)?;
    let data_dir = |flag: Option<PathBuf>| {
        flag.or(file.data_dir.clone())
            .unwrap_or_else(|| "data".into())
    };
    match cli.command {
        Command::Serve(args) => serve::serve(args, file),
        Command::Objects {
            namespace,
            data_dir: dir,
            json,
        } => inspect::objects(&data_dir(dir), &namespace, json),
        Command::Workflows {
            name,
            data_dir: dir,
            json,
            server,
        } => {
            let dir = data_dir(dir);
            let server = server.or_else(|| running_server(&dir));
            inspect::list_workflows(&dir, &name, json, server.as_deref())
        }
        Command::Sql {
            namespace,
            object,
            query,
            id,
            data_dir: dir,
            server,
            admin_token,
        } => {
            let token = admin_token.or(file.admin_token.clone());
            sql::run(sql::Query {
                dir: &data_dir(dir),
                namespace: &namespace,
                object: &object,
                by_id: id,
                query: &query,
                server,
                token,
            })
        }
    }
}
