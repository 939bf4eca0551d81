//! The AI chat agent's building blocks, shared by the model client and the chat protocol:
//! [`wire`], the messages of an OpenAI-compatible `/v1/chat/completions` request, and
//! [`chunk`], the AI SDK's UI message stream chunks the `useAgentChat` client folds into
//! messages (`../shared/reference/chat-protocol.md` §6 and §12); [`message`], the transcript's
//! messages as the client holds them, [`fold`], chunks folded into them, [`history`], tool
//! results, approvals and reconciliation applied to a transcript, and [`convert`], a transcript
//! turned into a model request; [`request`], a chat request's body.

pub mod chunk;
pub mod convert;
pub mod fold;
pub mod history;
pub mod message;
pub mod request;
pub mod wire;
