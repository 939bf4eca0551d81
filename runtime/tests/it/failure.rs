use std::time::Duration;

use denizen_runtime::Error;
use denizen_test_util::probe::*;

#[tokio::test]
async fn failing_and_panicking_handlers_leave_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let probes = Probes::new();
    let rt = runtime(dir.path(), &probes, Duration::from_secs(30));
    let stub = rt.namespace::<Probe>("probe").unwrap().get_by_name("x");

    assert_eq!(stub.call(Incr).await.unwrap(), 1);
    assert_eq!(probes.starts(), 1);

    let err = stub.call(Fail::Error).await.unwrap_err();
    assert!(matches!(err, Error::Custom(_)), "{err:?}");
    assert!(err.to_string().contains("failing on purpose"));
    // The write before the failure is gone, and the next event sees a fresh instance.
    assert_eq!(stub.call(Get).await.unwrap(), 1);
    assert_eq!(probes.starts(), 2);
    let written: Option<bool> = stub
        .call(with(|ctx| {
            Ok(ctx.storage().get("written-before-failure")?)
        }))
        .await
        .unwrap();
    assert_eq!(written, None);

    let err = stub.call(Fail::Panic).await.unwrap_err();
    match &err {
        Error::Panicked { message } => assert!(message.contains("panicking on purpose")),
        other => panic!("expected Panicked, got {other:?}"),
    }
    assert_eq!(stub.call(Get).await.unwrap(), 1);
    assert_eq!(probes.starts(), 3);

    // The object keeps working.
    assert_eq!(stub.call(Incr).await.unwrap(), 2);
    assert_eq!(rt.metrics().handler_errors.get(), 2);
    rt.shutdown().await;
}

#[tokio::test]
async fn messages_of_a_failed_event_are_never_sent() {
    let dir = tempfile::tempdir().unwrap();
    let probes = Probes::new();
    let rt = runtime(dir.path(), &probes, Duration::from_secs(30));
    let ns = rt.namespace::<Probe>("probe").unwrap();
    let stub = ns.get_by_name("gate");
    let (handle, mut rx) = open_socket(&rt, "gate").await;
    let _ = handle;
    // Send, then fail: the frame must not leave.
    let err = stub
        .call(with(|ctx| {
            let ws = ctx.get_websockets(None)[0];
            ctx.send(ws, "leaked");
            Err::<(), _>(denizen_runtime::Error::msg("no"))
        }))
        .await;
    assert!(err.is_err());
    // Send and succeed: the frame leaves.
    stub.call(with(|ctx| {
        let ws = ctx.get_websockets(None)[0];
        ctx.send(ws, "kept");
        Ok(())
    }))
    .await
    .unwrap();
    let first = rx.recv().await.unwrap();
    assert_eq!(
        first,
        denizen_runtime::Outgoing::Frame(denizen_runtime::Frame::Text("kept".into()))
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn on_start_writes_commit_with_the_first_event_and_roll_back_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let probes = Probes::new();
    let rt = runtime(dir.path(), &probes, Duration::from_secs(30));
    let ns = rt.namespace::<Probe>("probe").unwrap();
    // on_start creates the `counter` table; the first event fails: neither is committed.
    let err = ns.get_by_name("fresh").call(Fail::Error).await.unwrap_err();
    assert!(matches!(err, Error::Custom(_)), "{err:?}");
    let id = ns.id_from_name("fresh").to_hex();
    rt.shutdown().await;
    let path = denizen_runtime::storage::object_path(dir.path(), "probe", &id);
    let mut db =
        denizen_runtime::storage::Database::open(&path, denizen_runtime::Durability::Normal)
            .unwrap();
    let tables: Vec<String> = db
        .exec("SELECT name FROM sqlite_schema WHERE name = 'counter'", [])
        .unwrap()
        .all()
        .unwrap();
    assert!(
        tables.is_empty(),
        "on_start's table outlived the failed event: {tables:?}"
    );
    drop(db);

    // The next activation runs on_start again and its writes commit with the event.
    let rt = runtime(dir.path(), &probes, Duration::from_secs(30));
    let stub = rt.namespace::<Probe>("probe").unwrap().get_by_name("fresh");
    assert_eq!(stub.call(Incr).await.unwrap(), 1);
    assert_eq!(probes.starts(), 2);
    rt.shutdown().await;
}

#[tokio::test]
async fn one_runtime_per_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let probes = Probes::new();
    let first = runtime(dir.path(), &probes, Duration::from_secs(30));
    let second = denizen_runtime::Runtime::builder()
        .data_dir(dir.path())
        .build()
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(
            second,
            Error::Storage(denizen_runtime::storage::Error::Held { .. })
        ),
        "{second:?}"
    );
    assert!(second.to_string().contains("held by another process"));
    first.shutdown().await;
    // Released at shutdown: the directory can be served again.
    let again = runtime(dir.path(), &probes, Duration::from_secs(30));
    again.shutdown().await;
}
