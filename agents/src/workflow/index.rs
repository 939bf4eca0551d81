//! The status index: one small object per workflow holding each instance's last status, so a
//! list of instances with their statuses reads one object instead of waking every instance.
//!
//! An instance sends its status here after each event that changed it commits (numbered, so a
//! late message never overwrites a newer one) and again on every activation (which repairs one
//! lost to a crash between the commit and the send). The instance itself stays the truth: the
//! index may lag it by a moment.

use denizen_runtime::{Ctx, DurableObject, Handler, Message, Result as RtResult, Runtime};

use super::record::Status;

/// The namespace of the index objects (one per workflow, named after it). Workflow instances
/// live in `workflow-<name>`, so no workflow's namespace can take this name.
pub(crate) const STATUS_NAMESPACE: &str = "workflow_status";

/// The index object of one workflow.
#[derive(Debug, Default)]
pub(crate) struct StatusIndex;

impl DurableObject for StatusIndex {
    const SCHEMA: &'static str = "CREATE TABLE IF NOT EXISTS statuses (
        id TEXT PRIMARY KEY NOT NULL,
        status TEXT NOT NULL,
        seq INTEGER NOT NULL
    )";
}

/// An instance's status, the `seq`-th it reported.
#[derive(Debug)]
pub(crate) struct Indexed {
    pub(crate) id: String,
    pub(crate) status: Status,
    pub(crate) seq: u64,
}

impl Message for Indexed {
    type Reply = ();
}

impl Handler<Indexed> for StatusIndex {
    async fn handle(&mut self, ctx: &mut Ctx<Self>, msg: Indexed) -> RtResult<()> {
        let seq = i64::try_from(msg.seq).unwrap_or(i64::MAX);
        ctx.storage().exec(
            "INSERT INTO statuses(id, status, seq) VALUES (?, ?, ?)
             ON CONFLICT(id) DO UPDATE SET status = excluded.status, seq = excluded.seq
             WHERE excluded.seq >= statuses.seq",
            (msg.id.as_str(), msg.status.as_str(), seq),
        )?;
        Ok(())
    }
}

/// Every indexed instance with its status.
#[derive(Debug)]
pub(crate) struct ListStatuses;

impl Message for ListStatuses {
    type Reply = Vec<(String, Status)>;
}

impl Handler<ListStatuses> for StatusIndex {
    async fn handle(
        &mut self,
        ctx: &mut Ctx<Self>,
        _: ListStatuses,
    ) -> RtResult<Vec<(String, Status)>> {
        let rows: Vec<(String, String)> = ctx
            .storage()
            .exec("SELECT id, status FROM statuses", ())?
            .all()?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, status)| Some((id, Status::from_name(&status)?)))
            .collect())
    }
}

/// Sends an instance's status to its workflow's index, in the background (the caller's event
/// holds it until its writes commit, and drops it if they do not).
pub(crate) async fn report(runtime: Runtime, workflow: String, msg: Indexed) {
    let ns = match runtime.namespace::<StatusIndex>(STATUS_NAMESPACE) {
        Ok(ns) => ns,
        // Instances registered without `Workflows::register` have no index.
        Err(_) => return,
    };
    if let Err(e) = ns.get_by_name(&workflow).call(msg).await {
        tracing::debug!(%workflow, error = %e, "instance status not indexed; its next activation sends it again");
    }
}
