use std::time::Duration;

use denizen_runtime::{Delivery, Frame, Outgoing};
use denizen_test_util::eventually;
use denizen_test_util::probe::*;

#[tokio::test]
async fn idle_objects_hibernate_and_wake_with_state_and_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let probes = Probes::new();
    let rt = runtime(dir.path(), &probes, Duration::from_millis(150));
    let ns = rt.namespace::<Probe>("probe").unwrap();
    let stub = ns.get_by_name("sleepy");
    assert_eq!(stub.call(Incr).await.unwrap(), 1);
    let (sock_a, mut rx_a) = open_socket_tagged(&rt, "sleepy", "red,blue").await;
    let (_sock_b, _rx_b) = open_socket_tagged(&rt, "sleepy", "green").await;
    assert_eq!(probes.starts(), 1);
    assert_eq!(ns.live_count(), 1);

    eventually("hibernation", Duration::from_secs(10), || {
        ns.live_count() == 0
    })
    .await;
    assert_eq!(rt.metrics().hibernations.get(), 1);
    assert_eq!(rt.metrics().open_sockets.get(), 2);

    // A message on a hibernated socket wakes the object and reaches websocket_message.
    assert_eq!(
        sock_a.message(Frame::Text("hello".into())).unwrap(),
        Delivery::Delivered
    );
    assert_eq!(
        rx_a.recv().await.unwrap(),
        Outgoing::Frame(Frame::Text("echo:hello".into()))
    );
    assert_eq!(probes.starts(), 2, "on_start ran again after the wake");

    // State is intact, and the sockets are listed with their tags and attachments.
    let (count, listing) = stub
        .call(with(|ctx| {
            let count: i64 = ctx.storage().exec("SELECT n FROM counter", [])?.one()?;
            let mut listing = Vec::new();
            for ws in ctx.get_websockets(None) {
                let attachment: Option<String> = ctx.attachment(ws)?;
                listing.push((ctx.tags(ws), attachment));
            }
            let red = ctx.get_websockets(Some("red")).len();
            let green = ctx.get_websockets(Some("green")).len();
            let none = ctx.get_websockets(Some("nope")).len();
            listing.push((vec![format!("{red}{green}{none}")], None));
            Ok((count, listing))
        }))
        .await
        .unwrap();
    assert_eq!(count, 1);
    assert_eq!(
        listing,
        vec![
            (
                vec!["red".to_string(), "blue".to_string()],
                Some("attached:red,blue".to_string())
            ),
            (
                vec!["green".to_string()],
                Some("attached:green".to_string())
            ),
            (vec!["110".to_string()], None),
        ]
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn auto_response_does_not_wake_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let probes = Probes::new();
    let rt = runtime(dir.path(), &probes, Duration::from_millis(100));
    let ns = rt.namespace::<Probe>("probe").unwrap();
    let (sock, mut rx) = open_socket(&rt, "pinger").await;
    ns.get_by_name("pinger")
        .call(with(|ctx| ctx.set_auto_response(Some(("ping", "pong")))))
        .await
        .unwrap();
    eventually("hibernation", Duration::from_secs(10), || {
        ns.live_count() == 0
    })
    .await;
    let starts = probes.starts();
    for _ in 0..3 {
        assert_eq!(
            sock.message(Frame::Text("ping".into())).unwrap(),
            Delivery::AutoResponded
        );
        assert_eq!(
            rx.recv().await.unwrap(),
            Outgoing::Frame(Frame::Text("pong".into()))
        );
    }
    assert_eq!(ns.live_count(), 0);
    assert_eq!(probes.starts(), starts);
    assert!(probes.messages.lock().unwrap().is_empty());
    // The object can read when it was last auto-answered.
    let stamped = ns
        .get_by_name("pinger")
        .call(with(|ctx| {
            let ws = ctx.get_websockets(None)[0];
            Ok(ctx.auto_response_timestamp(ws).is_some())
        }))
        .await
        .unwrap();
    assert!(stamped);
    rt.shutdown().await;
}

#[tokio::test]
async fn closed_sockets_leave_the_registry_and_background_work_keeps_objects_awake() {
    let dir = tempfile::tempdir().unwrap();
    let probes = Probes::new();
    let rt = runtime(dir.path(), &probes, Duration::from_millis(100));
    let ns = rt.namespace::<Probe>("probe").unwrap();
    let (sock, _rx) = open_socket(&rt, "closer").await;
    sock.closed(1000, "bye".into(), true).unwrap();
    let stub = ns.get_by_name("closer");
    let open = stub
        .call(with(|ctx| Ok(ctx.get_websockets(None).len())))
        .await
        .unwrap();
    assert_eq!(open, 0);

    // wait_until pins the object in memory until the future ends.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    stub.call(with(move |ctx| {
        ctx.wait_until(async move {
            let _ = rx.await;
        });
        Ok(())
    }))
    .await
    .unwrap();
    let before = rt.metrics().hibernations.get();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        ns.live_count(),
        1,
        "must not hibernate while wait_until runs"
    );
    assert_eq!(rt.metrics().hibernations.get(), before);
    tx.send(()).unwrap();
    eventually("hibernation", Duration::from_secs(10), || {
        ns.live_count() == 0
    })
    .await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_objects_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let probes = Probes::new();
    let p = probes.clone();
    let rt = denizen_runtime::Runtime::builder()
        .data_dir(dir.path())
        .idle_timeout(Duration::from_secs(60))
        .max_open_objects(10)
        .object_with("probe", move || Probe { probes: p.clone() })
        .build()
        .unwrap();
    let ns = rt.namespace::<Probe>("probe").unwrap();
    for i in 0..50 {
        assert_eq!(
            ns.get_by_name(&format!("o{i}")).call(Incr).await.unwrap(),
            1
        );
    }
    // Far below the idle timeout, the least recently used objects were evicted.
    // An evicted object leaves the registry first and counts as hibernated once its file closed.
    eventually("the bound", Duration::from_secs(10), || {
        ns.live_count() <= 10 && rt.metrics().hibernations.get() >= 40
    })
    .await;
    // Evicted objects wake with their state.
    assert_eq!(ns.get_by_name("o0").call(Incr).await.unwrap(), 2);
    rt.shutdown().await;
}
