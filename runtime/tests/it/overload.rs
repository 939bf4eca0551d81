use std::time::Duration;

use denizen_runtime::{Error, Runtime};
use denizen_test_util::eventually;
use denizen_test_util::probe::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mailbox_answers_overloaded_and_loses_nothing_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let probes = Probes::new();
    // Close the gate: every SlowIncr waits for a permit.
    let permits = probes.gate.available_permits();
    probes
        .gate
        .acquire_many(permits as u32)
        .await
        .unwrap()
        .forget();
    let p = probes.clone();
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .mailbox_capacity(8)
        .object_with("probe", move || Probe { probes: p.clone() })
        .build()
        .unwrap();
    let stub = rt.namespace::<Probe>("probe").unwrap().get_by_name("hot");

    // 30 calls against a mailbox of 8 whose first event is stuck.
    let mut calls = Vec::new();
    for _ in 0..30 {
        calls.push(tokio::spawn(stub.call(SlowIncr)));
    }
    // Wait until the refusals have happened (they are immediate), then open the gate.
    eventually("refusals", Duration::from_secs(10), || {
        rt.metrics().overloads.get() == 22
    })
    .await;
    probes.gate.add_permits(1000);
    let mut accepted = Vec::new();
    let mut refused = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(n) => accepted.push(n),
            Err(e) => {
                assert!(matches!(e, Error::Overloaded { .. }), "{e:?}");
                assert!(e.is_overloaded());
                assert!(!e.is_retryable());
                assert!(e.to_string().contains("overloaded"));
                refused += 1;
            }
        }
    }
    assert_eq!(accepted.len(), 8);
    assert_eq!(refused, 22);
    accepted.sort();
    assert_eq!(accepted, (1..=8).collect::<Vec<i64>>());
    // Every accepted event ran; the object serves again once drained.
    assert_eq!(stub.call(Get).await.unwrap(), 8);
    rt.shutdown().await;
}
