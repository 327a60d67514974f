//! Contracts: a changed schema is in force once its write returns.

use super::*;
use std::sync::atomic::Ordering;

/// A contract named by its schema document: `{"schema": "<text>"}` gives a contract that
/// reports `<text>` as the one violation of every document (enough to tell versions apart).
#[derive(Debug)]
struct Named(String);

impl crate::Contract for Named {
    fn merge_at(&self, _: &[String]) -> crate::Merge {
        crate::Merge::Lww
    }
    fn violations(&self, _: &Value) -> Vec<crate::Violation> {
        vec![crate::Violation {
            path: String::new(),
            message: self.0.clone(),
        }]
    }
    fn counter_fields(&self) -> usize {
        0
    }
}

#[derive(Debug)]
struct NamedCompiler;

impl Contracts for NamedCompiler {
    fn compile(&self, _: &str, _: &str, json: &str) -> Option<Arc<dyn crate::Contract>> {
        let v: Value = serde_json::from_str(json).ok()?;
        Some(Arc::new(Named(v["schema"].as_str()?.to_owned())))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_schema_is_in_force_once_its_write_returns_even_under_concurrent_reads() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.set_contracts(Arc::new(NamedCompiler));
    let schema = DocKey::new(SCHEMAS, "users").unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // readers that keep asking for the contract while schemas change (each ask may cache)
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (s, stop) = (s.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let _ = s.contract_of("users");
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for i in 0..200 {
        let name = format!("v{i}");
        s.write(&schema, Edit::Put(obj(json!({"schema": name}))), None)
            .await
            .unwrap();
        let now = s.contract_of("users").expect("a contract");
        assert_eq!(
            now.violations(&json!({}))[0].message,
            name,
            "after write {i}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
}
