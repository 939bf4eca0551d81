use std::time::Duration;

use denizen_runtime::{Error, storage};
use denizen_test_util::probe::*;

#[tokio::test]
async fn bad_input_gets_typed_errors_and_the_object_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let probes = Probes::new();
    let rt = runtime(dir.path(), &probes, Duration::from_secs(30));
    let ns = rt.namespace::<Probe>("probe").unwrap();
    let stub = ns.get_by_name("target");
    assert_eq!(stub.call(Incr).await.unwrap(), 1);

    let big_key = "k".repeat(2049);
    let err = stub
        .call(with(move |ctx| Ok(ctx.storage().put(&big_key, &1)?)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Storage(storage::Error::KeyTooLarge { .. })),
        "{err:?}"
    );

    let big_value = vec![7u8; 2 * 1024 * 1024 + 1];
    let err = stub
        .call(with(move |ctx| Ok(ctx.storage().put("v", &big_value)?)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Storage(storage::Error::ValueTooLarge { .. })),
        "{err:?}"
    );

    let err = stub
        .call(with(|ctx| {
            let keys: Vec<String> = (0..129).map(|i| format!("k{i}")).collect();
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            Ok(ctx.storage().get_many::<i64>(&refs)?)
        }))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Storage(storage::Error::BatchTooLarge { .. })),
        "{err:?}"
    );

    let err = stub
        .call(with(|ctx| Ok(ctx.storage().exec("SELEC nonsense", [])?)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Storage(storage::Error::Sql { .. })),
        "{err:?}"
    );

    for statement in ["BEGIN", "COMMIT", "SAVEPOINT s", "ROLLBACK"] {
        let err = stub
            .call(with(move |ctx| Ok(ctx.storage().exec(statement, [])?)))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Storage(storage::Error::TransactionStatement { .. })
            ),
            "{statement}: {err:?}"
        );
    }

    let foreign = rt.namespace::<Probe>("probe").unwrap();
    let forged = "0".repeat(64);
    assert!(matches!(
        foreign.id_from_string(&forged),
        Err(Error::InvalidId { .. })
    ));
    assert!(matches!(
        foreign.id_from_string("not-an-id"),
        Err(Error::InvalidId { .. })
    ));
    assert!(matches!(
        rt.namespace::<Probe>("nope"),
        Err(Error::UnknownNamespace(_))
    ));

    // After all that the object still counts correctly.
    assert_eq!(stub.call(Incr).await.unwrap(), 2);
    rt.shutdown().await;
}

#[tokio::test]
async fn ids_of_another_namespace_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let probes = Probes::new();
    let (p1, p2) = (probes.clone(), probes.clone());
    let rt = denizen_runtime::Runtime::builder()
        .data_dir(dir.path())
        .object_with("one", move || Probe { probes: p1.clone() })
        .object_with("two", move || Probe { probes: p2.clone() })
        .build()
        .unwrap();
    let one = rt.namespace::<Probe>("one").unwrap();
    let two = rt.namespace::<Probe>("two").unwrap();
    let id = one.new_unique_id().to_hex();
    assert!(one.id_from_string(&id).is_ok());
    assert!(matches!(
        two.id_from_string(&id),
        Err(Error::InvalidId { .. })
    ));
    let err = rt
        .fetch_by_id(
            "two",
            &id,
            denizen_runtime::http::Request::new(Default::default()),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidId { .. }));
    rt.shutdown().await;
}

#[test]
fn invalid_and_duplicate_namespaces_are_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let probes = Probes::new();
        let p = probes.clone();
        let err = denizen_runtime::Runtime::builder()
            .data_dir(dir.path())
            .object_with("bad name!", move || Probe { probes: p.clone() })
            .build()
            .err()
            .unwrap();
        assert!(matches!(err, Error::InvalidNamespace { .. }));
        let (p1, p2) = (probes.clone(), probes.clone());
        let err = denizen_runtime::Runtime::builder()
            .data_dir(dir.path())
            .object_with("x", move || Probe { probes: p1.clone() })
            .object_with("x", move || Probe { probes: p2.clone() })
            .build()
            .err()
            .unwrap();
        assert!(matches!(err, Error::DuplicateNamespace { .. }));
    });
}
