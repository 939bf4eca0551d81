//! The `denizen` command: serve the example apps, list objects and workflow instances, query one
//! object's database.
// A command line answers on stdout.
#![allow(clippy::print_stdout)]

mod cli;
mod config;
mod escape;
mod inspect;
mod remote;
mod serve;
mod sql;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use cli::{Cli, Command};
use remote::{admin_token, running_server};

/// Why jemalloc: see its entry in Cargo.toml.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stderr = std::io::stderr();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Colour codes only for a person watching; a log file or a pipe gets plain text.
        .with_ansi(stderr.is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line with its causes, whatever RUST_BACKTRACE says: the message is for the
            // operator, and it may quote a name from the data directory.
            eprintln!("error: {}", escape::printable(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let file = config::load_file(&cli.config)?;
    let data_dir = |flag: Option<PathBuf>| {
        flag.or(file.data_dir.clone())
            .unwrap_or_else(|| "data".into())
    };
    match cli.command {
        Command::Serve(args) => serve::serve(*args, file),
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
            admin_token: token,
        } => {
            let dir = data_dir(dir);
            let server = server.or_else(|| running_server(&dir));
            let token = admin_token(&dir, token.or(file.admin_token.clone()));
            inspect::list_workflows(&dir, &name, json, server.as_deref(), token.as_deref())
        }
        Command::Sql {
            namespace,
            object,
            query,
            id,
            data_dir: dir,
            server,
            admin_token: token,
        } => {
            let dir = data_dir(dir);
            let token = admin_token(&dir, token.or(file.admin_token.clone()));
            sql::run(sql::Query {
                dir: &dir,
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
