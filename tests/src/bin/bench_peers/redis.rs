//! A Redis of the bench's own, and `redis-benchmark` against it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{cpu_with_children, free_port, profile, Figure};

pub(crate) struct Redis {
    child: Child,
    port: u16,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis of its own with every write appended and fsynced, holding the documents as JSON.
pub(crate) fn start_redis(dir: &Path, docs: usize) -> Option<Redis> {
    let port = free_port();
    std::fs::create_dir_all(dir).ok()?;
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let r = Redis { child, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !r.cli(&["PING"]) {
        assert!(Instant::now() < deadline, "redis did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    // redis-benchmark's __rand_int__ is 12 digits, zero-padded
    for i in 0..docs {
        assert!(r.cli(&["SET", &format!("u:{i:012}"), &profile(i).to_string()]));
    }
    Some(r)
}

impl Redis {
    fn cli(&self, args: &[&str]) -> bool {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `redis-benchmark` sending `command` from `clients` connections, about `secs` long.
    pub(crate) fn bench(
        &self,
        command: &[&str],
        clients: usize,
        secs: u64,
        docs: usize,
        guess_rps: f64,
    ) -> Figure {
        let n = (guess_rps * secs as f64).max(10_000.0) as u64;
        let cpu0 = cpu_with_children(self.child.id());
        let out = Command::new("redis-benchmark")
            .args(["-p", &self.port.to_string(), "-c", &clients.to_string()])
            .args(["-n", &n.to_string(), "-r", &docs.to_string(), "--csv"])
            .args(command)
            .output()
            .expect("run redis-benchmark");
        let cpu = cpu_with_children(self.child.id()) - cpu0;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "redis-benchmark: {text}");
        // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
        let row = text.lines().last().expect("a result row");
        let cols: Vec<f64> = row
            .split(',')
            .skip(1)
            .map(|c| c.trim_matches('"').parse().unwrap_or(f64::NAN))
            .collect();
        Figure {
            rps: cols[0],
            p99_ms: cols[5],
            cpu_us: cpu * 1e6 / n as f64,
        }
    }
}
