//! The demo page in a real browser (Debian's chromium, driven over WebDriver by chromedriver):
//! a write in us shows in eu's column within 2 s; eu cut off, the same field written on both
//! sides, the conflict shown and resolved from the page, the heal, and all three columns agree.
//!
//! Needs `chromium` and `chromedriver` on the PATH (`.ci/run` installs them). A screenshot of
//! the end state is saved as `$CARGO_TARGET_TMPDIR/demo.png` (or `$MERIDIAN_SCREENSHOT`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use meridian_tests::demo::Demo;

/// chromedriver on a free port; killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is not installed: apt-get install chromium chromium-driver");
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({"args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1500,1150",
        ]}),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&driver.url)
            .await
        {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot start chromium through chromedriver: {e}"),
        }
    }
}

/// The text of the first element matching `css`, or "" if there is none.
async fn text(b: &Client, css: &str) -> String {
    match b.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn count(b: &Client, css: &str) -> usize {
    b.find_all(Locator::Css(css)).await.map_or(0, |v| v.len())
}

/// Polls `f` every 50 ms until it holds; returns how long that took, or panics after `limit`
/// with what the page shows (its log included).
async fn within<F, Fut>(b: &Client, what: &str, limit: Duration, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    loop {
        if f().await {
            return t0.elapsed();
        }
        if t0.elapsed() > limit {
            let page = b
                .execute("return document.body.innerText", vec![])
                .await
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .unwrap_or_else(|e| format!("(cannot read the page: {e})"));
            panic!("not within {limit:?}: {what}\n--- the page ---\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn click(b: &Client, css: &str) {
    b.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

/// Types `value` into a region's name field and saves it.
async fn write_name(b: &Client, region: &str, value: &str) {
    let input = b
        .find(Locator::Css(&format!(
            "[data-region={region}] input[name=name]"
        )))
        .await
        .unwrap();
    input.clear().await.unwrap();
    input.send_keys(value).await.unwrap();
    click(b, &format!("[data-region={region}] .save-name")).await;
}

fn live(region: &str) -> String {
    format!("[data-region={region}] pre.live")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_replication_a_partition_and_a_conflict_resolved_by_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(&dir.path().join("demo"));
    let driver = Driver::start();
    let b = browser(&driver).await;
    b.goto(&format!("{}/", demo.page)).await.unwrap();

    // the page creates the profile and every column shows it, live
    within(
        &b,
        "the profile in every column",
        Duration::from_secs(10),
        || async {
            for r in ["us", "eu", "ap"] {
                if !text(&b, &live(r)).await.contains("\"Ada\"") {
                    return false;
                }
            }
            true
        },
    )
    .await;
    // and made no failed request on the way (the browser logs each 4xx and 5xx as an error);
    // Chromium's resource timings carry each answer's status, EventSource streams included
    let failed = b
        .execute(
            "return performance.getEntriesByType('resource')\
               .filter((e) => e.responseStatus === 0 || e.responseStatus >= 400)\
               .map((e) => e.responseStatus + ' ' + e.name)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        failed,
        serde_json::json!([]),
        "failed requests on the first load"
    );

    // a write in us is in eu's column within 2 s
    write_name(&b, "us", "Grace").await;
    let took = within(
        &b,
        "Grace in eu's column",
        Duration::from_secs(2),
        || async { text(&b, &live("eu")).await.contains("\"Grace\"") },
    )
    .await;
    eprintln!("us → eu's column: {took:?}");

    // with the session token, a read in eu includes the session's write in us
    click(&b, "[data-region=eu] .read").await;
    within(
        &b,
        "a read-your-writes read in eu",
        Duration::from_secs(5),
        || async {
            text(&b, "#log")
                .await
                .contains("read in eu with the session token: 200")
        },
    )
    .await;
    assert!(text(&b, "#log")
        .await
        .contains("includes the session's write in us"));

    // cut eu off: the other regions show it unreachable within 2 s, and eu shows isolated
    click(&b, "[data-region=eu] .cut").await;
    let took = within(
        &b,
        "eu unreachable in us's and ap's columns",
        Duration::from_secs(2),
        || async {
            count(&b, "[data-region=us] tr.down[data-peer=eu]").await == 1
                && count(&b, "[data-region=ap] tr.down[data-peer=eu]").await == 1
        },
    )
    .await;
    eprintln!("cut → shown unreachable: {took:?}");
    within(&b, "eu isolated", Duration::from_secs(2), || async {
        text(&b, "[data-region=eu] h2 .state")
            .await
            .contains("isolated")
    })
    .await;

    // a write in us; eu cannot serve the session now, and says where the data is; without the
    // token it answers at once, with what it has: a stale read
    write_name(&b, "us", "From US").await;
    within(&b, "From US in us", Duration::from_secs(5), || async {
        text(&b, &live("us")).await.contains("\"From US\"")
    })
    .await;
    click(&b, "[data-region=eu] .read").await;
    within(
        &b,
        "eu refuses the session",
        Duration::from_secs(5),
        || async { text(&b, "#log").await.contains("503 session_unavailable") },
    )
    .await;
    assert!(text(&b, "#log").await.contains("(the data is in us)"));
    click(&b, "#carry").await;
    click(&b, "[data-region=eu] .read").await;
    within(&b, "a stale read in eu", Duration::from_secs(5), || async {
        text(&b, "#log")
            .await
            .contains("STALE: /name is \"Grace\", the session wrote \"From US\" in us")
    })
    .await;

    // the same field written on the other side of the partition
    write_name(&b, "eu", "From EU").await;
    within(
        &b,
        "each side has its own",
        Duration::from_secs(5),
        || async {
            text(&b, &live("eu")).await.contains("\"From EU\"")
                && text(&b, &live("ap")).await.contains("\"From US\"")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        text(&b, &live("us")).await.contains("\"From US\""),
        "eu's write crossed the cut"
    );

    // heal: the conflict shows in every column, with both values and their regions
    click(&b, "[data-region=eu] .heal").await;
    within(
        &b,
        "the conflict in every column",
        Duration::from_secs(15),
        || async {
            for r in ["us", "eu", "ap"] {
                let t = text(
                    &b,
                    &format!("[data-region={r}] .conflict[data-path='/name']"),
                )
                .await;
                if !(t.contains("\"From US\" — us")
                    && t.contains("\"From EU\" — eu")
                    && t.contains("(wins)"))
                {
                    return false;
                }
            }
            true
        },
    )
    .await;
    b.screenshot()
        .await
        .map(|png| save_screenshot(&png, "demo-conflict.png"))
        .unwrap();

    // the user keeps eu's value, from ap's column: the conflict ends everywhere
    click(
        &b,
        "[data-region=ap] .conflict[data-path='/name'] button.pick[data-value='\"From EU\"']",
    )
    .await;
    within(
        &b,
        "all three agree, without a conflict",
        Duration::from_secs(10),
        || async {
            let mut docs = vec![];
            for r in ["us", "eu", "ap"] {
                docs.push(text(&b, &live(r)).await);
            }
            docs.iter()
                .all(|d| d.contains("\"name\": \"From EU\"") && *d == docs[0])
                && count(&b, ".conflict").await == 0
        },
    )
    .await;
    within(
        &b,
        "every peer reachable again",
        Duration::from_secs(10),
        || async {
            count(&b, "tr.down").await == 0 && count(&b, "table.peers tbody tr").await == 6
        },
    )
    .await;
    let png = b.screenshot().await.unwrap();
    save_screenshot(&png, "demo.png");
    b.close().await.unwrap();
}

fn save_screenshot(png: &[u8], name: &str) {
    let path = match std::env::var("MERIDIAN_SCREENSHOT") {
        Ok(dir) => std::path::PathBuf::from(dir).join(name),
        Err(_) => std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name),
    };
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}
