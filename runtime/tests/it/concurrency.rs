use std::time::Duration;

use denizen_test_util::probe::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_increments_from_fifty_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let probes = Probes::new();
    let rt = runtime(dir.path(), &probes, Duration::from_secs(30));
    let ns = rt.namespace::<Probe>("probe").unwrap();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        // Each task gets its own stub, obtained without I/O.
        let stub = ns.get_by_name("hot");
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..20 {
                seen.push(stub.call(Incr).await.unwrap());
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    // Every increment saw a distinct value: no lost update, no interleaving.
    assert_eq!(all, (1..=1000).collect::<Vec<i64>>());
    assert_eq!(ns.get_by_name("hot").call(Get).await.unwrap(), 1000);
    // One instance served all of it.
    assert_eq!(probes.starts(), 1);
    rt.shutdown().await;
}

#[tokio::test]
async fn objects_are_isolated_and_ids_behave() {
    let dir = tempfile::tempdir().unwrap();
    let probes = Probes::new();
    let rt = runtime(dir.path(), &probes, Duration::from_secs(30));
    let ns = rt.namespace::<Probe>("probe").unwrap();
    assert_eq!(ns.get_by_name("a").call(Incr).await.unwrap(), 1);
    assert_eq!(ns.get_by_name("a").call(Incr).await.unwrap(), 2);
    assert_eq!(ns.get_by_name("b").call(Incr).await.unwrap(), 1);

    // The object knows its name; a unique id has none.
    let name = ns
        .get_by_name("a")
        .call(with(|ctx| Ok(ctx.id().name().map(str::to_string))))
        .await
        .unwrap();
    assert_eq!(name.as_deref(), Some("a"));
    let unique = ns.new_unique_id();
    let hex = unique.to_hex();
    let parsed = ns.id_from_string(&hex).unwrap();
    assert_eq!(ns.get(parsed).call(Incr).await.unwrap(), 1);
    // An id parsed from its string finds the name the catalog remembers.
    let a_hex = ns.id_from_name("a").to_hex();
    rt.shutdown().await;

    let rt = runtime(dir.path(), &probes, Duration::from_secs(30));
    let ns = rt.namespace::<Probe>("probe").unwrap();
    let again = ns.id_from_string(&a_hex).unwrap();
    let name = ns
        .get(again)
        .call(with(|ctx| Ok(ctx.id().name().map(str::to_string))))
        .await
        .unwrap();
    assert_eq!(name.as_deref(), Some("a"));
    // Ids are stable across restarts (the key lives in the data dir).
    assert_eq!(ns.id_from_name("a").to_hex(), a_hex);
    let listed = ns.list().await.unwrap();
    let mut names: Vec<_> = listed.iter().filter_map(|o| o.name.clone()).collect();
    names.sort();
    assert_eq!(names, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|o| o.created_ms > 0));
    rt.shutdown().await;
}

#[tokio::test]
async fn spawned_work_comes_back_as_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let probes = Probes::new();
    let rt = runtime(dir.path(), &probes, Duration::from_secs(30));
    let stub = rt
        .namespace::<Probe>("probe")
        .unwrap()
        .get_by_name("worker");
    stub.call(StartTask(21)).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got: Option<u64> = stub
            .call(with(|ctx| Ok(ctx.storage().get("task-result")?)))
            .await
            .unwrap();
        if got == Some(42) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "task result never arrived"
        );
        tokio::task::yield_now().await;
    }
    rt.shutdown().await;
}
