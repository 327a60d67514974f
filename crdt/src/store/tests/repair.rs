//! `meridian repair`'s store half: a damaged log is rewritten from its intact records when
//! sled covers what the damage hid, and left alone, with the loss named, when it does not.

use super::*;

#[tokio::test]
async fn damage_that_sled_covers_is_repaired_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let saved = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    write_docs(&s, 20).await;
    copy_dir(&dir.path().join("wal"), saved.path());
    s.close().unwrap();
    drop(s);
    // the log as it was before the checkpoint that put everything in sled, then damaged
    std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
    copy_dir(saved.path(), &dir.path().join("wal"));
    damage_middle(dir.path());
    assert!(matches!(
        Store::open(StoreConfig::new(dir.path())),
        Err(Error::Corrupt(_))
    ));

    let report = check_log(dir.path()).unwrap();
    assert!(report.is_damaged());
    assert!(report.lost.is_empty(), "{report:?}");
    assert!(report.applied >= 20, "{report:?}");
    repair_log(dir.path()).unwrap();
    let s = open(dir.path());
    for i in 0..20 {
        assert_eq!(
            get_json(&s, &format!("d{i}")).await,
            Some(json!({"i": i})),
            "d{i}"
        );
    }
}

#[tokio::test]
async fn damage_that_hides_acknowledged_batches_is_named_and_nothing_is_changed() {
    let (_s, _dir, image, segment) = lost_batch_image().await;
    let before = std::fs::read(&segment).unwrap();

    let report = check_log(image.path()).unwrap();
    assert_eq!(report.applied, 0);
    assert_eq!(report.lost.len(), 1, "{report:?}");
    let lost = report.lost[0].clone();
    // the writes after the lost batch are named, with their stamps
    let named: Vec<&str> = report
        .stranded
        .iter()
        .map(|(_, id, _)| id.as_str())
        .collect();
    let after = *lost.end() as usize; // batch n wrote d{n-1}
    assert!(named.contains(&format!("d{after}").as_str()), "{report:?}");
    assert!(report
        .stranded
        .iter()
        .all(|(c, _, stamp)| c == "users" && !stamp.is_empty()));

    let err = repair_log(image.path()).unwrap_err().to_string();
    assert!(
        err.contains("nothing was changed") && err.contains("new node id"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        before,
        "the log is untouched"
    );
}

#[tokio::test]
async fn accepting_the_loss_keeps_every_intact_write_and_waits_for_the_peers() {
    let (s, _dir, image, _) = lost_batch_image().await;
    let report = repair_log_accepting_loss(image.path()).unwrap();
    let lost = report.lost[0].clone();
    assert!(
        check_log(image.path()).unwrap().lost.is_empty(),
        "the log is whole again"
    );

    let r = open(image.path());
    assert!(r.recovering().unwrap().contains("lost"));
    assert!(matches!(
        r.storage().problem,
        Some(StorageProblem::Recovering(_))
    ));
    let refused = r.write(&key("new"), Edit::Put(obj(json!({}))), None).await;
    assert!(matches!(refused, Err(Error::Recovering(_))), "{refused:?}");
    // before the damage: replayed; after it: held for their documents, merged by the heal
    let first_lost = *lost.start() as usize; // batch n wrote d{n-1}
    assert_eq!(get_json(&r, "d0").await, Some(json!({"i": 0})));
    let held: Vec<DocKey> = r.damaged_documents();
    assert!(!held.is_empty());
    for k in &held {
        // held, not merged yet: refused, never answered as absent
        assert!(matches!(r.get(k).await, Err(Error::Damaged(_))), "{k}");
        let healed = r.heal(k, HealSources::default()).await.unwrap();
        assert!(matches!(healed, Healed::Healed { .. }), "{k}: {healed:?}");
    }
    for i in (0..20).filter(|i| !(first_lost - 1..*lost.end() as usize).contains(i)) {
        assert_eq!(
            get_json(&r, &format!("d{i}")).await,
            Some(json!({"i": i})),
            "d{i}"
        );
    }
    // what only the lost batches held comes back from a peer that has it
    for i in first_lost - 1..*lost.end() as usize {
        let k = key(&format!("d{i}"));
        assert_eq!(r.get(&k).await.unwrap(), None);
        let changes = s.changes_since(&k, &[]).await.unwrap();
        r.merge_remote(
            vec![(k.clone(), changes.iter().map(|c| remote(c)).collect())],
            vec![],
        )
        .await
        .unwrap();
        assert_eq!(get_json(&r, &format!("d{i}")).await, Some(json!({"i": i})));
    }
    r.recovered().await.unwrap();
    drop(r);
    let r = open(image.path());
    assert_eq!(r.recovering(), None, "durably");
    assert!(r.damaged_documents().is_empty());
    r.write(&key("new"), Edit::Put(obj(json!({}))), None)
        .await
        .unwrap();
}
