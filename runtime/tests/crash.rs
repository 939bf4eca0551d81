//! Crash tests: a child process (this test binary, re-run in child mode) acknowledges writes and
//! is killed with SIGKILL; the parent reopens the data and checks every acknowledged write.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // a panic fails the test; the child reports on stdout

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use denizen_runtime::{Durability, Runtime};
use denizen_test_util::eventually;
use denizen_test_util::probe::*;

const CHILD_ENV: &str = "DENIZEN_CRASH_CHILD";

fn runtime_with(dir: &std::path::Path, probes: &Probes, durability: Durability) -> Runtime {
    let p = probes.clone();
    Runtime::builder()
        .data_dir(dir)
        .durability(durability)
        .object_with("probe", move || Probe { probes: p.clone() })
        .build()
        .unwrap()
}

/// Child mode: write forever (or set an alarm), printing each acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = std::env::var("DENIZEN_CRASH_DIR").unwrap();
    let durability = std::env::var("DENIZEN_CRASH_DURABILITY")
        .unwrap()
        .parse()
        .unwrap();
    let probes = Probes::new();
    let rt = runtime_with(dir.as_ref(), &probes, durability);
    let ns = rt.namespace::<Probe>("probe").unwrap();
    let mut out = std::io::stdout();
    match mode.as_str() {
        "writes" => {
            let mut tasks = Vec::new();
            for w in 0..4 {
                let stub = ns.get_by_name(&format!("crash-{w}"));
                tasks.push(tokio::spawn(async move {
                    for i in 0u64.. {
                        let key = format!("k{i}");
                        let k2 = key.clone();
                        stub.call(with(move |ctx| {
                            ctx.storage().put(&k2, &i)?;
                            Ok(())
                        }))
                        .await
                        .unwrap();
                        println!("ack {w} {key}");
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
        "alarm" => {
            let at = ns
                .get_by_name("wake-me")
                .call(SetAlarmIn(1500))
                .await
                .unwrap();
            let ms = at
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis();
            writeln!(out, "alarm-set {ms}").unwrap();
            out.flush().unwrap();
            std::future::pending::<()>().await;
        }
        _ => panic!("unknown child mode"),
    }
}

fn spawn_child(mode: &str, dir: &std::path::Path, durability: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .env("DENIZEN_CRASH_DIR", dir)
        .env("DENIZEN_CRASH_DURABILITY", durability)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn acknowledged_writes_survive_sigkill(durability: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_child("writes", dir.path(), durability);
    let stdout = child.stdout.take().unwrap();
    // Read acknowledgements until well into the stream, then kill mid-write.
    let acks = tokio::task::spawn_blocking(move || {
        let mut acks: Vec<(u32, String)> = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let line = match line.find("ack ") {
                Some(pos) => &line[pos..],
                None => continue,
            };
            let mut parts = line.split_whitespace();
            if parts.next() == Some("ack") {
                let w: u32 = parts.next().unwrap().parse().unwrap();
                acks.push((w, parts.next().unwrap().to_string()));
                if acks.len() == 2000 {
                    // SIGKILL while the writers keep going.
                    let _ = Command::new("kill")
                        .args(["-9", &child.id().to_string()])
                        .status();
                }
            }
        }
        let _ = child.wait();
        acks
    })
    .await
    .unwrap();
    assert!(
        acks.len() >= 2000,
        "child acknowledged only {} writes",
        acks.len()
    );

    let probes = Probes::new();
    let rt = runtime_with(dir.path(), &probes, durability.parse().unwrap());
    let ns = rt.namespace::<Probe>("probe").unwrap();
    for w in 0..4u32 {
        let keys: Vec<String> = acks
            .iter()
            .filter(|(x, _)| *x == w)
            .map(|(_, k)| k.clone())
            .collect();
        let present = ns
            .get_by_name(&format!("crash-{w}"))
            .call(with(move |ctx| {
                let mut missing = Vec::new();
                for k in keys {
                    if ctx.storage().get::<u64>(&k)?.is_none() {
                        missing.push(k);
                    }
                }
                Ok(missing)
            }))
            .await
            .unwrap();
        assert!(present.is_empty(), "acknowledged writes lost: {present:?}");
    }
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_normal() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    acknowledged_writes_survive_sigkill("normal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_fsync() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    acknowledged_writes_survive_sigkill("fsync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarm_set_before_sigkill_fires_in_next_process() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_child("alarm", dir.path(), "normal");
    let stdout = child.stdout.take().unwrap();
    let at_ms = tokio::task::spawn_blocking(move || {
        let mut at = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            // libtest prints "test crash_child ... " before the child's own output.
            if let Some(pos) = line.find("alarm-set ") {
                at = Some(
                    line[pos + "alarm-set ".len()..]
                        .trim()
                        .parse::<u128>()
                        .unwrap(),
                );
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
        let _ = child.wait();
        at.expect("child set the alarm")
    })
    .await
    .unwrap();

    let probes = Probes::new();
    let rt = runtime_with(dir.path(), &probes, Durability::Normal);
    eventually("alarm after restart", Duration::from_secs(20), || {
        !probes.alarms.lock().unwrap().is_empty()
    })
    .await;
    let fired = probes.alarms.lock().unwrap()[0]
        .1
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    assert!(fired >= at_ms, "fired early");
    rt.shutdown().await;
}
