//! Idle polling: keeps the CPUs from halting for a short while after the async runtime's
//! worker threads run out of work, so the next message is picked up without waking a halted CPU.
//!
//! On a virtual machine, a CPU with nothing to run halts and exits to the hypervisor; waking it
//! for the next packet takes tens of microseconds (about 40 µs on a common 2-vCPU VM), more than
//! the work of a small request. A request/reply exchange pays it on every round trip. Kernels can
//! poll before halting (`haltpoll`), but many VMs run with it off.
//!
//! [`IdlePoll`] does the same from user space, as Seastar's reactor polls before it sleeps: one
//! thread per CPU, pinned to it and scheduled with `SCHED_IDLE` (it runs only when the CPU has
//! nothing else to do and gives way at once to any other thread), spins for `window` after a
//! worker last went idle, then sleeps until a worker goes idle again. The time it takes is time
//! the CPU would have spent halted, at most `window` per CPU after each burst of work; a busy
//! server does not run it at all. Install [`IdlePoll::on_park`] as the tokio runtime's
//! `on_thread_park` hook. `denizen serve` does so with a 200 µs window (`--idle-poll`).
//!
//! ```
//! use denizen_runtime::IdlePoll;
//!
//! let poll = IdlePoll::start(IdlePoll::DEFAULT_WINDOW);
//! let rt = tokio::runtime::Builder::new_multi_thread()
//!     .enable_all()
//!     .on_thread_park(poll.on_park())
//!     .build()
//!     .unwrap();
//! rt.block_on(async { /* serve */ });
//! drop(rt);
//! drop(poll); // stops the polling threads
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, OnceLock, mpsc};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

/// The polling threads of a process; dropping it stops them.
#[allow(missing_debug_implementations)] // threads and their shared state: nothing to show
pub struct IdlePoll {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    epoch: Instant,
    window_ns: u64,
    /// When a worker last went idle, in nanoseconds since `epoch`.
    last_idle_ns: AtomicU64,
    stop: AtomicBool,
    pollers: Vec<Poller>,
}

/// One polling thread, as the hook sees it: waking it costs nothing while it spins.
#[derive(Default)]
struct Poller {
    thread: OnceLock<Thread>,
    asleep: AtomicBool,
}

impl IdlePoll {
    /// The window `denizen serve` polls for: as long as Linux's `haltpoll` polls at most, and
    /// Seastar's reactor by default.
    pub const DEFAULT_WINDOW: Duration = Duration::from_micros(200);

    /// Starts one polling thread per CPU this process may run on, each spinning for `window`
    /// after a worker goes idle. A zero `window` starts none; so does a system that refuses the
    /// `SCHED_IDLE` class (spinning at normal priority would take time from the workers), which
    /// is logged.
    pub fn start(window: Duration) -> IdlePoll {
        let window_ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        let cpus = if window_ns == 0 {
            Vec::new()
        } else {
            allowed_cpus()
        };
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            window_ns,
            last_idle_ns: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            pollers: cpus.iter().map(|_| Poller::default()).collect(),
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut threads = Vec::new();
        for (index, &cpu) in cpus.iter().enumerate() {
            let (shared, ready) = (shared.clone(), ready_tx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("denizen-idle-poll-{cpu}"))
                .spawn(move || {
                    let configured = configure_thread(cpu);
                    if configured.is_ok() {
                        let _ = shared.pollers[index].thread.set(std::thread::current());
                    }
                    let _ = ready.send(configured.clone());
                    // `start` reads until every sender is gone.
                    drop(ready);
                    if configured.is_ok() {
                        shared.poll(index);
                    }
                });
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => tracing::warn!(error = %e, "could not start an idle polling thread"),
            }
        }
        drop(ready_tx);
        let refused: Vec<String> = ready_rx.iter().filter_map(|r| r.err()).collect();
        if let Some(why) = refused.first() {
            tracing::warn!(reason = %why, "idle polling is off on {} of {} CPUs", refused.len(), cpus.len());
        }
        IdlePoll { shared, threads }
    }

    /// How many polling threads run.
    pub fn threads(&self) -> usize {
        self.shared
            .pollers
            .iter()
            .filter(|p| p.thread.get().is_some())
            .count()
    }

    /// The hook for `tokio::runtime::Builder::on_thread_park`: records that a worker went idle
    /// and wakes the polling threads that sleep.
    pub fn on_park(&self) -> impl Fn() + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || shared.idle_now()
    }
}

impl Shared {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn idle_now(&self) {
        if self.pollers.is_empty() {
            return;
        }
        self.last_idle_ns.store(self.now_ns(), SeqCst);
        for poller in &self.pollers {
            if poller.asleep.load(SeqCst)
                && let Some(thread) = poller.thread.get()
            {
                thread.unpark();
            }
        }
    }

    fn within_window(&self) -> bool {
        self.now_ns().saturating_sub(self.last_idle_ns.load(SeqCst)) < self.window_ns
    }

    fn poll(&self, index: usize) {
        let asleep = &self.pollers[index].asleep;
        while !self.stop.load(SeqCst) {
            if self.within_window() {
                std::hint::spin_loop();
                continue;
            }
            // Announce the sleep, then look again: a worker that went idle in between either
            // sees the flag (and unparks this thread) or stored its time before the second look.
            asleep.store(true, SeqCst);
            if !self.within_window() && !self.stop.load(SeqCst) {
                std::thread::park();
            }
            asleep.store(false, SeqCst);
        }
    }
}

impl Drop for IdlePoll {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        for poller in &self.shared.pollers {
            if let Some(thread) = poller.thread.get() {
                thread.unpark();
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The CPUs this process may run on.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // sched_getaffinity
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

#[cfg(not(target_os = "linux"))]
fn allowed_cpus() -> Vec<usize> {
    Vec::new()
}

/// Gives the calling thread the idle scheduling class and pins it to `cpu` (best effort: an
/// unpinned poller still keeps some CPU awake).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // sched_setscheduler, sched_setaffinity
fn configure_thread(cpu: usize) -> Result<(), String> {
    // SAFETY: plain system calls on the calling thread with valid, initialized arguments.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            return Err(format!(
                "the SCHED_IDLE scheduling class was refused: {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::debug!(cpu, "could not pin an idle polling thread");
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn configure_thread(_cpu: usize) -> Result<(), String> {
    Err("idle polling needs Linux".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asleep(poll: &IdlePoll) -> usize {
        poll.shared
            .pollers
            .iter()
            .filter(|p| p.asleep.load(SeqCst))
            .count()
    }

    /// Waits (bounded) until `cond` holds; the test fails if it never does.
    fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn pollers_spin_after_a_worker_goes_idle_then_sleep_and_stop_when_dropped() {
        let poll = IdlePoll::start(Duration::from_millis(20));
        let n = poll.threads();
        if n == 0 {
            // SCHED_IDLE refused here (logged); nothing to observe.
            return;
        }
        assert_eq!(n, poll.shared.pollers.len());
        until("every poller sleeps", || asleep(&poll) == n);
        let hook = poll.on_park();
        // Keep the window open until a poller is seen awake: the hook woke it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while asleep(&poll) == n {
            assert!(Instant::now() < deadline, "no poller woke after on_park");
            hook();
        }
        until("the pollers sleep again after the window", || {
            asleep(&poll) == n
        });
        let shared = poll.shared.clone();
        drop(poll);
        // Only this clone and the hook's remain: every poller has ended.
        assert_eq!(Arc::strong_count(&shared), 2);
        drop(hook);
    }

    #[test]
    fn a_zero_window_starts_nothing_and_the_hook_is_harmless() {
        let poll = IdlePoll::start(Duration::ZERO);
        assert_eq!(poll.threads(), 0);
        poll.on_park()();
    }
}
