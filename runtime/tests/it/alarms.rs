use std::sync::atomic::Ordering;
use std::time::Duration;

use denizen_runtime::Options;
use denizen_runtime::retry::RetryPolicy;
use denizen_test_util::eventually;
use denizen_test_util::probe::*;

#[tokio::test]
async fn alarm_fires_once_at_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let probes = Probes::new();
    let rt = runtime(dir.path(), &probes, Duration::from_millis(100));
    let ns = rt.namespace::<Probe>("probe").unwrap();
    let stub = ns.get_by_name("alarmed");
    let at = stub.call(SetAlarmIn(300)).await.unwrap();
    assert!(stub.call(GetAlarm).await.unwrap().is_some());
    // The object hibernates before its alarm; the alarm wakes it.
    eventually("alarm", Duration::from_secs(10), || {
        !probes.alarms.lock().unwrap().is_empty()
    })
    .await;
    let (info, fired) = probes.alarms.lock().unwrap()[0];
    assert!(fired >= at, "an alarm must never fire early");
    assert_eq!(info.retry_count, 0);
    assert!(!info.is_retry);
    // Once: it is cleared after a successful run, and nothing else arrives.
    assert_eq!(stub.call(GetAlarm).await.unwrap(), None);
    eventually("catalog cleanup", Duration::from_secs(5), || {
        rt.metrics().alarms_fired.get() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(probes.alarms.lock().unwrap().len(), 1);
    assert_eq!(stub.call(Get).await.unwrap(), 1);

    // Deleting an alarm before it is due cancels it.
    stub.call(SetAlarmIn(200)).await.unwrap();
    stub.call(with(|ctx| ctx.delete_alarm())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(probes.alarms.lock().unwrap().len(), 1);
    rt.shutdown().await;
}

#[tokio::test]
async fn failing_alarm_is_retried_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let probes = Probes::new();
    probes.alarm_failures.store(2, Ordering::SeqCst);
    // 200 ms doubling (the default starts at 2 s), ±25 %.
    let options = Options {
        data_dir: dir.path().to_path_buf(),
        alarm_retry: RetryPolicy::exponential(Duration::from_millis(200), 2.0)
            .with_max_attempts(7)
            .with_jitter(0.25),
        ..Default::default()
    };
    let rt = runtime_with(options, &probes);
    let stub = rt.namespace::<Probe>("probe").unwrap().get_by_name("flaky");
    stub.call(SetAlarmIn(10)).await.unwrap();
    eventually("three deliveries", Duration::from_secs(30), || {
        probes.alarms.lock().unwrap().len() == 3
    })
    .await;
    let seen = probes.alarms.lock().unwrap().clone();
    let infos: Vec<(u32, bool)> = seen
        .iter()
        .map(|(i, _)| (i.retry_count, i.is_retry))
        .collect();
    assert_eq!(infos, vec![(0, false), (1, true), (2, true)]);
    // Backoff: 200 ms then 400 ms, each with at most 25% jitter: never sooner.
    let gap1 = seen[1].1.duration_since(seen[0].1).unwrap();
    let gap2 = seen[2].1.duration_since(seen[1].1).unwrap();
    assert!(
        gap1 >= Duration::from_millis(150),
        "first retry after {gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(300),
        "second retry after {gap2:?}"
    );
    // Only the successful run's write survived.
    assert_eq!(stub.call(Get).await.unwrap(), 1);
    assert_eq!(stub.call(GetAlarm).await.unwrap(), None);
    rt.shutdown().await;
}

#[tokio::test]
async fn an_alarm_that_keeps_failing_is_given_up_after_the_policy_s_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let probes = Probes::new();
    probes.alarm_failures.store(100, Ordering::SeqCst);
    let options = Options {
        data_dir: dir.path().to_path_buf(),
        alarm_retry: RetryPolicy::constant(Duration::from_millis(20)).with_max_attempts(3),
        ..Default::default()
    };
    let rt = runtime_with(options, &probes);
    let stub = rt
        .namespace::<Probe>("probe")
        .unwrap()
        .get_by_name("doomed");
    stub.call(SetAlarmIn(10)).await.unwrap();
    eventually("three deliveries", Duration::from_secs(30), || {
        probes.alarms.lock().unwrap().len() == 3
    })
    .await;
    // Given up: no alarm left, and no fourth delivery comes.
    eventually("the alarm to be dropped", Duration::from_secs(10), || {
        rt.metrics().alarms_fired.get() == 3
    })
    .await;
    assert_eq!(stub.call(GetAlarm).await.unwrap(), None);
    rt.shutdown().await;
    assert_eq!(probes.alarms.lock().unwrap().len(), 3);
}
