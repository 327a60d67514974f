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
    let dir = tempfile::tempdir().unwrap();
    let image = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    sled_image(dir.path(), image.path());
    write_docs(&s, 20).await;
    copy_dir(&dir.path().join("wal"), &image.path().join("wal"));
    let segment = damage_middle(image.path());
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
