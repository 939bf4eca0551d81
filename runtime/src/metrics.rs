//! Counters and histograms kept by the runtime, rendered in Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A fixed-bucket histogram of durations.
pub struct Histogram {
    bounds_us: &'static [u64],
    counts: Box<[AtomicU64]>,
    sum_us: AtomicU64,
    total: AtomicU64,
}

const LATENCY_BOUNDS_US: &[u64] = &[
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000,
];

impl Histogram {
    fn new(bounds_us: &'static [u64]) -> Self {
        Histogram {
            bounds_us,
            counts: (0..bounds_us.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if let Some(i) = self.bounds_us.iter().position(|b| us <= *b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.sum_us.fetch_add(us, Relaxed);
        self.total.fetch_add(1, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.total.load(Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds_us.iter().zip(self.counts.iter()) {
            cumulative += count.load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        let total = self.total.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {total}");
    }
}

/// The runtime's metrics. Read them with [`crate::Runtime::metrics`].
pub struct Metrics {
    pub live_objects: AtomicI64,
    pub open_sockets: AtomicI64,
    pub activations: AtomicU64,
    pub hibernations: AtomicU64,
    pub events: AtomicU64,
    pub handler_errors: AtomicU64,
    pub overloads: AtomicU64,
    pub alarms_fired: AtomicU64,
    pub commit_latency: Histogram,
    pub alarm_lateness: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            live_objects: AtomicI64::new(0),
            open_sockets: AtomicI64::new(0),
            activations: AtomicU64::new(0),
            hibernations: AtomicU64::new(0),
            events: AtomicU64::new(0),
            handler_errors: AtomicU64::new(0),
            overloads: AtomicU64::new(0),
            alarms_fired: AtomicU64::new(0),
            commit_latency: Histogram::new(LATENCY_BOUNDS_US),
            alarm_lateness: Histogram::new(LATENCY_BOUNDS_US),
        }
    }
}

impl Metrics {
    /// Prometheus text exposition of every metric.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        gauge(
            &mut out,
            "denizen_live_objects",
            "Objects with an instance in memory.",
            self.live_objects.load(Relaxed),
        );
        gauge(
            &mut out,
            "denizen_websockets",
            "Open hibernatable WebSockets (held across hibernation).",
            self.open_sockets.load(Relaxed),
        );
        counter(
            &mut out,
            "denizen_activations_total",
            "Objects activated (first touch or wake from hibernation).",
            self.activations.load(Relaxed),
        );
        counter(
            &mut out,
            "denizen_hibernations_total",
            "Objects evicted from memory after their idle timeout.",
            self.hibernations.load(Relaxed),
        );
        counter(
            &mut out,
            "denizen_events_total",
            "Events delivered to objects.",
            self.events.load(Relaxed),
        );
        counter(
            &mut out,
            "denizen_handler_errors_total",
            "Handlers that failed or panicked (writes rolled back, instance reset).",
            self.handler_errors.load(Relaxed),
        );
        counter(
            &mut out,
            "denizen_overloads_total",
            "Events refused because a mailbox was full.",
            self.overloads.load(Relaxed),
        );
        counter(
            &mut out,
            "denizen_alarms_fired_total",
            "Alarm deliveries (including retries).",
            self.alarms_fired.load(Relaxed),
        );
        self.commit_latency.render(
            &mut out,
            "denizen_commit_seconds",
            "Latency of committing one event's writes.",
        );
        self.alarm_lateness.render(
            &mut out,
            "denizen_alarm_lateness_seconds",
            "Delay between an alarm's time and its handler starting.",
        );
        out
    }
}
