//! The `denizen` command as an operator meets it: plain logs in files and pipes, one-line errors,
//! names from the data directory escaped, bad settings refused.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::support::Server;

fn denizen(args: &[&str], data_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_denizen"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("DENIZEN_CONFIG", "/nonexistent/denizen.toml")
        .env_remove("DENIZEN_SERVER")
        .env_remove("DENIZEN_ADMIN_TOKEN")
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run denizen")
}

#[test]
fn errors_are_one_line_whatever_rust_backtrace_says() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    server.stop();
    let out = denizen(&["sql", "counter", "nobody", "SELECT 1"], &server.data_dir);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("nobody"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn bad_limits_are_refused_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, value, message) in [
        (
            "--socket-message-quota",
            "0",
            "socket_message_quota must be at least 1",
        ),
        ("--sql-max-rows", "0", "sql_max_rows must be at least 1"),
        (
            "--sql-time-budget",
            "0s",
            "sql_time_budget must be more than 0s",
        ),
    ] {
        let out = denizen(
            &["serve", "--listen", "127.0.0.1:0", flag, value],
            dir.path(),
        );
        assert!(!out.status.success(), "{flag} {value} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{flag}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_terminal_escapes_are_printed_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    // ESC [2J clears the screen; U+202E reverses what follows.
    let resp = reqwest::Client::new()
        .post(server.url("/objects/counter/a%1B%5B2Jb%E2%80%AEc/increment"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    server.stop();

    let out = denizen(&["objects", "counter"], &server.data_dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("a\\u{1b}[2Jb\\u{202e}c"), "{stdout}");
    assert!(
        !stdout.contains('\u{1b}') && !stdout.contains('\u{202e}'),
        "{stdout:?}"
    );

    // SQL values too, and the error naming an object that is not there.
    let out = denizen(
        &[
            "sql",
            "counter",
            "a\u{1b}[2Jb\u{202e}c",
            "SELECT char(27) || 'x' AS v",
        ],
        &server.data_dir,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v\n\\u{1b}x\n");
    let out = denizen(
        &["sql", "counter", "\u{1b}]0;pwned\u{7}", "SELECT 1"],
        &server.data_dir,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("\\u{1b}]0;pwned\\u{7}"), "{stderr:?}");
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains('\u{7}'),
        "{stderr:?}"
    );
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_denizen"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("DENIZEN_CONFIG", "/nonexistent/denizen.toml")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start denizen");
    // The first line on stdout says it listens; the info lines before it are on stderr.
    let mut first = [0u8; 1];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("serving"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}

/// Settings that would start a server in a bad place are refused before anything opens: a port
/// someone else holds, an empty admin token (which would open the admin routes to anyone
/// sending `Authorization: Bearer `), a config file with a typo.
#[test]
fn a_taken_port_an_empty_admin_token_or_a_misspelled_setting_stop_serve() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = denizen(&["serve", "--listen", &addr], &data);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&addr) && stderr.contains("--listen"),
        "{stderr}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_denizen"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("DENIZEN_CONFIG", "/nonexistent/denizen.toml")
        .env("DENIZEN_ADMIN_TOKEN", "")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("admin_token"), "{stderr}");
    assert!(!data.exists(), "refused before the data directory was made");

    let config = dir.path().join("denizen.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nidle_timout = \"1s\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_denizen"))
        .args(["serve", "--data-dir"])
        .arg(&data)
        .env("DENIZEN_CONFIG", &config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("unknown field `idle_timout`"),
        "{stderr}"
    );
}
