//! Workflow benchmarks (no HTTP). Prints one line per figure: the median of several rounds.
//!
//! `cargo bench --bench workflows` (all) or `cargo bench --bench workflows -- steps` (names
//! matching).
// A benchmark prints its figures; a panic is how it fails.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod support;

use support::{median, wanted};

use std::sync::Arc;
use std::time::{Duration, Instant};

use denizen::agent::workflow::{self, Event, Status, Step, StepConfig, Workflow, Workflows};
use denizen::{Durability, Runtime};
use tokio::sync::Semaphore;

const ROUNDS: usize = 5;

/// `steps` trivial journaled steps, then an optional long sleep.
struct Steps;

impl Workflow for Steps {
    type Params = (u32, u64);
    type Output = u64;

    async fn run(&self, event: Event<(u32, u64)>, step: Step) -> workflow::Result<u64> {
        let (steps, sleep_secs) = event.payload;
        let config = StepConfig::default();
        let mut sum = 0u64;
        for i in 0..steps {
            sum += step
                .run(
                    &format!("s{i}"),
                    &config,
                    || async move { Ok(u64::from(i)) },
                )
                .await?;
        }
        if sleep_secs > 0 {
            step.sleep("long", Duration::from_secs(sleep_secs)).await?;
        }
        Ok(sum)
    }
}

fn runtime(dir: &std::path::Path, idle: Duration) -> Runtime {
    Workflows::new()
        .add("steps", Steps)
        .register(
            Runtime::builder()
                .data_dir(dir)
                .durability(Durability::Normal)
                .idle_timeout(idle)
                .max_open_objects(20_000),
        )
        .build()
        .expect("runtime")
}

async fn steps_per_second(steps: u32) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(dir.path(), Duration::from_secs(10));
    let c = workflow::client::<Steps>(&rt, "steps").expect("client");
    let started = Instant::now();
    let id = c.create(None, &(steps, 0)).await.expect("create");
    let s = c.wait_final(&id).await.expect("status");
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(s.status, Status::Complete);
    rt.shutdown().await;
    f64::from(steps) / secs
}

/// Creates `n` instances (each runs one step, then sleeps an hour), `concurrency` at a time.
async fn create_sleepers(c: &workflow::Client<Steps>, n: usize, concurrency: usize) -> f64 {
    let gate = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (c, gate) = (c.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.expect("semaphore");
            c.create(None, &(1, 3600)).await.expect("create")
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

async fn instances_per_second(n: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(dir.path(), Duration::from_secs(10));
    let c = workflow::client::<Steps>(&rt, "steps").expect("client");
    let rate = create_sleepers(&c, n, 64).await;
    rt.shutdown().await;
    rate
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn dir_size(path: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// (RSS bytes per sleeping instance once all have hibernated, disk bytes per instance)
async fn memory_per_sleeper(n: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(dir.path(), Duration::from_millis(200));
    let c = workflow::client::<Steps>(&rt, "steps").expect("client");
    // Warm up allocator and pools with a first batch, then measure a second one.
    create_sleepers(&c, 200, 64).await;
    let ns = rt
        .namespace::<workflow::Instance<Steps>>("workflow-steps")
        .expect("namespace");
    while ns.live_count() > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = rss_bytes();
    let disk_before = dir_size(dir.path());
    create_sleepers(&c, n, 64).await;
    while ns.live_count() > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = rss_bytes();
    println!(
        "  round: RSS {} KiB before, {} KiB after {n} more sleepers",
        before >> 10,
        after >> 10
    );
    let disk_after = dir_size(dir.path());
    rt.shutdown().await;
    (
        (after as f64 - before as f64) / n as f64,
        (disk_after as f64 - disk_before as f64) / n as f64,
    )
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async {
        if wanted("steps") {
            let mut v = Vec::new();
            for _ in 0..ROUNDS {
                v.push(steps_per_second(2_000).await);
            }
            println!(
                "journaled steps/s within one instance, durability normal: {:.0} (median of {ROUNDS})",
                median(v)
            );
        }
        if wanted("instances") {
            let mut v = Vec::new();
            for _ in 0..ROUNDS {
                v.push(instances_per_second(2_000).await);
            }
            println!(
                "instances created and started/s (64 concurrent creators): {:.0} (median of {ROUNDS})",
                median(v)
            );
        }
        if wanted("memory") {
            let mut rss = Vec::new();
            let mut disk = Vec::new();
            for _ in 0..3 {
                let (r, d) = memory_per_sleeper(2_000).await;
                rss.push(r);
                disk.push(d);
            }
            println!(
                "memory per sleeping (hibernated) instance: {:.0} bytes RSS, {:.0} bytes on disk (median of 3)",
                median(rss),
                median(disk)
            );
        }
    });
}
