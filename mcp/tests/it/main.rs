//! The MCP client's end-to-end tests against real servers, in one binary (each test binary links
//! the whole tree).

#[path = "../support/mod.rs"]
mod support;

mod agent;
mod everything;
mod in_object;
mod oauth;
mod python;
mod resilience;
