//! A workflow with a human approval step: an expense claim is prepared, waits (durably, for
//! days if need be) for a reviewer's decision, and is paid into the employee's ledger only once
//! approved.
//!
//! - `expense` (workflow): step `prepare` reads what the employee was paid so far, step
//!   `review` waits for an event of type `decision`, step `pay` records the payment. Each step's
//!   result is journaled, so a crash or a restart replays the claim without paying twice; while
//!   it waits, the instance is on disk only.
//! - `ledger` (object, one per employee): the payments, in its SQLite database. Over HTTP it is
//!   read-only (`GET /objects/ledger/<employee>`); payments arrive as typed messages from the
//!   workflow, which nobody outside the process can send.
//!
//! Run it:
//!
//! ```text
//! cargo run --example approval -- serve --data-dir approval-data
//! ```
//!
//! The workflow routes are admin routes: they want the token the server wrote into its data
//! directory, and JSON.
//!
//! ```text
//! $ TOKEN=$(cat approval-data/admin.token)
//! $ wf() { curl -s -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' "$@"; }
//! $ wf -X POST 'http://127.0.0.1:8787/workflows/expense?id=trip-1' \
//!     -d '{"employee": "ada", "amount_cents": 12000, "what": "train to Lyon"}'
//! {"id":"trip-1"}
//! $ wf http://127.0.0.1:8787/workflows/expense/trip-1          # "status": "waiting"
//! $ wf -X POST http://127.0.0.1:8787/workflows/expense/trip-1/events/decision \
//!     -d '{"approved": true, "by": "grace"}'
//! $ wf http://127.0.0.1:8787/workflows/expense/trip-1          # "status": "complete", and
//!   "output":{"amount_cents":12000,"approved_by":"grace","outcome":"paid",...}
//! $ curl -s http://127.0.0.1:8787/objects/ledger/ada
//! {"payments":[{"amount_cents":12000,"claim":"trip-1","what":"train to Lyon"}],"total_cents":12000}
//! $ cargo run --example approval -- workflows expense --data-dir approval-data
//! ID                                   STATUS     STEPS  UPDATED
//! trip-1                               complete     3  2026-12-02T15:59:26.105Z
//! ```
//!
//! A decision is `{"approved": true, "by": ..}`; anything else (`"approved": false`, a payload
//! that is not an object) rejects the claim: the workflow fails closed. A claim that does not
//! fit is refused with 400 (`{"error":"the params do not fit this workflow: amount_cents is 1
//! to 10000000"}`); with no decision within `review_secs` the claim ends `expired`.

use std::time::Duration;

use denizen::agent::workflow::{self, Backoff, Event, Step, StepConfig, StepError, Workflow};
use denizen::app::App;
use denizen::http::{Method, StatusCode};
use denizen::{Ctx, DurableObject, Handler, Message, Request, Response, Result, http_util};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The largest claim, in cents.
const MAX_AMOUNT_CENTS: u64 = 10_000_000;
/// How long a claim waits for its reviewer by default: a week.
const DEFAULT_REVIEW_SECS: u64 = 7 * 24 * 3600;

/// What an `expense` instance is created with. Checked when it is created: a claim that does
/// not fit is answered 400 and no instance exists.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "ClaimFields")]
struct Claim {
    /// Who is paid: the name of their `ledger` object.
    employee: String,
    amount_cents: u64,
    /// What the money was spent on.
    what: String,
    /// How long to wait for a decision before the claim expires.
    review_secs: u64,
}

/// A [`Claim`] as sent, before it is checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimFields {
    employee: String,
    amount_cents: u64,
    what: String,
    #[serde(default)]
    review_secs: Option<u64>,
}

impl TryFrom<ClaimFields> for Claim {
    type Error = String;

    fn try_from(c: ClaimFields) -> Result<Claim, String> {
        let name_ok = !c.employee.is_empty()
            && c.employee.len() <= 64
            && c.employee
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err("employee is 1 to 64 letters, digits, '-' or '_'".into());
        }
        if !(1..=MAX_AMOUNT_CENTS).contains(&c.amount_cents) {
            return Err(format!("amount_cents is 1 to {MAX_AMOUNT_CENTS}"));
        }
        if c.what.is_empty() || c.what.len() > 200 {
            return Err("what is 1 to 200 bytes".into());
        }
        Ok(Claim {
            employee: c.employee,
            amount_cents: c.amount_cents,
            what: c.what,
            review_secs: c.review_secs.unwrap_or(DEFAULT_REVIEW_SECS),
        })
    }
}

/// The expense workflow.
#[derive(Debug)]
struct Expense;

impl Workflow for Expense {
    type Params = Claim;
    type Output = Value;

    async fn run(&self, event: Event<Claim>, step: Step) -> workflow::Result<Value> {
        let claim = event.payload;
        let retries = StepConfig::retries(3, Duration::from_millis(200), Backoff::Exponential);

        // Reads of changing data go in a step: a replay sees what the first run saw.
        let paid_before: u64 = step
            .run("prepare", &retries, || {
                let ledger = ledger(&step, &claim.employee);
                async move { ledger?.call(Total).await.map_err(retryable) }
            })
            .await?;

        // The instance leaves memory until the decision (or the deadline) arrives.
        let timeout = Duration::from_secs(claim.review_secs);
        let decision: Value = match step.wait_for_event("review", "decision", timeout).await {
            Ok(decision) => decision,
            Err(workflow::Error::EventTimeout { .. }) => {
                return Ok(json!({ "outcome": "expired", "paid_before_cents": paid_before }));
            }
            Err(e) => return Err(e),
        };
        let by = decision["by"].as_str().unwrap_or("someone").to_string();
        if decision["approved"] != true {
            return Ok(json!({ "outcome": "rejected", "by": by, "note": decision["note"] }));
        }

        // The payment is keyed by the instance id: if this step runs again after a crash
        // between paying and journaling, the ledger does not pay twice.
        let pay = Pay {
            claim: event.id.clone(),
            amount_cents: claim.amount_cents,
            what: claim.what.clone(),
        };
        let total: u64 = step
            .run("pay", &retries, || {
                let ledger = ledger(&step, &claim.employee);
                let pay = pay.clone();
                async move { ledger?.call(pay).await.map_err(retryable) }
            })
            .await?;
        Ok(json!({
            "outcome": "paid",
            "approved_by": by,
            "amount_cents": claim.amount_cents,
            "paid_before_cents": paid_before,
            "total_cents": total,
        }))
    }
}

/// The employee's ledger, reached from inside a step.
fn ledger(step: &Step, employee: &str) -> Result<denizen::Stub<Ledger>, StepError> {
    let ns = step
        .runtime()
        .namespace::<Ledger>("ledger")
        .map_err(|e| StepError::non_retryable(e.to_string()))?;
    Ok(ns.get_by_name(employee))
}

fn retryable(e: denizen::Error) -> StepError {
    StepError::retryable(e.to_string())
}

/// One employee's payments.
#[derive(Debug, Default)]
struct Ledger;

/// Records a payment (once per claim); answers the employee's total.
#[derive(Clone, Debug)]
struct Pay {
    claim: String,
    amount_cents: u64,
    what: String,
}

impl Message for Pay {
    type Reply = u64;
}

/// Answers the employee's total.
#[derive(Debug)]
struct Total;

impl Message for Total {
    type Reply = u64;
}

/// A payment as `GET` lists it.
#[derive(Debug, Serialize, Deserialize)]
struct Payment {
    claim: String,
    amount_cents: u64,
    what: String,
}

impl DurableObject for Ledger {
    const SCHEMA: &'static str = "CREATE TABLE IF NOT EXISTS payments(
        claim TEXT PRIMARY KEY,
        amount_cents INTEGER NOT NULL,
        what TEXT NOT NULL)";

    async fn fetch(&mut self, ctx: &mut Ctx<Self>, req: Request) -> Result<Response> {
        if req.method() != Method::GET {
            return Ok(http_util::text(
                StatusCode::METHOD_NOT_ALLOWED,
                "the ledger is read-only over HTTP; payments come from approved expense claims\n",
            ));
        }
        let payments: Vec<Payment> = ctx
            .storage()
            .exec(
                "SELECT claim, amount_cents, what FROM payments ORDER BY rowid",
                [],
            )?
            .all()?;
        let total_cents = total(ctx)?;
        Ok(http_util::json(
            StatusCode::OK,
            &json!({ "payments": payments, "total_cents": total_cents }),
        ))
    }
}

impl Handler<Pay> for Ledger {
    async fn handle(&mut self, ctx: &mut Ctx<Self>, pay: Pay) -> Result<u64> {
        let amount = i64::try_from(pay.amount_cents).unwrap_or(i64::MAX);
        ctx.storage().exec(
            "INSERT OR IGNORE INTO payments(claim, amount_cents, what) VALUES (?, ?, ?)",
            (pay.claim.as_str(), amount, pay.what.as_str()),
        )?;
        total(ctx)
    }
}

impl Handler<Total> for Ledger {
    async fn handle(&mut self, ctx: &mut Ctx<Self>, _: Total) -> Result<u64> {
        total(ctx)
    }
}

fn total(ctx: &mut Ctx<Ledger>) -> Result<u64> {
    Ok(ctx
        .storage()
        .exec("SELECT COALESCE(SUM(amount_cents), 0) FROM payments", [])?
        .one()?)
}

fn main() -> std::process::ExitCode {
    App::new("approval")
        .object::<Ledger>("ledger")
        .workflow("expense", Expense)
        .run()
}
