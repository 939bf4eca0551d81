//! The `denizen` binary: the example apps on the [`App`] builder, with the whole command line
//! (`denizen serve`, `objects`, `sql`, `workflows`). Your own app's `main` looks the same with
//! your types registered instead.
//!
//! - `counter` and `chat`: ordinary durable objects, at `/objects/counter/<name>` and
//!   `/objects/chat/<room>` (WebSocket);
//! - `counter-agent`: an agent for the JavaScript `agents` client;
//! - `mcp-agent`: an agent that uses the tools of remote MCP servers;
//! - `chat-agent`: an AI chat agent for `useAgentChat`, on the model of `--llm-url`, with a chat
//!   page at `/chat-agent/<name>`;
//! - the workflows `approval` and `pipeline`.

mod chat;
mod chat_agent;
mod chat_page;
mod counter;
mod counter_agent;
mod mcp_agent;
mod workflows;

use std::process::ExitCode;

use denizen::agent::chat::model::ModelClient;
use denizen::app::App;

fn main() -> ExitCode {
    App::new("denizen")
        .about("Durable objects and agents, self-hosted: the example apps")
        .version(env!("CARGO_PKG_VERSION"))
        .object::<counter::Counter>("counter")
        .object::<chat::ChatRoom>("chat")
        .agent::<counter_agent::CounterAgent>("counter-agent")
        // OAuth sends users' browsers back to where they reach this server.
        .with_config(|app, config| {
            let public_url = config.public_url.clone().unwrap_or_default();
            let model = match config.model_config() {
                Some(model) => ModelClient::new(model).map_err(|e| e.to_string()),
                None => Err(chat_agent::NOT_CONFIGURED.to_string()),
            };
            let chat_url = public_url.clone();
            let app = app
                .agent_with("mcp-agent", move || mcp_agent::McpAgent::new(&public_url))
                .routes(|_| chat_page::routes());
            match model {
                Ok(model) => app.agent_with("chat-agent", move || {
                    chat_agent::ChatAgent::new(model.clone(), &chat_url)
                }),
                Err(reason) => app.routes(move |_| chat_agent::unavailable(reason)),
            }
        })
        .workflow("approval", workflows::Approval)
        .workflow("pipeline", workflows::Pipeline)
        .run()
}
