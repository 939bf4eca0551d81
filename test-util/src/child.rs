//! A server in a child process, measured and driven from outside: the `denizen` binary in the
//! end-to-end tests, a bench binary in server mode in the benchmarks. Its first line on stdout
//! names the address it listens on (it starts on port 0).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};

/// The child, killed (SIGKILL) when dropped.
pub struct ChildServer {
    child: Option<Child>,
    /// `host:port` it listens on.
    pub addr: String,
}

impl ChildServer {
    /// Starts `command` with stdout piped and waits for its first line: an address, bare or
    /// after "<app> listening on http://".
    pub fn spawn(mut command: Command) -> ChildServer {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the server's address");
        let line = line.trim();
        let addr = line
            .split_once(" listening on http://")
            .map_or(line, |(_, addr)| addr);
        assert!(
            !addr.is_empty() && !addr.contains(' '),
            "unexpected first line: {line:?}"
        );
        ChildServer {
            addr: addr.to_string(),
            child: Some(child),
        }
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `ws://<addr><path>`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// The child's pid, 0 once it is gone.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the child to exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the server is running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait().expect("wait for the server")
    }

    /// The child's resident memory in KiB (0 once it is gone).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// One unlabelled value from `/metrics` (`denizen_live_objects`), if it is there.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let body = reqwest::get(self.url("/metrics"))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("the /metrics body");
        body.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
    }

    /// Waits (up to `within`) until the metric `name` reads `value`.
    pub async fn wait_metric(&self, name: &str, value: f64, within: std::time::Duration) {
        let deadline = std::time::Instant::now() + within;
        while self.metric(name).await != Some(value) {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} never reached {value}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        self.kill();
    }
}
