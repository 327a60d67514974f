//! A PostgreSQL of the bench's own, and `pgbench` against it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{cpu_with_children, free_port, profile, Figure};

pub(crate) struct Postgres {
    child: Child,
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new(self.bin.join("pg_ctl"))
            .args(["stop", "-m", "immediate", "-D"])
            .arg(self.dir.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn postgres_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

/// A PostgreSQL of its own (fsync and synchronous_commit on, the defaults), its table filled.
pub(crate) fn start_postgres(dir: &Path, docs: usize) -> Option<Postgres> {
    let bin = postgres_bin()?;
    let data = dir.join("data");
    // initdb refuses to run as root; the bench then runs it as the postgres user
    let as_postgres = unsafe { libc::geteuid() } == 0;
    std::fs::create_dir_all(dir).ok()?;
    if as_postgres {
        Command::new("chown")
            .args(["-R", "postgres"])
            .arg(dir)
            .status()
            .ok()?;
    }
    let cmd = |program: &Path| {
        if as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    };
    let ok = cmd(&bin.join("initdb"))
        .args(["-U", "bench", "--auth", "trust", "-D"])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?
        .success();
    assert!(ok, "initdb failed");
    let port = free_port();
    let child = cmd(&bin.join("postgres"))
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=256MB",
            "-c",
            "fsync=on",
            "-c",
            "synchronous_commit=on",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let pg = Postgres {
        child,
        port,
        dir: dir.to_path_buf(),
        bin,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pg.psql("postgres", "SELECT 1") {
        assert!(Instant::now() < deadline, "postgres did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(pg.psql("postgres", "CREATE DATABASE bench"));
    let mut sql =
        String::from("CREATE TABLE profiles (id int PRIMARY KEY, doc jsonb NOT NULL);\nINSERT INTO profiles VALUES\n");
    for i in 0..docs {
        let sep = if i + 1 == docs { ";" } else { "," };
        sql.push_str(&format!("({i}, '{}'){sep}\n", profile(i)));
    }
    assert!(pg.psql("bench", &sql), "fill the table");
    Some(pg)
}

impl Postgres {
    /// The postmaster (the spawned child may be `runuser`, whose child it is).
    fn pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.join("data").join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
            .unwrap_or_else(|| self.child.id())
    }

    fn psql(&self, db: &str, sql: &str) -> bool {
        Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "bench",
                "-d",
                db,
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `pgbench -M prepared` running `script` from `clients` connections for `secs`.
    pub(crate) fn pgbench(
        &self,
        script: &str,
        clients: usize,
        secs: u64,
        scratch: &Path,
    ) -> Figure {
        let file = scratch.join("script.sql");
        std::fs::write(&file, script).expect("script");
        let logs = scratch.join("pgbench-log");
        let _ = std::fs::remove_dir_all(&logs);
        std::fs::create_dir_all(&logs).expect("log dir");
        let cpu0 = cpu_with_children(self.pid());
        let out = Command::new("pgbench")
            .args(["-n", "-M", "prepared", "-h", "127.0.0.1", "-U", "bench"])
            .args(["-p", &self.port.to_string()])
            .args([
                "-c",
                &clients.to_string(),
                "-j",
                "2",
                "-T",
                &secs.to_string(),
            ])
            .arg("-f")
            .arg(&file)
            .arg("--log")
            .arg(format!("--log-prefix={}", logs.join("tx").display()))
            .arg("bench")
            .current_dir(scratch)
            .output()
            .expect("run pgbench");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "pgbench: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // the backends are reaped once their clients have gone
        std::thread::sleep(Duration::from_millis(300));
        let cpu = cpu_with_children(self.pid()) - cpu0;
        let tps: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("tps = "))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("a tps line");
        let done: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|v| v.split('/').next())
            .and_then(|v| v.trim().parse().ok())
            .expect("a count");
        // per transaction: client, number, latency in µs, ...
        let mut lat: Vec<f64> = vec![];
        for e in std::fs::read_dir(&logs).expect("logs").flatten() {
            let t = std::fs::read_to_string(e.path()).unwrap_or_default();
            lat.extend(
                t.lines()
                    .filter_map(|l| l.split_whitespace().nth(2))
                    .filter_map(|v| v.parse::<f64>().ok()),
            );
        }
        lat.sort_by(f64::total_cmp);
        Figure {
            rps: tps,
            p99_ms: meridian_tests::percentile(&lat, 0.99) / 1000.0,
            cpu_us: cpu * 1e6 / done,
        }
    }
}
