//! `counter`: one number per name, kept in the object's SQLite database.
//!
//! - `POST /objects/counter/<name>/increment` adds one and answers `{"count": N}`
//! - `GET /objects/counter/<name>` answers `{"count": N}`

use denizen::http::{Method, StatusCode};
use denizen::{Ctx, DurableObject, Request, Response, Result, http_util};
use serde_json::json;

/// A counter over HTTP: `GET` reads it, `POST .../increment` adds one.
#[derive(Debug, Default)]
pub(crate) struct Counter;

impl DurableObject for Counter {
    const SCHEMA: &'static str = "CREATE TABLE IF NOT EXISTS counter(
        id INTEGER PRIMARY KEY CHECK (id = 1),
        count INTEGER NOT NULL)";

    async fn fetch(&mut self, ctx: &mut Ctx<Self>, req: Request) -> Result<Response> {
        let count: i64 = match (req.method(), req.uri().path()) {
            (&Method::GET, "/") => ctx
                .storage()
                .exec("SELECT count FROM counter", [])?
                .first()?
                .unwrap_or(0),
            (&Method::POST, "/increment") => ctx
                .storage()
                .exec(
                    "INSERT INTO counter(id, count) VALUES (1, 1)
                     ON CONFLICT(id) DO UPDATE SET count = count + 1 RETURNING count",
                    [],
                )?
                .one()?,
            (_, "/" | "/increment") => {
                return Ok(http_util::text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "use GET / to read the count and POST /increment to add one\n",
                ));
            }
            _ => {
                return Ok(http_util::text(
                    StatusCode::NOT_FOUND,
                    "the counter answers GET / and POST /increment\n",
                ));
            }
        };
        Ok(http_util::json(StatusCode::OK, &json!({ "count": count })))
    }
}
