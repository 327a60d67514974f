//! Helpers for tests and benchmarks that run the real `meridian` binary.
//!
//! # Layout
//! - [`Process`]: one `meridian serve` child process, its address and its log.
//! - [`cluster`]: nodes in one process over an in-memory faulty network.
//! - [`demo`]: `meridian demo` as a child process on free ports.
//! - [`load`]: the benchmarks' load generator (plain HTTP or TLS, extra headers).
//! - [`proxy`]: a TCP proxy a test can cut, to partition real processes.
//! - [`mesh`]: three real processes in a full mesh through such proxies.
//! - [`repo_client`]: samod (automerge-repo) as a client of a real node.
//! - [`sim_client`]: the client library's syncer as a client of the in-memory cluster.
//! - [`sse`]: a Server-Sent Events reader, for the change feed.
//! - [`binary`]: where the binary is (`MERIDIAN_BIN`, or next to the test executable).
//! - `tests/`: end-to-end tests; `src/bin/bench.rs`: the benchmark; `src/bin/ceiling.rs`: a
//!   constant axum handler, the HTTP ceiling the benchmark compares against.
#![warn(unreachable_pub, missing_debug_implementations)]

pub mod cluster;
pub mod demo;
pub mod load;
pub mod mesh;
pub mod proxy;
pub mod repo_client;
pub mod sim_client;
pub mod sse;
pub mod tokens;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `meridian` binary: `$MERIDIAN_BIN`, else `target/<profile>/meridian` beside this test
/// executable (`cargo test --workspace` builds it).
pub fn binary() -> PathBuf {
    sibling_binary("MERIDIAN_BIN", "meridian")
}

/// A binary of the workspace, found like [`binary`].
pub fn sibling_binary(env: &str, name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found; build it first (cargo build --workspace --bins) or set {env}",
        path.display()
    );
    path
}

/// A running `meridian serve`. Killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct Process {
    child: Child,
    pub addr: String,
    log: mpsc::Receiver<String>,
    /// Lines read while waiting for the address, not yet returned by `log_lines`.
    early: std::sync::Mutex<Vec<String>>,
}

impl Process {
    /// Starts a node on a free loopback port (unless `extra` says `--listen`) with `data_dir`,
    /// plus any extra arguments, and waits until it is ready.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Process {
        Self::start_with_env(data_dir, extra, &[])
    }

    /// [`Process::start`] with extra environment variables (an `LD_PRELOAD`, say).
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Process {
        Self::try_start(data_dir, extra, env).unwrap_or_else(|(status, log)| {
            panic!(
                "meridian did not report its address (exit status {status:?}):\n{}",
                log.join("\n")
            )
        })
    }

    /// Starts a node like [`Process::start_with_env`]; if it exits (or is silent for 30 s)
    /// before it listens, its exit code and log.
    pub fn try_start(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Process, (Option<i32>, Vec<String>)> {
        Self::try_start_bin(&binary(), data_dir, extra, env)
    }

    /// [`Process::try_start`] of another `meridian` binary (an older build, for an A/B).
    pub fn try_start_bin(
        bin: &Path,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Process, (Option<i32>, Vec<String>)> {
        let mut cmd = Command::new(bin);
        cmd.arg("serve");
        if !extra.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("MERIDIAN_LOG", "info,automerge=warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn meridian");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut early = vec![];
        let addr = loop {
            let Ok(line) = log.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            else {
                // the log ended (the node exited) or stayed silent
                let _ = child.kill();
                let status = child.wait().ok().and_then(|s| s.code());
                return Err((status, early));
            };
            // `listen=ADDR` in text logs, `"listen":"ADDR"` in JSON ones
            let addr = match line.split_once("listen=") {
                Some((_, rest)) => rest.split_whitespace().next().map(str::to_owned),
                None => line
                    .split_once("\"listen\":\"")
                    .and_then(|(_, rest)| rest.split('"').next().map(str::to_owned)),
            };
            early.push(line);
            if let Some(addr) = addr {
                break addr;
            }
        };
        Ok(Process {
            child,
            addr,
            log,
            early: std::sync::Mutex::new(early),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// kill -9.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The exit status if the process has exited, without waiting.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("wait")
    }

    /// Sends SIGTERM and returns at once.
    pub fn signal_term(&self) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "meridian did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status and every log line not yet returned by `log_lines`.
    pub fn terminate_with_log(mut self) -> (std::process::ExitStatus, Vec<String>) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let status = self.child.wait().expect("wait");
        let mut lines = std::mem::take(&mut *self.early.lock().expect("log lines"));
        // the reader ends at the pipe's end, after the last line
        while let Ok(line) = self.log.recv_timeout(Duration::from_secs(5)) {
            lines.push(line);
        }
        (status, lines)
    }

    /// Log lines printed since the last call (the first call: since the start).
    pub fn log_lines(&self) -> Vec<String> {
        let mut lines = std::mem::take(&mut *self.early.lock().expect("log lines"));
        lines.extend(self.log.try_iter());
        lines
    }

    /// CPU time (user + system) the process has used so far, from /proc.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(self.pid())
    }

    /// Resident set size in KiB now, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a condition, polling, with a deadline (never a fixed sleep).
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP client for tests: a 10 s timeout on every request.
/// Inverts 16 bytes in the middle of a data dir's newest log segment (a stopped node's), as
/// a bad sector would; returns the segment and its damaged bytes.
pub fn damage_newest_log_segment(data_dir: &Path) -> (PathBuf, Vec<u8>) {
    let mut segs: Vec<_> = std::fs::read_dir(data_dir.join("wal"))
        .expect("a data dir")
        .map(|e| e.expect("a segment").path())
        .collect();
    segs.sort();
    let last = segs.pop().expect("a segment");
    let mut bytes = std::fs::read(&last).expect("readable");
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 16] {
        *b = !*b;
    }
    std::fs::write(&last, &bytes).expect("writable");
    (last, bytes)
}

/// The body of a GET, as text (`/metrics`, say).
pub async fn get_text(c: &reqwest::Client, url: String) -> String {
    let r = c.get(url).send().await.expect("an answer");
    r.text().await.expect("a text body")
}

/// The body of a GET, as JSON (`/v1/status`, `/v1/_regions`, say).
pub async fn get_json(c: &reqwest::Client, url: String) -> serde_json::Value {
    let r = c.get(url).send().await.expect("an answer");
    r.json().await.expect("a JSON body")
}

/// CPU time (user + system) of process `pid` so far, from /proc.
pub fn cpu_secs(pid: i32) -> f64 {
    stat_secs(pid, 11..13)
}

/// [`cpu_secs`] plus the CPU of the children the process has waited for (a PostgreSQL
/// postmaster's backends, once they exit).
pub fn cpu_secs_with_children(pid: i32) -> f64 {
    stat_secs(pid, 11..15)
}

/// The sum of `/proc/<pid>/stat` clock-tick fields `fields` (counted after the command name),
/// in seconds.
fn stat_secs(pid: i32, fields: std::ops::Range<usize>) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // fields after the command name, which is in parentheses
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(fields).map_or(0.0, |t| {
        t.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// The lines of a `/metrics` text that mention `part` (for an assertion's message).
pub fn metric_lines(metrics: &str, part: &str) -> String {
    metrics
        .lines()
        .filter(|l| l.contains(part))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `req` with `body` as JSON: a merge patch for PATCH, plain JSON otherwise.
pub fn json_body(
    req: reqwest::RequestBuilder,
    method: &str,
    body: &serde_json::Value,
) -> reqwest::RequestBuilder {
    let ct = if method == "PATCH" {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    req.header("content-type", ct).body(body.to_string())
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

/// The seeds a seeded random test runs: `MERIDIAN_SEED=s` replays one, `MERIDIAN_SEEDS=n` runs
/// 0..n, else 0..`default`.
pub fn seeds(default: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("MERIDIAN_SEED") {
        return vec![s.parse().expect("MERIDIAN_SEED is a number")];
    }
    let n = std::env::var("MERIDIAN_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (0..n).collect()
}

/// Runs the binary to completion with `args` and returns (exit code, stderr).
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(binary())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run meridian");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `p` quantile (0..=1) of sorted samples, by nearest rank; NaN when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `meridian key create`: (the key, the auth file entry).
pub fn create_key(name: &str, access: &str, collections: &str) -> (String, String) {
    let out = Command::new(binary())
        .args(["key", "create", "--name", name, "--access", access])
        .args(["--collections", collections])
        .output()
        .expect("run meridian key create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let (key, entry) = text
        .split_once("\n\n")
        .expect("the key, a blank line, the entry");
    (key.trim().to_owned(), entry.to_owned())
}

/// An offline replica of `users/alice` (which holds `{"name": "Alice"}` on the node) synced
/// through `client`: it gets the document, and an edit made on it is acknowledged and on the
/// node.
pub async fn replica_round_trip(client: &meridian_client::Client) {
    use serde_json::json;
    let device = tempfile::tempdir().expect("a temp dir");
    let replicas = meridian_client::Replicas::open(device.path()).expect("replicas");
    let alice = replicas.open_doc("users", "alice").expect("a replica");
    let _syncer = meridian_client::Syncer::start(replicas.clone(), client.clone());
    eventually("the replica syncs", Duration::from_secs(10), || {
        let v = alice.value();
        async move { v.is_some_and(|v| v["name"] == "Alice") }
    })
    .await;
    alice
        .patch(&json!({"bio": "offline"}))
        .expect("a local edit");
    tokio::time::timeout(Duration::from_secs(10), alice.acknowledged())
        .await
        .expect("acknowledged");
    let doc = client
        .get("users", "alice")
        .await
        .expect("get")
        .expect("alice");
    assert_eq!(doc.value["bio"], "offline");
}
