//! The AI chat agent's building blocks, shared by the model client and the chat protocol:
//! [`wire`], the messages of an OpenAI-compatible `/v1/chat/completions` request,
//! [`chunk`], the AI SDK's UI message stream chunks the `useAgentChat` client folds into
//! messages, and [`model`], the client that streams a model call as those chunks
//! (`../shared/reference/chat-protocol.md` §6 and §12).

pub mod chunk;
pub mod model;
pub mod wire;
