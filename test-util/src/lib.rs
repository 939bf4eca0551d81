//! What Denizen's own tests and benches share (not published): waiting on a condition without
//! sleeping blindly, a probe object that records what the runtime did to it, a server in a
//! child process, a scripted OpenAI-compatible model server and the real one (llama.cpp).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::time::Duration;
//! let start = std::time::Instant::now();
//! denizen_test_util::eventually("a moment to pass", Duration::from_secs(5), || {
//!     start.elapsed() > Duration::from_millis(10)
//! })
//! .await;
//! # }
//! ```

// Test support: panicking is how a test fails, and probes need no Debug.
#![allow(missing_docs, missing_debug_implementations, clippy::unwrap_used)]

pub mod child;
pub mod llm;
pub mod openai;
pub mod probe;

use std::time::{Duration, Instant};

/// Polls `cond` every 5 ms until it holds, failing the test (naming `what`) after `within`.
pub async fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
