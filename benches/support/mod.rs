//! What the benchmarks share: picking figures from the command line, medians and percentiles, and
//! a server in a child process (the bench binary itself, in server mode) measured from outside.
#![allow(dead_code)]

use std::process::Command;
use std::time::Duration;

use denizen_test_util::child::ChildServer;

/// Set in the child's environment: the bench binary then serves instead of measuring.
pub(crate) const SERVER_ENV: &str = "DENIZEN_BENCH_SERVER";
/// The child's data directory, made and removed by the parent: the child is killed, so it
/// cannot clean up after itself.
const DATA_ENV: &str = "DENIZEN_BENCH_DATA";

/// In server mode: where the parent wants the data kept.
pub(crate) fn server_data_dir() -> std::path::PathBuf {
    std::env::var_os(DATA_ENV)
        .expect("the bench server runs with its data directory in DENIZEN_BENCH_DATA")
        .into()
}

/// Whether the figure `name` was asked for (no filter on the command line asks for all).
pub(crate) fn wanted(name: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}

/// Raises this process's open-files limit to `n` when it is lower and the process may (root may
/// raise its hard limit), the way a deployment sets `LimitNOFILE`: the runtime sizes its bound on
/// open objects from this limit. Returns the limit in force.
#[allow(unsafe_code)] // setrlimit has no safe wrapper in the tree
pub(crate) fn allow_open_files(n: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        if limit.rlim_cur < n {
            let wanted = libc::rlimit {
                rlim_cur: n,
                rlim_max: limit.rlim_max.max(n),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                limit.rlim_cur = limit.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The bench binary started again in server mode; its first stdout line is its address. Derefs
/// to its [`ChildServer`] (`addr`, `rss_kib`, ...).
pub(crate) struct Server {
    child: ChildServer,
    /// Removed after the child is gone (fields drop in order).
    _data: tempfile::TempDir,
}

impl std::ops::Deref for Server {
    type Target = ChildServer;
    fn deref(&self) -> &ChildServer {
        &self.child
    }
}

impl Server {
    pub(crate) fn start(idle_ms: u64) -> Server {
        Server::start_mode(idle_ms, "1")
    }

    /// Starts the child with `mode` in [`SERVER_ENV`] (a bench binary may serve more than one
    /// thing).
    pub(crate) fn start_mode(idle_ms: u64, mode: &str) -> Server {
        Server::start_with(idle_ms, mode, &[])
    }

    /// Starts the child with `mode` and these variables added to its environment (where a peer
    /// the parent runs listens, say).
    pub(crate) fn start_with(idle_ms: u64, mode: &str, env: &[(&str, &str)]) -> Server {
        let data = tempfile::tempdir().expect("tempdir");
        let mut command = Command::new(std::env::current_exe().expect("exe"));
        command
            .env(SERVER_ENV, mode)
            .env(DATA_ENV, data.path())
            .env("DENIZEN_BENCH_IDLE_MS", idle_ms.to_string())
            .env("RUST_LOG", "error")
            .envs(env.iter().copied());
        Server {
            child: ChildServer::spawn(command),
            _data: data,
        }
    }

    pub(crate) async fn wait_metric(&self, name: &str, value: f64) {
        self.child
            .wait_metric(name, value, Duration::from_secs(120))
            .await
    }
}
