//! The command line of an app: `serve` with every setting of [`Config`] as a flag, and the
//! operator's commands `objects`, `sql` and `workflows`.

mod escape;
mod inspect;
mod remote;
mod sql;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

use super::{App, Config, Error};

#[derive(Parser)]
struct Cli {
    /// Configuration file (TOML, keys as the flags of `serve` with `_` for `-`). Missing is
    /// fine; the environment and flags override it.
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
    /// Run the server.
    Serve(Box<Config>),
    /// List the objects of a namespace: name, id, size, last active.
    Objects {
        namespace: String,
        /// Where object databases live [default: the configuration's, else ./data].
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
        /// Where object databases live [default: the configuration's, else ./data].
        #[arg(long, env = "DENIZEN_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Run the query through this server (e.g. http://127.0.0.1:8787) instead of opening the
        /// file [default: the server running on the data directory, if any].
        #[arg(long, env = "DENIZEN_SERVER")]
        server: Option<String>,
        /// The server's admin token [default: the configuration's, else the one the server
        /// keeps in <data-dir>/admin.token].
        #[arg(long, env = "DENIZEN_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
    },
    /// List the instances of a workflow with their status.
    Workflows {
        name: String,
        /// Where object databases live [default: the configuration's, else ./data].
        #[arg(long, env = "DENIZEN_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Print JSON lines (the full status) instead of a table.
        #[arg(long)]
        json: bool,
        /// Ask this server for each status (e.g. http://127.0.0.1:8787) instead of opening the
        /// files [default: the server running on the data directory, if any].
        #[arg(long, env = "DENIZEN_SERVER")]
        server: Option<String>,
        /// The server's admin token [default: the configuration's, else the one the server
        /// keeps in <data-dir>/admin.token].
        #[arg(long, env = "DENIZEN_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
    },
}

impl App {
    /// Runs the command line the process was started with against this app: `serve`,
    /// `objects`, `sql`, `workflows` (see `--help`). Logs go to stderr (`RUST_LOG` filters
    /// them; `info` by default). Returns the process's exit code: return it from `main`.
    pub fn run(self) -> ExitCode {
        let matches = command(&self).get_matches();
        let stderr = std::io::stderr();
        // Another subscriber installed by the app's own main wins.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            // Colour codes only for a person watching; a log file or a pipe gets plain text.
            .with_ansi(stderr.is_terminal())
            .with_writer(std::io::stderr)
            .try_init();
        match self.run_matches(&matches) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                use std::io::Write;
                // One line with its causes: the message is for the operator, and it may quote
                // a name from the data directory.
                let message = error_chain(&e);
                let _ = writeln!(stderr.lock(), "error: {}", escape::printable(&message));
                ExitCode::FAILURE
            }
        }
    }

    fn run_matches(self, matches: &ArgMatches) -> Result<(), Error> {
        let cli = Cli::from_arg_matches(matches).map_err(|e| Error::Config(e.to_string()))?;
        // What a command that reads the data directory gets from its own flags.
        let settings = |data_dir: Option<PathBuf>, admin_token: Option<String>| {
            Config::from_file(&cli.config)?
                .overlay(serde_json::json!({ "data_dir": data_dir, "admin_token": admin_token }))
        };
        match cli.command {
            Command::Serve(_) => {
                let given = matches
                    .subcommand_matches("serve")
                    .ok_or_else(|| Error::Config("no serve arguments".into()))?;
                let config = serve_config(&cli.config, given)?;
                self.serve(config)
            }
            Command::Objects {
                namespace,
                data_dir,
                json,
            } => {
                let config = settings(data_dir, None)?;
                inspect::objects(&config.data_dir, &namespace, json)
            }
            Command::Workflows {
                name,
                data_dir,
                json,
                server,
                admin_token,
            } => {
                let config = settings(data_dir, admin_token)?;
                let dir = &config.data_dir;
                let server = server.or_else(|| remote::running_server(dir));
                let token = remote::admin_token(dir, config.admin_token.clone());
                inspect::list_workflows(dir, &name, json, server.as_deref(), token.as_deref())
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
                let config = settings(data_dir, admin_token)?;
                let dir = &config.data_dir;
                sql::run(sql::Query {
                    dir,
                    namespace: &namespace,
                    object: &object,
                    by_id: id,
                    query: &query,
                    server,
                    token: remote::admin_token(dir, config.admin_token.clone()),
                })
            }
        }
    }
}

/// The command line of `app`, with the defaults of [`Config`] shown by `serve --help`.
fn command(app: &App) -> clap::Command {
    let defaults = serde_json::to_value(Config::default()).unwrap_or_default();
    let mut cmd = Cli::command()
        .name(app.name.clone())
        .bin_name(app.name.clone())
        .mut_subcommand("serve", |serve| {
            serve.mut_args(|arg| {
                let default = match defaults.get(arg.get_id().as_str()) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(serde_json::Value::Number(n)) => n.to_string(),
                    // No default: absent unless given (the admin token, the public URL).
                    _ => return arg,
                };
                arg.required(false).default_value(default)
            })
        });
    cmd = cmd.about(app.about.clone().unwrap_or_else(|| {
        format!(
            "{}: durable objects and agents, served by Denizen",
            app.name
        )
    }));
    if let Some(version) = &app.version {
        cmd = cmd.version(version.clone());
    }
    cmd
}

/// The settings `serve` runs with: the defaults, then the file, then what the environment and
/// the flags give (a default filled in by the parser does not hide the file's value).
fn serve_config(file: &Path, given: &ArgMatches) -> Result<Config, Error> {
    let parsed = Config::from_arg_matches(given).map_err(|e| Error::Config(e.to_string()))?;
    let mut explicit = serde_json::to_value(parsed).map_err(|e| Error::Config(e.to_string()))?;
    if let Some(fields) = explicit.as_object_mut() {
        fields.retain(|key, _| {
            matches!(
                given.value_source(key),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        });
    }
    Config::from_file(file)?.overlay(explicit)
}

/// `e` and its sources on one line.
fn error_chain(e: &Error) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_args(args: &[&str], file: &Path) -> Result<Config, Error> {
        let matches = command(&App::new("t"))
            .try_get_matches_from(["t", "serve"].iter().chain(args))
            .map_err(|e| Error::Config(e.to_string()))?;
        serve_config(file, matches.subcommand_matches("serve").unwrap())
    }

    #[test]
    fn flags_beat_the_file_which_beats_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("denizen.toml");
        std::fs::write(&file, "idle_timeout = \"3s\"\nmailbox_capacity = 7\n").unwrap();
        let config = serve_args(&["--mailbox-capacity", "9"], &file).unwrap();
        assert_eq!(config.idle_timeout, std::time::Duration::from_secs(3));
        assert_eq!(config.mailbox_capacity, 9);
        assert_eq!(config.listen, Config::default().listen);
        let missing = dir.path().join("none.toml");
        assert_eq!(serve_args(&[], &missing).unwrap(), Config::default());
    }

    #[test]
    fn a_bad_flag_or_file_value_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("denizen.toml");
        assert!(serve_args(&["--idle-timeout", "soon"], &file).is_err());
        std::fs::write(&file, "listen = 8787\n").unwrap();
        let e = serve_args(&[], &file).unwrap_err();
        assert!(e.to_string().contains("denizen.toml"), "{e}");
    }

    #[test]
    fn every_setting_is_a_flag_with_its_default() {
        let cmd = command(&App::new("t"));
        let serve = cmd.find_subcommand("serve").unwrap();
        let defaults = serde_json::to_value(Config::default()).unwrap();
        for (key, value) in defaults.as_object().unwrap() {
            let arg = serve
                .get_arguments()
                .find(|a| a.get_id() == key.as_str())
                .unwrap_or_else(|| panic!("no flag for `{key}`"));
            assert_eq!(
                arg.get_default_values().is_empty(),
                value.is_null(),
                "default of `{key}`"
            );
        }
    }
}
