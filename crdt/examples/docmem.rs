//! Measures the heap a cached document takes (for the cache's weight, `store/cache.rs`):
//! documents of several shapes and history lengths, as built by writes and as loaded from a
//! snapshot (`LOADED=1`). Run with `cargo run --release -p meridian-crdt --example docmem`.

use automerge::ReadDoc;
use meridian_crdt::{Document, Edit, Op};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        System.realloc(p, l, n)
    }
}
#[global_allocator]
static A: Counting = Counting;

fn obj(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().unwrap().clone()
}

fn build(shape: &str, k: usize, i: usize, clock: &uhlc::HLC) -> Document {
    let mut d = Document::new(automerge::ActorId::random());
    let put = match shape {
        "big" => serde_json::json!({"bio": "x".repeat(20_000 + i)}),
        "wide" => serde_json::Value::Object(
            (0..200)
                .map(|f| (format!("field{f}"), serde_json::json!(f * i)))
                .collect(),
        ),
        "text" => serde_json::json!({"t": ""}),
        _ => {
            serde_json::json!({"name": format!("user {i}"), "email": format!("u{i}@example.com"), "n": i})
        }
    };
    d.apply(&Edit::Put(obj(put)), &clock.new_timestamp())
        .unwrap();
    for j in 0..k {
        let e = match shape {
            "text" => Edit::Ops(vec![Op::Splice {
                path: "/t".into(),
                index: 0,
                delete: 0,
                insert: "abcdefghij".repeat(10),
            }]),
            _ => Edit::Patch(obj(serde_json::json!({"n": i * 1000 + j + 1}))),
        };
        d.apply(&e, &clock.new_timestamp()).unwrap();
    }
    d
}

fn main() {
    let clock = uhlc::HLC::default();
    for (shape, k) in [
        ("small", 0usize),
        ("small", 10),
        ("small", 31),
        ("small", 100),
        ("small", 300),
        ("big", 0),
        ("big", 10),
        ("wide", 0),
        ("wide", 31),
        ("text", 10),
        ("text", 50),
    ] {
        let n = 100;
        let before = LIVE.load(Ordering::Relaxed);
        let mut docs = vec![];
        let (mut changes, mut ops, mut json, mut snap) = (0, 0, 0, 0);
        for i in 0..n {
            let d = build(shape, k, i, &clock);
            let saved = d.save();
            let am = automerge::Automerge::load(&saved).unwrap();
            let st = am.stats();
            changes += st.num_changes as usize;
            ops += st.num_ops as usize;
            snap += saved.len();
            json += serde_json::to_string(&d.value()).unwrap().len();
            drop(am);
            if std::env::var("LOADED").is_ok() {
                let l = Document::load(
                    automerge::ActorId::random(),
                    Some(&saved),
                    std::iter::empty(),
                )
                .unwrap();
                drop(d);
                docs.push(l);
            } else {
                docs.push(d);
            }
        }
        let live = LIVE.load(Ordering::Relaxed) - before;
        println!(
            "{shape:6} {k:4}: heap {:6} B/doc; changes {:4} ops {:5} json {:6} snapshot {:6}",
            live as usize / n,
            changes / n,
            ops / n,
            json / n,
            snap / n
        );
        drop(docs);
    }
}
