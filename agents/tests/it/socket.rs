//! An in-process client socket to an agent: the upgrade goes to the agent's `fetch` as the
//! gateway hands it over, and its frames are read from the runtime's outgoing channel.

use std::time::Duration;

use denizen_agents::{Agent, AgentHost};
use denizen_runtime::{Bytes, Frame, Namespace, Outgoing, SocketHandle, Upgrade, http};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;

pub(crate) struct Socket {
    handle: SocketHandle,
    rx: UnboundedReceiver<Outgoing>,
}

impl Socket {
    /// Opens `uri` (`/agents/<class>/<name>?_pk=..`) on agent `name` of `ns`; answers the
    /// socket and the frames up to the handshake's last one (`cf_agent_mcp_servers`).
    pub(crate) async fn open<A: Agent>(
        ns: &Namespace<AgentHost<A>>,
        name: &str,
        uri: &str,
    ) -> (Socket, Vec<Value>) {
        let (upgrade, rx) = Upgrade::new();
        let mut req = http::Request::new(Bytes::new());
        *req.uri_mut() = uri.parse().unwrap();
        req.extensions_mut().insert(upgrade.clone());
        let resp = ns.get_by_name(name).fetch(req).await.unwrap();
        assert_eq!(resp.status(), 101);
        let mut socket = Socket {
            handle: upgrade.accepted().unwrap(),
            rx,
        };
        let mut preface = Vec::new();
        loop {
            let frame = socket.json().await;
            let last = frame["type"] == "cf_agent_mcp_servers";
            preface.push(frame);
            if last {
                return (socket, preface);
            }
        }
    }

    pub(crate) fn send(&self, value: Value) {
        self.handle.message(Frame::Text(value.to_string())).unwrap();
    }

    /// The next frame, as JSON (10 s at most).
    pub(crate) async fn json(&mut self) -> Value {
        let frame = tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("timed out waiting for a frame")
            .expect("socket ended");
        match frame {
            Outgoing::Frame(Frame::Text(t)) => serde_json::from_str(&t).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Nothing waiting to be read.
    pub(crate) fn is_quiet(&mut self) -> bool {
        self.rx.try_recv().is_err()
    }
}
