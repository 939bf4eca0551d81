//! The AI chat agent's building blocks (`../shared/reference/chat-protocol.md` §6 and §12):
//!
//! - [`wire`], the messages of an OpenAI-compatible `/v1/chat/completions` request;
//! - [`chunk`], the AI SDK's UI message stream chunks the `useAgentChat` client folds into
//!   messages;
//! - [`model`], the client that streams one model call as those chunks;
//! - [`message`], the transcript's messages as the client holds them; [`fold`], chunks folded
//!   into them; [`history`], tool results, approvals and reconciliation applied to a
//!   transcript; [`convert`], a transcript turned into a model request;
//! - [`request`], a chat request's body;
//! - [`agent`], the chat agent that speaks the protocol with all of them.

pub mod agent;
pub mod chunk;
pub mod convert;
pub mod fold;
pub mod history;
pub mod message;
pub mod model;
pub mod request;
pub mod wire;

/// `len` random ASCII letters and digits: the unique part of the ids the chat makes up
/// (messages, approvals, continuations, text part prefixes).
pub(crate) fn random_id(len: usize) -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}
