//! `DurableObject::SCHEMA`: new objects start with their tables; older objects are brought up to
//! a changed schema when they next start; a broken schema is a clear start error.

use denizen_runtime::{Ctx, DurableObject, Error, Handler, Message, Result, Runtime};

const V1: &str = "CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL)";
const V2: &str = "CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL);
                  CREATE TABLE IF NOT EXISTS tags(name TEXT PRIMARY KEY)";

#[derive(Default)]
struct NotesV1;
impl DurableObject for NotesV1 {
    const SCHEMA: &'static str = V1;
}

#[derive(Default)]
struct NotesV2;
impl DurableObject for NotesV2 {
    const SCHEMA: &'static str = V2;
}

#[derive(Default)]
struct Broken;
impl DurableObject for Broken {
    const SCHEMA: &'static str = "CREATE TABLE ok(x); CREATE TABLE (";
}

/// Adds a note and answers the tables and the number of notes.
struct Add;
impl Message for Add {
    type Reply = (Vec<String>, i64);
}

fn add<O: DurableObject>(ctx: &mut Ctx<O>) -> Result<(Vec<String>, i64)> {
    let storage = ctx.storage();
    storage.exec("INSERT INTO notes(body) VALUES ('n')", ())?;
    let tables: Vec<(String,)> = storage
        .exec(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name IN ('notes', 'tags') ORDER BY 1",
            (),
        )?
        .all()?;
    let notes = storage.exec("SELECT count(*) FROM notes", ())?.one()?;
    Ok((tables.into_iter().map(|(t,)| t).collect(), notes))
}

impl Handler<Add> for NotesV1 {
    async fn handle(&mut self, ctx: &mut Ctx<Self>, _: Add) -> Result<(Vec<String>, i64)> {
        add(ctx)
    }
}
impl Handler<Add> for NotesV2 {
    async fn handle(&mut self, ctx: &mut Ctx<Self>, _: Add) -> Result<(Vec<String>, i64)> {
        add(ctx)
    }
}
impl Handler<Add> for Broken {
    async fn handle(&mut self, ctx: &mut Ctx<Self>, _: Add) -> Result<(Vec<String>, i64)> {
        add(ctx)
    }
}

#[tokio::test]
async fn new_objects_start_with_the_schema_and_older_ones_are_brought_up_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .object::<NotesV1>("notes")
        .build()
        .unwrap();
    let ns = rt.namespace::<NotesV1>("notes").unwrap();
    assert_eq!(
        ns.get_by_name("a").call(Add).await.unwrap(),
        (vec!["notes".into()], 1)
    );
    assert_eq!(
        ns.get_by_name("a").call(Add).await.unwrap(),
        (vec!["notes".into()], 2)
    );
    rt.shutdown().await;

    // The next version of the type adds a table: the old object gets it and keeps its notes.
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .object::<NotesV2>("notes")
        .build()
        .unwrap();
    let ns = rt.namespace::<NotesV2>("notes").unwrap();
    let both = vec!["notes".to_string(), "tags".to_string()];
    assert_eq!(
        ns.get_by_name("a").call(Add).await.unwrap(),
        (both.clone(), 3)
    );
    assert_eq!(
        ns.get_by_name("b").call(Add).await.unwrap(),
        (both.clone(), 1)
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn a_broken_schema_fails_the_start_clearly_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .object::<Broken>("broken")
        .object::<NotesV1>("notes")
        .build()
        .unwrap();
    let broken = rt.namespace::<Broken>("broken").unwrap();
    for _ in 0..2 {
        let err = broken.get_by_name("x").call(Add).await.unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, Error::StartFailed { .. }), "{err:?}");
        assert!(
            message.contains("SCHEMA") && message.contains("syntax error"),
            "{message}"
        );
    }
    let notes = rt.namespace::<NotesV1>("notes").unwrap();
    assert_eq!(notes.get_by_name("a").call(Add).await.unwrap().1, 1);
    rt.shutdown().await;
}
