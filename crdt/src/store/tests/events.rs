//! Change events: one per change, in order, across reopen.

use super::*;

#[tokio::test]
async fn change_events_follow_every_change_in_order_and_survive_reopen() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(da.path());
    let mut cb = StoreConfig::new(db.path());
    cb.node_id = Some("n2".into());
    let b = Store::open(cb).unwrap();
    for i in 1..=3 {
        a.write(&key("x"), Edit::Patch(obj(json!({"n": i}))), None)
            .await
            .unwrap();
    }
    a.write(&key("x"), Edit::Delete, None).await.unwrap();
    let bounds = a.event_bounds();
    let events = a.events(0, bounds.visible, 100).unwrap().unwrap();
    let values: Vec<(crate::State, String)> = events
        .iter()
        .map(|(_, e)| (e.state, e.json.clone()))
        .collect();
    assert_eq!(
        values[..3].iter().map(|v| v.1.as_str()).collect::<Vec<_>>(),
        [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#]
    );
    assert_eq!(values[3].0, crate::State::Deleted);
    assert!(events.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(events
        .iter()
        .all(|(_, e)| e.stamps.len() == 1 && e.stamps[0].0 == "n1"));
    // a page stops at its limit; a read past the end is empty
    assert_eq!(a.events(0, bounds.visible, 2).unwrap().unwrap().len(), 2);
    assert!(a
        .events(bounds.visible, u64::MAX, 10)
        .unwrap()
        .unwrap()
        .is_empty());

    // merged on b: one event for the whole batch, naming a's stamps in order
    let page = a.feed(None, 1000).unwrap();
    let changes: Vec<RemoteChange> = page
        .entries
        .iter()
        .map(|(_, e)| remote(&e.change))
        .collect();
    b.merge_remote(vec![(key("x"), changes)], vec![])
        .await
        .unwrap();
    let on_b = b.events(0, u64::MAX, 100).unwrap().unwrap();
    assert_eq!(on_b.len(), 1);
    assert_eq!(on_b[0].1.state, crate::State::Deleted);
    let want: Vec<String> = events.iter().map(|(_, e)| e.stamps[0].1.clone()).collect();
    let got: Vec<String> = on_b[0].1.stamps.iter().map(|s| s.1.clone()).collect();
    assert_eq!(got, want);
    assert!(on_b[0].1.stamps.iter().all(|s| s.0 == "n1"));

    // the epoch and the events survive a reopen; trimming leaves a mark readers see
    let epoch = a.event_epoch().to_owned();
    a.close().unwrap();
    drop(a);
    let a = open(da.path());
    assert_eq!(a.event_epoch(), epoch);
    assert_eq!(a.events(0, u64::MAX, 100).unwrap().unwrap(), events);
    assert_eq!(a.trim_events(2).unwrap(), 2);
    assert_eq!(a.event_bounds().trimmed, bounds.visible - 2);
    assert_eq!(
        a.events(0, u64::MAX, 100).unwrap(),
        None,
        "a cursor before the trim"
    );
    assert_eq!(
        a.events(bounds.visible - 2, u64::MAX, 100)
            .unwrap()
            .unwrap(),
        events[2..]
    );
    assert_eq!(a.trim_events(2).unwrap(), 0);
    a.close().unwrap();
    drop(a);
    let a = open(da.path());
    assert_eq!(a.event_bounds().trimmed, bounds.visible - 2);
    assert_ne!(b.event_epoch(), epoch, "every data dir its own epoch");
}
