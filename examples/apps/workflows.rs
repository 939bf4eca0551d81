//! The example workflows `denizen serve` hosts (HTTP under `/workflows/<name>`).
//!
//! - `approval`: prepares a request in a step with retries, sleeps briefly, then waits for an
//!   event of type `approved` and completes with the approval's payload.
//! - `pipeline`: a number of steps, each counting itself on a `counter` object and then working
//!   for a while; it shows that completed steps never run again after a crash.

use std::time::Duration;

use denizen::agent::workflow::{
    Backoff, Error, Event, Result, Step, StepConfig, StepError, Workflow,
};
use denizen::http::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// `approval` params.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApprovalParams {
    /// What is to be approved.
    pub(crate) request: String,
    /// Attempts of the `prepare` step that fail before one succeeds (to watch the retries).
    #[serde(default)]
    pub(crate) flaky_attempts: u32,
    /// Seconds of the sleep before waiting [default: 1].
    #[serde(default = "one")]
    pub(crate) sleep_secs: u64,
    /// How long to wait for `approved` [default: 86400].
    #[serde(default = "one_day")]
    pub(crate) timeout_secs: u64,
}

fn one() -> u64 {
    1
}

fn one_day() -> u64 {
    86_400
}

/// A workflow that waits for a person's approval (an event) before it goes on.
#[derive(Debug)]
pub(crate) struct Approval;

impl Workflow for Approval {
    type Params = ApprovalParams;
    type Output = Value;

    async fn run(&self, event: Event<ApprovalParams>, step: Step) -> Result<Value> {
        let params = event.payload;
        let config = StepConfig::retries(3, Duration::from_millis(100), Backoff::Exponential)
            .with_timeout(Duration::from_secs(30));
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let prepared: Value = step
            .run("prepare", &config, || {
                let attempt = attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                let request = params.request.clone();
                let flaky = params.flaky_attempts;
                async move {
                    if attempt <= flaky {
                        return Err(StepError::retryable(format!(
                            "preparation failed on attempt {attempt}"
                        )));
                    }
                    Ok(json!({ "request": request, "attempt": attempt }))
                }
            })
            .await?;
        step.sleep("cool-down", Duration::from_secs(params.sleep_secs))
            .await?;
        let approval: Value = step
            .wait_for_event(
                "approval",
                "approved",
                Duration::from_secs(params.timeout_secs),
            )
            .await?;
        Ok(json!({
            "request": params.request,
            "prepared": prepared,
            "approval": approval,
        }))
    }
}

/// `pipeline` params.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PipelineParams {
    /// How many steps (1 to 100).
    pub(crate) steps: u32,
    /// How long each step works after counting itself, in ms (at most 60000).
    #[serde(default)]
    pub(crate) work_ms: u64,
    /// Step `i` increments the counter object `<counter>-<i>`.
    pub(crate) counter: String,
}

/// A workflow of `steps` steps, each incrementing a counter object.
#[derive(Debug)]
pub(crate) struct Pipeline;

impl Workflow for Pipeline {
    type Params = PipelineParams;
    type Output = Value;

    async fn run(&self, event: Event<PipelineParams>, step: Step) -> Result<Value> {
        let p = event.payload;
        if !(1..=100).contains(&p.steps) || p.work_ms > 60_000 {
            return Err(Error::InvalidParams(
                "steps must be 1 to 100 and work_ms at most 60000".into(),
            ));
        }
        let config = StepConfig::retries(2, Duration::from_millis(100), Backoff::Constant);
        let mut sum = 0u64;
        for i in 0..p.steps {
            let counter = format!("{}-{i}", p.counter);
            let runtime = step.runtime().clone();
            let work = Duration::from_millis(p.work_ms);
            let value: u64 = step
                .run(&format!("step-{i}"), &config, || {
                    let (runtime, counter) = (runtime.clone(), counter.clone());
                    async move {
                        let req = http::Request::builder()
                            .method(Method::POST)
                            .uri("/increment")
                            .body(Default::default())
                            .map_err(|e| StepError::non_retryable(e.to_string()))?;
                        runtime
                            .fetch("counter", &counter, req)
                            .await
                            .map_err(|e| StepError::retryable(e.to_string()))?;
                        tokio::time::sleep(work).await;
                        Ok(u64::from(i) * u64::from(i))
                    }
                })
                .await?;
            sum += value;
        }
        Ok(json!({ "steps": p.steps, "sum": sum }))
    }
}
