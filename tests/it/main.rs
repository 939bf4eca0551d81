//! End-to-end tests through the real `denizen` binary, in one test binary (each links the whole
//! tree); the crash tests are apart (tests/crash.rs).
#![allow(clippy::unwrap_used)] // a panic is how a test fails

#[path = "../support/mod.rs"]
mod support;

mod agents_js;
mod agents_mcp;
mod agents_schedules;
mod backpressure;
mod bad_input;
mod chat;
mod chat_client;
mod chat_llm;
mod chat_page;
mod cli;
mod counter;
mod examples;
mod getting_started;
mod sql_cli;
mod workflows;
