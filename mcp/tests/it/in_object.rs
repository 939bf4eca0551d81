//! The manager inside a runtime object: created in `on_start` from the object's own SQLite,
//! used from handlers, and back with its servers after the whole runtime restarted.

use std::time::Duration;

use crate::support::{Peer, free_port, init_tracing};
use denizen_mcp::{CallOptions, ManagerOptions, McpClientManager, ServerConfig, store};
use denizen_runtime::{Ctx, DurableObject, Error, Handler, Message, Result, Runtime};
use serde_json::json;

const READY: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Assistant {
    mcp: Option<McpClientManager>,
}

impl Assistant {
    fn mcp(&self) -> Result<&McpClientManager> {
        self.mcp
            .as_ref()
            .ok_or_else(|| Error::msg("on_start did not run"))
    }
}

impl DurableObject for Assistant {
    async fn on_start(&mut self, ctx: &mut Ctx<Self>) -> Result<()> {
        let manager = McpClientManager::new(ManagerOptions::default());
        // Saved servers reconnect in the background; the start is not held up by the network.
        store::restore(ctx.storage(), &manager).map_err(Error::custom)?;
        self.mcp = Some(manager);
        Ok(())
    }
}

/// Connects a server and saves it in the same event.
struct AddServer(ServerConfig);
impl Message for AddServer {
    type Reply = Vec<String>;
}
impl Handler<AddServer> for Assistant {
    async fn handle(
        &mut self,
        ctx: &mut Ctx<Self>,
        AddServer(config): AddServer,
    ) -> Result<Vec<String>> {
        let mcp = self.mcp()?.clone();
        mcp.connect(config, READY).await.map_err(Error::custom)?;
        store::save_all(ctx.storage(), &mcp).map_err(Error::custom)?;
        Ok(mcp.tools().into_iter().map(|t| t.name).collect())
    }
}

/// Calls a namespaced tool, waiting for its server if it is still reconnecting.
struct CallTool(String, serde_json::Value);
impl Message for CallTool {
    type Reply = String;
}
impl Handler<CallTool> for Assistant {
    async fn handle(
        &mut self,
        _ctx: &mut Ctx<Self>,
        CallTool(name, args): CallTool,
    ) -> Result<String> {
        let mcp = self.mcp()?.clone();
        let (server, _) = mcp.resolve_tool(&name).map_err(Error::custom)?;
        mcp.wait_ready(&server, READY)
            .await
            .map_err(Error::custom)?;
        let result = mcp
            .call_tool(&name, args, CallOptions::default())
            .await
            .map_err(Error::custom)?;
        Ok(result
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.clone()))
            .collect())
    }
}

fn runtime(dir: &std::path::Path) -> Runtime {
    Runtime::builder()
        .data_dir(dir)
        .object::<Assistant>("assistant")
        .build()
        .expect("runtime")
}

#[tokio::test]
async fn an_object_keeps_its_servers_across_a_runtime_restart() {
    init_tracing();
    let py = Peer::python("streamable-http", free_port()).await;
    let ev = Peer::everything("sse", free_port()).await;
    let dir = tempfile::tempdir().expect("tempdir");

    let rt = runtime(dir.path());
    let agent = rt
        .namespace::<Assistant>("assistant")
        .expect("ns")
        .get_by_name("a");
    let tools = agent
        .call(AddServer(ServerConfig::new("py", &py.url)))
        .await
        .expect("add py");
    assert!(tools.contains(&"py__add".to_owned()), "{tools:?}");
    agent
        .call(AddServer(ServerConfig::new("ev", &ev.url)))
        .await
        .expect("add ev");
    let sum = agent
        .call(CallTool("py__add".into(), json!({"a": 1, "b": 2})))
        .await
        .expect("add");
    assert!(sum.contains('3'), "{sum}");
    rt.shutdown().await;
    drop(rt);

    // A new process-worth of runtime on the same data: the object restores its servers itself.
    let rt = runtime(dir.path());
    let agent = rt
        .namespace::<Assistant>("assistant")
        .expect("ns")
        .get_by_name("a");
    let sum = agent
        .call(CallTool("py__add".into(), json!({"a": 20, "b": 22})))
        .await
        .expect("add after restart");
    assert!(sum.contains("42"), "{sum}");
    let echo = agent
        .call(CallTool("ev__echo".into(), json!({"message": "over sse"})))
        .await
        .expect("echo after restart");
    assert!(echo.contains("over sse"), "{echo}");
    // Another object of the namespace has its own (empty) server list.
    let other = rt
        .namespace::<Assistant>("assistant")
        .expect("ns")
        .get_by_name("b");
    let err = other
        .call(CallTool("py__add".into(), json!({"a": 1, "b": 1})))
        .await
        .expect_err("b has no servers");
    assert!(err.to_string().contains("no tool"), "{err}");
    rt.shutdown().await;
}
