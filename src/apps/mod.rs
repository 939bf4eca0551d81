//! The example apps `denizen serve` hosts: a counter and a chat room. Each is an ordinary durable
//! object, the way an application writes its own.

pub mod chat;
pub mod counter;

use denizen_runtime::Builder;

/// Registers every example app under its namespace (`counter`, `chat`).
pub fn register(builder: Builder) -> Builder {
    builder
        .object::<counter::Counter>("counter")
        .object::<chat::ChatRoom>("chat")
}
