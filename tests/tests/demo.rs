//! `meridian demo` end to end: three regions that replicate, a page server that passes the
//! page's requests on (change streams and fault controls too), Ctrl-C that stops everything.

use std::time::Duration;

use meridian_tests::demo::Demo;
use meridian_tests::{eventually, http_client, sse::EventStream};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_three_replicating_regions_behind_its_page_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let mut demo = Demo::start(&data);
    let c = http_client();
    let ids: Vec<&str> = demo.regions.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["us", "eu", "ap"]);

    // the page and its configuration
    let page = c.get(format!("{}/", demo.page)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("<script type=\"module\" src=\"app.js\">"));
    for f in ["app.js", "api.js", "chart.js", "style.css"] {
        let r = c.get(format!("{}/{f}", demo.page)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{f}");
    }
    let cfg: Value = c
        .get(format!("{}/config.json", demo.page))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cfg["controls"], true);
    assert_eq!(cfg["regions"][1]["url"], demo.region("eu"));

    // a change stream on ap through the page server, then a write in us, straight to the node
    let streams = reqwest::Client::new();
    let mut stream = EventStream::open(
        &streams,
        &format!("{}/api/ap/v1/users/demo", demo.page),
        &[],
    )
    .await
    .expect("a stream through the page server");
    assert_eq!(stream.next().await.unwrap().event, "document");
    let r = c
        .put(format!("{}/v1/users/demo", demo.region("us")))
        .json(&json!({"name": "Ada"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let ev = stream
        .next_within(Duration::from_secs(5))
        .await
        .expect("the change arrives");
    assert_eq!(ev.event, "change");
    let change = ev.json();
    assert_eq!(
        (&change["value"]["name"], &change["node"]),
        (&json!("Ada"), &json!("us"))
    );

    // the fault controls through the page server; unknown regions and paths are refused
    let cut = c
        .post(format!("{}/api/eu/faults", demo.page))
        .body(r#"{"cut":["us","ap"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(cut.status(), 200);
    eventually("us sees eu cut off", Duration::from_secs(2), || async {
        let r: Value = c
            .get(format!("{}/api/us/v1/cluster", demo.page))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == "eu" && p["reachable"] == false)
    })
    .await;
    for (path, status) in [
        ("/api/xx/v1/users/demo", 404),
        ("/api/us/internal/rpc", 404),
        ("/nothing.js", 404),
    ] {
        let r = c.get(format!("{}{path}", demo.page)).send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
    }

    // Ctrl-C stops the page and all three regions, cleanly
    let status = demo
        .interrupt(Duration::from_secs(15))
        .expect("the demo stops on Ctrl-C");
    assert!(status.success(), "{status:?}");
    for (_, url) in &demo.regions {
        assert!(
            c.get(format!("{url}/healthz")).send().await.is_err(),
            "{url} still answers"
        );
    }
    // and keeps its data: the next start without --fresh would find alice; --fresh refuses a
    // directory it did not make
    assert!(data.join("us").exists());
    std::fs::write(data.join("notes.txt"), "mine").unwrap();
    let (code, err) = meridian_tests::run_to_exit(
        &[
            "demo",
            "--fresh",
            "--base-port",
            "1",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("which the demo did not make"), "{err}");
    assert!(data.join("notes.txt").exists() && data.join("us").exists());
}
