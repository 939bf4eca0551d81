//! Runtime benchmarks (no HTTP). Prints one line per figure: the median of several rounds.
//!
//! `cargo bench --bench runtime` (all) or `cargo bench --bench runtime -- events` (names matching).
// A benchmark prints its figures; a panic is how it fails.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod support;

use support::{median, percentile, wanted};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use denizen::{AlarmInfo, Ctx, Durability, DurableObject, Handler, Message, Result, Runtime};

const ROUNDS: usize = 5;

struct Bench {
    starts: Arc<AtomicUsize>,
    lateness: Arc<Mutex<Vec<Duration>>>,
}

impl DurableObject for Bench {
    async fn on_start(&mut self, _ctx: &mut Ctx<Self>) -> Result<()> {
        self.starts.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn alarm(&mut self, ctx: &mut Ctx<Self>, _info: AlarmInfo) -> Result<()> {
        let due: Option<u128> = ctx.storage().get("due")?;
        if let Some(due) = due {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros();
            let late = Duration::from_micros(now.saturating_sub(due * 1000) as u64);
            self.lateness
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(late);
        }
        Ok(())
    }
}

struct Nop;
impl Message for Nop {
    type Reply = ();
}
impl Handler<Nop> for Bench {
    async fn handle(&mut self, _ctx: &mut Ctx<Self>, _: Nop) -> Result<()> {
        Ok(())
    }
}

struct Put(u64);
impl Message for Put {
    type Reply = ();
}
impl Handler<Put> for Bench {
    async fn handle(&mut self, ctx: &mut Ctx<Self>, Put(i): Put) -> Result<()> {
        ctx.storage().put("k", &i)?;
        Ok(())
    }
}

struct Touch;
impl Message for Touch {
    type Reply = ();
}
impl Handler<Touch> for Bench {
    async fn handle(&mut self, ctx: &mut Ctx<Self>, _: Touch) -> Result<()> {
        ctx.storage().put("touched", &true)?;
        Ok(())
    }
}

struct AlarmAt(SystemTime);
impl Message for AlarmAt {
    type Reply = ();
}
impl Handler<AlarmAt> for Bench {
    async fn handle(&mut self, ctx: &mut Ctx<Self>, AlarmAt(at): AlarmAt) -> Result<()> {
        let ms = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        ctx.storage().put("due", &ms)?;
        ctx.set_alarm(at)
    }
}

struct Env {
    _dir: tempfile::TempDir,
    runtime: Runtime,
    starts: Arc<AtomicUsize>,
    lateness: Arc<Mutex<Vec<Duration>>>,
}

fn env(durability: Durability, idle: Duration, capacity: usize) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let starts = Arc::new(AtomicUsize::new(0));
    let lateness = Arc::new(Mutex::new(Vec::new()));
    let (s, l) = (starts.clone(), lateness.clone());
    let runtime = Runtime::builder()
        .data_dir(dir.path())
        .durability(durability)
        .idle_timeout(idle)
        .mailbox_capacity(capacity)
        .max_open_objects(open_bound())
        .object_with("bench", move || Bench {
            starts: s.clone(),
            lateness: l.clone(),
        })
        .build()
        .expect("runtime");
    Env {
        _dir: dir,
        runtime,
        starts,
        lateness,
    }
}

/// The bound on open objects: `OPEN` in the environment, else the default.
fn open_bound() -> usize {
    std::env::var("OPEN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(denizen::Options::default().max_open_objects)
}

/// Events per second through one object from `callers` concurrent callers.
async fn events_per_second(total: usize, callers: usize) -> f64 {
    let e = env(Durability::Normal, Duration::from_secs(60), 1 << 20);
    let ns = e.runtime.namespace::<Bench>("bench").expect("ns");
    ns.get_by_name("hot").call(Nop).await.expect("warm");
    let per = total / callers;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let stub = ns.get_by_name("hot");
        tasks.push(tokio::spawn(async move {
            // Pipelined: a call is queued when made, so a window of calls is in flight.
            for _ in 0..per / 64 {
                let window: Vec<_> = (0..64).map(|_| stub.call(Nop)).collect();
                for call in window {
                    call.await.expect("call");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    let rate = ((per / 64) * 64 * callers) as f64 / start.elapsed().as_secs_f64();
    e.runtime.shutdown().await;
    rate
}

/// One KV write per event, one object.
async fn writes_per_second(durability: Durability, total: usize) -> f64 {
    let e = env(durability, Duration::from_secs(60), 1 << 20);
    let ns = e.runtime.namespace::<Bench>("bench").expect("ns");
    let stub = ns.get_by_name("writer");
    stub.call(Nop).await.expect("warm");
    let start = Instant::now();
    for chunk in 0..total / 256 {
        let window: Vec<_> = (0..256)
            .map(|i| stub.call(Put((chunk * 256 + i) as u64)))
            .collect();
        for call in window {
            call.await.expect("put");
        }
    }
    let total = total / 256 * 256;
    let rate = total as f64 / start.elapsed().as_secs_f64();
    e.runtime.shutdown().await;
    rate
}

/// First touch of distinct objects (each creates its SQLite file and writes once). Returns the
/// data directory, for the caller to delete after the last round: ext4 without a journal skips
/// inodes freed in the last minutes when it allocates new ones, so deleting 20,000 files between
/// rounds would slow the next round's file creation down.
async fn activations_per_second(count: usize, concurrency: usize) -> (f64, tempfile::TempDir) {
    let e = env(Durability::Normal, Duration::from_secs(60), 1024);
    let ns = e.runtime.namespace::<Bench>("bench").expect("ns");
    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let ns = ns.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                ns.get_by_name(&format!("obj-{i}"))
                    .call(Touch)
                    .await
                    .expect("touch");
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    assert_eq!(e.starts.load(Ordering::Relaxed), count);
    e.runtime.shutdown().await;
    (rate, e._dir)
}

/// Latency from a call to a hibernated object until its handler answered. The calls are made
/// from a task of the runtime, as the gateway's connection tasks make them (a caller outside
/// it, like `block_on`'s thread, adds a hand-off between threads each way).
async fn wake_latency(count: usize) -> Vec<Duration> {
    let e = env(Durability::Normal, Duration::from_millis(50), 1024);
    let ns = e.runtime.namespace::<Bench>("bench").expect("ns");
    for i in 0..count {
        ns.get_by_name(&format!("sleeper-{i}"))
            .call(Touch)
            .await
            .expect("touch");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while ns.live_count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let caller = ns.clone();
    let mut samples = tokio::spawn(async move {
        let mut samples = Vec::with_capacity(count);
        for i in 0..count {
            let stub = caller.get_by_name(&format!("sleeper-{i}"));
            let start = Instant::now();
            stub.call(Nop).await.expect("wake");
            samples.push(start.elapsed());
        }
        samples
    })
    .await
    .expect("join");
    e.runtime.shutdown().await;
    samples.sort();
    samples
}

/// Alarms of `count` objects due at a rate of 10,000 per second: how late their handlers start.
async fn alarm_lateness(count: usize) -> Vec<Duration> {
    let e = env(Durability::Normal, Duration::from_secs(60), 1024);
    let ns = e.runtime.namespace::<Bench>("bench").expect("ns");
    // Create the objects first: this measures alarm delivery, not first-touch activation.
    let mut tasks = Vec::new();
    for chunk in 0..8 {
        let ns = ns.clone();
        tasks.push(tokio::spawn(async move {
            for i in (chunk..count).step_by(8) {
                ns.get_by_name(&format!("alarm-{i}"))
                    .call(Touch)
                    .await
                    .expect("touch");
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    let setup = Instant::now();
    let base = SystemTime::now() + Duration::from_secs(15);
    let mut tasks = Vec::new();
    for chunk in 0..8 {
        let ns = ns.clone();
        tasks.push(tokio::spawn(async move {
            for i in (chunk..count).step_by(8) {
                let at = base + Duration::from_micros(i as u64 * 100);
                ns.get_by_name(&format!("alarm-{i}"))
                    .call(AlarmAt(at))
                    .await
                    .expect("set");
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    eprintln!("(arming {count} alarms took {:?})", setup.elapsed());
    assert!(
        SystemTime::now() < base,
        "setting the alarms took too long for this bench"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while e.lateness.lock().unwrap_or_else(|p| p.into_inner()).len() < count
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut samples = e.lateness.lock().unwrap_or_else(|p| p.into_inner()).clone();
    e.runtime.shutdown().await;
    samples.sort();
    samples
}

fn main() {
    let files = support::allow_open_files(65_536);
    eprintln!(
        "(open-files limit {files}; objects kept open at most: {})",
        open_bound()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async {
        if wanted("events") {
            let mut v = Vec::new();
            for _ in 0..ROUNDS {
                v.push(events_per_second(400_000, 8).await);
            }
            println!("events/s through one object, no writes: {:.0} (median of {ROUNDS})", median(v));
        }
        if wanted("writes") {
            let mut v = Vec::new();
            for _ in 0..ROUNDS {
                v.push(writes_per_second(Durability::Normal, 60_000).await);
            }
            println!("KV writes/s, one object, durability normal: {:.0} (median of {ROUNDS})", median(v));
            let mut v = Vec::new();
            for _ in 0..ROUNDS {
                v.push(writes_per_second(Durability::Fsync, 10_000).await);
            }
            println!("KV writes/s, one object, durability fsync: {:.0} (median of {ROUNDS})", median(v));
        }
        if wanted("activations") {
            let count = std::env::var("N").ok().and_then(|n| n.parse().ok()).unwrap_or(10_000);
            let mut v = Vec::new();
            let mut dirs = Vec::new();
            for _ in 0..ROUNDS {
                let (rate, dir) = activations_per_second(count, std::env::var("C").ok().and_then(|n| n.parse().ok()).unwrap_or(32)).await;
                v.push(rate);
                dirs.push(dir);
            }
            drop(dirs);
            println!("first-touch activations/s (file created): {:.0} (median of {ROUNDS})", median(v));
        }
        if wanted("wake") {
            let mut p50 = Vec::new();
            let mut p99 = Vec::new();
            for _ in 0..ROUNDS {
                let s = wake_latency(2_000).await;
                p50.push(percentile(&s, 0.5).as_secs_f64() * 1e6);
                p99.push(percentile(&s, 0.99).as_secs_f64() * 1e6);
            }
            println!(
                "wake of a hibernated object to its first handled event: p50 {:.0} µs, p99 {:.0} µs (medians of {ROUNDS})",
                median(p50),
                median(p99)
            );
        }
        if wanted("alarms") {
            let mut p50 = Vec::new();
            let mut p99 = Vec::new();
            let count = std::env::var("ALARMS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(10_000);
            for _ in 0..3 {
                let s = alarm_lateness(count).await;
                p50.push(percentile(&s, 0.5).as_secs_f64() * 1e3);
                p99.push(percentile(&s, 0.99).as_secs_f64() * 1e3);
            }
            println!(
                "alarm lateness, {count} alarms due at 10,000/s, {} objects open at most: p50 {:.2} ms, p99 {:.2} ms (medians of 3)",
                open_bound(),
                median(p50),
                median(p99)
            );
        }
    });
}
