//! Agents on Denizen: durable objects with synced state, callable RPC, schedules, a queue, and
//! durable workflows.
//!
//! [`workflow`]: durable step functions (`step.run` journaled with retries, durable
//! `step.sleep` and `step.wait_for_event`), each instance a durable object with its own SQLite
//! journal, driven from Rust, from other objects, or over HTTP by the application.

pub mod workflow;
