//! The runtime's end-to-end tests, in one binary (each test binary links the whole tree).
#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod alarms;
mod bad_input;
mod concurrency;
mod failure;
mod hardening;
mod hibernation;
mod later;
mod overload;
mod schema;
