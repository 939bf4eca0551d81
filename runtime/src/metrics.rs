//! The runtime's metrics, as `prometheus-client` handles: the hot path does one atomic add, tests
//! read values with `get()`, and [`Metrics::register`] puts them in a registry that the gateway's
//! `/metrics` encodes (OpenMetrics text). Each runtime has its own, so many runtimes in one
//! process (tests) never mix their counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// Upper bounds of the latency buckets, in microseconds.
const LATENCY_BOUNDS_US: &[u64] = &[
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000,
];

/// A histogram of durations with fixed buckets, lock-free (an observation is three atomic adds;
/// `prometheus-client`'s own takes a lock). Cheap to clone: clones share the counts.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<Buckets>);

#[derive(Debug)]
struct Buckets {
    bounds_us: &'static [u64],
    /// One per bound, then one for everything above the last.
    counts: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

impl Histogram {
    fn new(bounds_us: &'static [u64]) -> Self {
        Histogram(Arc::new(Buckets {
            bounds_us,
            counts: (0..=bounds_us.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }))
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let b = &self.0;
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = b
            .bounds_us
            .iter()
            .position(|bound| us <= *bound)
            .unwrap_or(b.bounds_us.len());
        b.counts[i].fetch_add(1, Relaxed);
        b.sum_us.fetch_add(us, Relaxed);
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.0.counts.iter().map(|c| c.load(Relaxed)).sum()
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let b = &self.0;
        let buckets: Vec<(f64, u64)> = b
            .bounds_us
            .iter()
            .map(|us| *us as f64 / 1e6)
            .chain(std::iter::once(f64::INFINITY))
            .zip(b.counts.iter().map(|c| c.load(Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = b.sum_us.load(Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The runtime's metrics. Read them with [`crate::Runtime::metrics`].
#[derive(Debug)]
pub struct Metrics {
    /// Objects with an instance in memory.
    pub live_objects: Gauge,
    /// Open hibernatable WebSockets (held across hibernation).
    pub open_sockets: Gauge,
    /// Objects activated (first touch or wake from hibernation).
    pub activations: Counter,
    /// Objects evicted from memory after their idle timeout.
    pub hibernations: Counter,
    /// Events delivered to objects.
    pub events: Counter,
    /// Handlers that failed, panicked or ran past their deadline (writes rolled back, instance
    /// reset).
    pub handler_errors: Counter,
    /// Events refused because a mailbox was full.
    pub overloads: Counter,
    /// Alarm deliveries (including retries).
    pub alarms_fired: Counter,
    /// Latency of committing one event's writes.
    pub commit_latency: Histogram,
    /// Delay between an alarm's time and its handler starting.
    pub alarm_lateness: Histogram,
    /// Chat turns started by chat agents (continuations after a tool result included).
    pub chat_turns: Counter,
    /// Prompt tokens of chat agents' model calls, as the model server reported them.
    pub chat_prompt_tokens: Counter,
    /// Completion tokens of chat agents' model calls, as the model server reported them.
    pub chat_completion_tokens: Counter,
    /// Time from a chat agent's model call to its first streamed token.
    pub chat_first_token: Histogram,
    /// Chat agents' model calls that failed (after their retries).
    pub chat_model_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            live_objects: Gauge::default(),
            open_sockets: Gauge::default(),
            activations: Counter::default(),
            hibernations: Counter::default(),
            events: Counter::default(),
            handler_errors: Counter::default(),
            overloads: Counter::default(),
            alarms_fired: Counter::default(),
            commit_latency: Histogram::new(LATENCY_BOUNDS_US),
            alarm_lateness: Histogram::new(LATENCY_BOUNDS_US),
            chat_turns: Counter::default(),
            chat_prompt_tokens: Counter::default(),
            chat_completion_tokens: Counter::default(),
            chat_first_token: Histogram::new(LATENCY_BOUNDS_US),
            chat_model_errors: Counter::default(),
        }
    }
}

impl Metrics {
    /// Adds every metric to `registry` (the gateway registers them under the prefix `denizen`:
    /// `denizen_live_objects`, `denizen_activations_total`, …).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "live_objects",
            "Objects with an instance in memory",
            self.live_objects.clone(),
        );
        registry.register(
            "websockets",
            "Open hibernatable WebSockets (held across hibernation)",
            self.open_sockets.clone(),
        );
        registry.register(
            "activations",
            "Objects activated (first touch or wake from hibernation)",
            self.activations.clone(),
        );
        registry.register(
            "hibernations",
            "Objects evicted from memory after their idle timeout",
            self.hibernations.clone(),
        );
        registry.register("events", "Events delivered to objects", self.events.clone());
        registry.register(
            "handler_errors",
            "Handlers that failed, panicked or ran past their deadline (writes rolled back, instance reset)",
            self.handler_errors.clone(),
        );
        registry.register(
            "overloads",
            "Events refused because a mailbox was full",
            self.overloads.clone(),
        );
        registry.register(
            "alarms_fired",
            "Alarm deliveries (including retries)",
            self.alarms_fired.clone(),
        );
        registry.register(
            "commit_seconds",
            "Latency of committing one event's writes",
            self.commit_latency.clone(),
        );
        registry.register(
            "alarm_lateness_seconds",
            "Delay between an alarm's time and its handler starting",
            self.alarm_lateness.clone(),
        );
        registry.register(
            "chat_turns",
            "Chat turns started by chat agents (continuations after a tool result included)",
            self.chat_turns.clone(),
        );
        registry.register(
            "chat_prompt_tokens",
            "Prompt tokens of chat agents' model calls, as the model server reported them",
            self.chat_prompt_tokens.clone(),
        );
        registry.register(
            "chat_completion_tokens",
            "Completion tokens of chat agents' model calls, as the model server reported them",
            self.chat_completion_tokens.clone(),
        );
        registry.register(
            "chat_first_token_seconds",
            "Time from a chat agent's model call to its first streamed token",
            self.chat_first_token.clone(),
        );
        registry.register(
            "chat_model_errors",
            "Chat agents' model calls that failed (after their retries)",
            self.chat_model_errors.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode_as_openmetrics_through_the_registry() {
        let m = Metrics::default();
        m.activations.inc();
        m.live_objects.set(3);
        m.commit_latency.observe(Duration::from_micros(70));
        m.commit_latency.observe(Duration::from_secs(60));
        let mut registry = Registry::with_prefix("denizen");
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("denizen_activations_total 1\n"), "{text}");
        assert!(text.contains("denizen_live_objects 3\n"), "{text}");
        assert!(text.contains("denizen_commit_seconds_count 2\n"), "{text}");
        assert!(
            text.contains("denizen_commit_seconds_bucket{le=\"0.0001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("denizen_commit_seconds_bucket{le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(m.commit_latency.count(), 2);
    }
}
