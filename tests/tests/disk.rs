//! The store against its disk, with the real binary: a full filesystem (a size-limited tmpfs
//! the test mounts; CI runs as root), and a disk whose syncs fail (an `LD_PRELOAD` shim the
//! test compiles). See `docs/design.md`, failure matrix.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use meridian_tests::{eventually, http_client, Process};
use serde_json::{json, Value};

/// A tmpfs of `mib` MiB, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u64) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs (these tests need root, as CI has): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn free(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(self.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// A file that leaves about `leave` bytes free (or fills the disk: `leave` 0).
    fn fill_leaving(&self, leave: u64) -> PathBuf {
        let path = self.path().join("filler");
        let size = self.free().saturating_sub(leave);
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 1 << 20];
        let mut written = 0;
        while written < size {
            let n = chunk.len().min((size - written) as usize);
            match std::io::Write::write_all(&mut f, &chunk[..n]) {
                Ok(()) => written += n as u64,
                Err(_) => break, // full
            }
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

async fn send(
    c: &reqwest::Client,
    method: &str,
    url: String,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut r = c.request(method.parse().unwrap(), url);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

/// PUTs `users/u{i}` = `{"i": i}` for i in 0..n, each acknowledged (201).
async fn put_users(c: &reqwest::Client, node: &Process, n: usize) {
    for i in 0..n {
        let url = node.url(&format!("/v1/users/u{i}"));
        let (s, _, _) = send(c, "PUT", url, Some(json!({"i": i}))).await;
        assert_eq!(s, 201, "u{i}");
    }
}

#[tokio::test]
async fn writes_stop_at_the_free_space_floor_and_resume_by_themselves_when_space_returns() {
    let disk = SmallDisk::mount(96);
    let data = disk.path().join("data");
    let node = Process::start(&data, &["--min-free-mb", "16"]);
    let c = http_client();
    put_users(&c, &node, 20).await;
    let mut acknowledged: Vec<usize> = (0..20).collect();

    // 12 MiB free: below the floor for new data, above half of it for deletes
    let filler = disk.fill_leaving(12 << 20);
    // the node reads the free space at most every half second while it is plentiful: a write
    // in that window is still taken (the floor is the margin for it)
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let (s, headers, body) = loop {
        let answer = send(&c, "PATCH", node.url("/v1/users/u1"), Some(json!({"x": 1}))).await;
        if answer.0 != 200 || std::time::Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(s, 507, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("resume once space is freed"), "{body}");
    assert_eq!(headers["retry-after"], "10");
    let (s, _, _) = send(&c, "PUT", node.url("/v1/users/new"), Some(json!({"a": 1}))).await;
    assert_eq!(s, 507);
    // reads go on; the node says why it is not ready, and so does its status
    let (s, _, body) = send(&c, "GET", node.url("/v1/users/u1"), None).await;
    assert_eq!((s, &body["value"]["i"]), (200, &json!(1)));
    let (s, _, body) = send(&c, "GET", node.url("/readyz"), None).await;
    assert_eq!(s, 503);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("low on disk space"),
        "{body}"
    );
    let (_, _, status) = send(&c, "GET", node.url("/v1/status"), None).await;
    assert_eq!(status["storage"]["state"], "low_space", "{status}");
    assert_eq!(status["storage"]["floor_bytes"], 16u64 << 20);
    let metrics = meridian_tests::get_text(&c, node.url("/metrics")).await;
    assert!(metrics.contains("meridian_storage_writable 0"), "{metrics}");
    // a delete still converges
    let (s, _, body) = send(&c, "DELETE", node.url("/v1/users/u19"), None).await;
    assert_eq!(s, 200, "{body}");
    acknowledged.retain(|i| *i != 19);

    // space returns: writes resume without a restart
    std::fs::remove_file(filler).unwrap();
    eventually("writes resume", Duration::from_secs(5), || async {
        send(&c, "PATCH", node.url("/v1/users/u1"), Some(json!({"x": 1})))
            .await
            .0
            == 200
    })
    .await;
    let (s, _, _) = send(&c, "GET", node.url("/readyz"), None).await;
    assert_eq!(s, 200);
    let (_, _, status) = send(&c, "GET", node.url("/v1/status"), None).await;
    assert_eq!(status["storage"]["state"], "ok", "{status}");

    // and every acknowledged write survives kill -9
    node.kill9();
    let node = Process::start(&data, &["--min-free-mb", "16"]);
    for i in &acknowledged {
        let (s, _, body) = send(&c, "GET", node.url(&format!("/v1/users/u{i}")), None).await;
        assert_eq!(s, 200, "u{i}");
        assert_eq!(body["value"]["i"], *i);
    }
    let (_, _, body) = send(&c, "GET", node.url("/v1/users/u1"), None).await;
    assert_eq!(body["value"], json!({"i": 1, "x": 1}));
    let (s, _, _) = send(&c, "GET", node.url("/v1/users/u19"), None).await;
    assert_eq!(s, 404);
}

/// Another process fills the disk past the floor: the ballast is released, and with its room the
/// node still shuts down cleanly; with space back it is allocated again.
#[tokio::test]
async fn the_ballast_is_released_when_the_disk_fills_and_allocated_again_when_space_returns() {
    let disk = SmallDisk::mount(64);
    let data = disk.path().join("data");
    let ballast = data.join("ballast");
    let node = Process::start(&data, &["--min-free-mb", "16"]);
    let c = http_client();
    assert_eq!(
        std::fs::metadata(&ballast).unwrap().len(),
        4 << 20,
        "a quarter of the floor"
    );
    let (_, _, status) = send(&c, "GET", node.url("/v1/status"), None).await;
    assert_eq!(status["storage"]["ballast_bytes"], 4u64 << 20, "{status}");
    put_users(&c, &node, 10).await;

    // 5 MiB free: below half the floor
    let filler = disk.fill_leaving(5 << 20);
    eventually(
        "the ballast is released",
        Duration::from_secs(5),
        || async {
            let (s, _, _) =
                send(&c, "PATCH", node.url("/v1/users/u1"), Some(json!({"x": 1}))).await;
            s == 507 && !ballast.exists()
        },
    )
    .await;
    assert!(disk.free() >= 8 << 20, "its room is free again");
    let (_, _, status) = send(&c, "GET", node.url("/v1/status"), None).await;
    assert_eq!(status["storage"]["ballast_bytes"], 0, "{status}");
    let (code, log) = node.terminate_with_log();
    assert!(code.success(), "{}", log.join("\n"));
    assert!(
        log.iter().any(|l| l.contains("released the ballast")),
        "{}",
        log.join("\n")
    );

    std::fs::remove_file(filler).unwrap();
    let node = Process::start(&data, &["--min-free-mb", "16"]);
    assert_eq!(std::fs::metadata(&ballast).unwrap().len(), 4 << 20);
    let (s, _, body) = send(&c, "GET", node.url("/v1/users/u9"), None).await;
    assert_eq!((s, &body["value"]["i"]), (200, &json!(9)));
    let (s, _, _) = send(&c, "PATCH", node.url("/v1/users/u1"), Some(json!({"x": 1}))).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn a_start_on_a_full_disk_fails_and_once_space_is_freed_the_store_opens() {
    let disk = SmallDisk::mount(64);
    let data = disk.path().join("data");
    let c = http_client();
    {
        let node = Process::start(&data, &[]);
        put_users(&c, &node, 50).await;
        node.kill9();
    }
    let filler = disk.fill_leaving(0);
    // on a full disk the node either refuses to start, saying why, or starts and refuses
    // writes while serving reads; either way nothing it leaves behind stops the next start
    match Process::try_start(&data, &[], &[]) {
        Err((code, log)) => {
            let log = log.join("\n");
            assert_ne!(code, Some(0), "{log}");
            assert!(!log.contains("panicked"), "{log}");
        }
        Ok(node) => {
            let (s, _, _) = send(&c, "GET", node.url("/v1/users/u1"), None).await;
            assert_eq!(s, 200);
            let (s, _, _) = send(&c, "PUT", node.url("/v1/users/new"), Some(json!({"a": 1}))).await;
            assert_eq!(s, 507);
            node.kill9();
        }
    }
    std::fs::remove_file(filler).unwrap();
    let node = Process::start(&data, &[]);
    for i in 0..50 {
        let (s, _, body) = send(&c, "GET", node.url(&format!("/v1/users/u{i}")), None).await;
        assert_eq!((s, &body["value"]["i"]), (200, &json!(i)), "u{i}");
    }
}

/// `fdatasync` and `fsync` fail with EIO while the file `$MERIDIAN_TEST_FAIL_SYNC` exists.
const SYNC_SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>
static int failing(void) {
    const char *flag = getenv("MERIDIAN_TEST_FAIL_SYNC");
    return flag && access(flag, F_OK) == 0;
}
int fdatasync(int fd) {
    if (failing()) { errno = EIO; return -1; }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}
int fsync(int fd) {
    if (failing()) { errno = EIO; return -1; }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}
"#;

fn build_shim(dir: &Path) -> PathBuf {
    let src = dir.join("failsync.c");
    let lib = dir.join("failsync.so");
    std::fs::write(&src, SYNC_SHIM).unwrap();
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-ldl")
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lib
}

#[tokio::test]
async fn a_failed_sync_is_never_acknowledged_is_named_and_sigterm_then_exits_without_a_panic() {
    let tools = tempfile::tempdir().unwrap();
    let shim = build_shim(tools.path());
    let flag = tools.path().join("fail");
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("LD_PRELOAD", shim.to_str().unwrap()),
        ("MERIDIAN_TEST_FAIL_SYNC", flag.to_str().unwrap()),
    ];
    let node = Process::start_with_env(dir.path(), &[], &env);
    let c = http_client();
    let (s, _, _) = send(&c, "PUT", node.url("/v1/users/kept"), Some(json!({"v": 1}))).await;
    assert_eq!(s, 201);

    std::fs::write(&flag, b"").unwrap();
    let (s, _, body) = send(&c, "PUT", node.url("/v1/users/lost"), Some(json!({"v": 2}))).await;
    assert_eq!(s, 503, "{body}");
    let (s, _, body) = send(&c, "GET", node.url("/readyz"), None).await;
    assert_eq!(s, 503);
    let why = body["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        why.contains("write-ahead log sync failed") && why.contains("Input/output error"),
        "{why}"
    );
    assert!(why.contains("restarted"), "{why}");
    let (_, _, status) = send(&c, "GET", node.url("/v1/status"), None).await;
    assert_eq!(status["storage"]["state"], "failed", "{status}");
    // reads go on
    let (s, _, _) = send(&c, "GET", node.url("/v1/users/kept"), None).await;
    assert_eq!(s, 200);

    let (status, log) = node.terminate_with_log();
    let log = log.join("\n");
    assert_eq!(status.code(), Some(1), "exit status {status:?}:\n{log}");
    assert!(
        !log.contains("panicked") && !log.contains("stopped cleanly"),
        "{log}"
    );
    let last = log.lines().last().unwrap_or_default();
    assert!(last.contains("stopped after a storage failure"), "{log}");
    std::fs::remove_file(&flag).unwrap();
    let node = Process::start(dir.path(), &[]);
    let (s, _, body) = send(&c, "GET", node.url("/v1/users/kept"), None).await;
    assert_eq!((s, &body["value"]), (200, &json!({"v": 1})));
}

/// A damaged record with acknowledged records after it: the node refuses to start, naming the
/// segment; `meridian repair` names what would be lost and changes nothing.
#[tokio::test]
async fn a_damaged_log_is_refused_at_start_and_repair_names_what_it_would_lose() {
    let dir = tempfile::tempdir().unwrap();
    let c = http_client();
    let node = Process::start(dir.path(), &[]);
    put_users(&c, &node, 40).await;
    // within the checkpoint interval (5 s): sled does not have these yet, only the log
    node.kill9();
    let (last, bytes) = meridian_tests::damage_newest_log_segment(dir.path());

    let Err((code, log)) = Process::try_start(dir.path(), &[], &[]) else {
        panic!("a node started on a damaged log");
    };
    let log = log.join("\n");
    assert_eq!(code, Some(1), "{log}");
    let name = last.file_name().unwrap().to_str().unwrap();
    assert!(
        log.contains(name) && log.contains("intact records follow"),
        "{log}"
    );

    let out = Command::new(meridian_tests::binary())
        .args(["repair", "--check"])
        .arg(dir.path())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("lost on this node: users/u"), "{stderr}");
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    assert_eq!(std::fs::read(&last).unwrap(), bytes, "the log is untouched");
}
