//! `meridian demo` as a child process, on free ports, for the demo and browser tests.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::binary;

/// A running `meridian demo`. Killed on drop.
#[derive(Debug)]
pub struct Demo {
    child: Child,
    /// `http://127.0.0.1:<port>` of the page.
    pub page: String,
    /// Each region's id and base URL, as the demo printed them.
    pub regions: Vec<(String, String)>,
}

/// Three consecutive free ports on loopback, then one more, as (base, page).
fn free_ports() -> (u16, u16) {
    use rand::Rng;
    for _ in 0..100 {
        let base = rand::thread_rng().gen_range(20_000u16..60_000);
        let held: Vec<_> = (0..4)
            .map_while(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == 4 {
            return (base, base + 3);
        }
    }
    panic!("no four free consecutive ports on loopback");
}

impl Demo {
    /// Starts the demo with `data_dir` (and `--fresh`) and waits until it prints its addresses.
    pub fn start(data_dir: &Path) -> Demo {
        let (base, page) = free_ports();
        let mut child = Command::new(binary())
            .args(["demo", "--fresh", "--base-port", &base.to_string()])
            .args(["--listen", &format!("127.0.0.1:{page}"), "--data-dir"])
            .arg(data_dir)
            .env("MERIDIAN_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn meridian demo");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut regions = vec![];
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("meridian demo did not print its addresses"));
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["web", "page:", url] => {
                    return Demo {
                        child,
                        page: url.trim_end_matches('/').to_owned(),
                        regions,
                    }
                }
                [id, url] if url.starts_with("http://") => {
                    regions.push((id.to_string(), url.to_string()))
                }
                _ => {}
            }
        }
    }

    /// The base URL of a region.
    pub fn region(&self, id: &str) -> &str {
        &self
            .regions
            .iter()
            .find(|(r, _)| r == id)
            .unwrap_or_else(|| panic!("no region {id}"))
            .1
    }

    /// Ctrl-C, and the exit status (None if it did not exit within `limit`).
    pub fn interrupt(&mut self, limit: Duration) -> Option<ExitStatus> {
        // SAFETY: kill(2) on our own child's pid has no memory effects
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
