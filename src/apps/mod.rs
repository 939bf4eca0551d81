//! The example apps `denizen serve` hosts: a counter, a chat room, and the workflows `approval`
//! and `pipeline`. Each is ordinary application code, the way an application writes its own.

pub mod chat;
pub mod counter;
pub mod workflows;

use denizen_runtime::Builder;

/// Registers every example object under its namespace (`counter`, `chat`); the example
/// workflows register through [`workflows::workflows`].
pub fn register(builder: Builder) -> Builder {
    builder
        .object::<counter::Counter>("counter")
        .object::<chat::ChatRoom>("chat")
}
