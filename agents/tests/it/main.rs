//! The agents layer's end-to-end tests, in one binary (each test binary links the whole tree).
#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod agents;
mod chat_agent;
mod chat_model;
mod off_turn;
mod socket;
mod workflow;
