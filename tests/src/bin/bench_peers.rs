//! Meridian beside the systems a user would pick instead, measured in one run on this machine:
//! PostgreSQL 15 (a durable `UPDATE ... jsonb_set` and a `SELECT` over TCP, with fsync and
//! synchronous_commit on, driven by `pgbench -M prepared`) and Redis 7 (`GET` with
//! `--appendonly yes --appendfsync always`, driven by `redis-benchmark`), each started by this
//! bench in a temporary directory on its own port when it is installed (`apt-get install
//! postgresql redis-server`); Meridian's durable PATCH and GET and the constant axum handler
//! (`ceiling`) driven by the workspace's load generator. Every system holds the same 1,000
//! profile documents; the phases run interleaved, `--rounds` times, and the medians and their
//! ratios are printed, with each server's CPU per request (its process and reaped children).
//!
//! Also the automerge floor: automerge on its own, single-threaded, in this process, doing what a
//! PATCH needs of it (a transaction putting one field, the commit, the change's bytes, the
//! incremental save) plus a JSON render of the document; and Meridian's CPU per PATCH against
//! (floor + the constant handler's CPU per request).
//!
//! `cargo build --release --workspace --bins && target/release/bench_peers [--seconds 8] [--rounds 3]`

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use meridian_tests::load::{drive, start_ceiling, Phase, Req, Target};
use meridian_tests::{cpu_secs, Process};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Documents every system holds and the load spreads over.
    #[arg(long, default_value_t = 1000)]
    docs: usize,
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(run(args));
}

/// CPU seconds of a process and of the children it has reaped (PostgreSQL's backends).
fn cpu_with_children(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    let ticks: f64 = f.get(11..15).map_or(0.0, |t| t.iter().sum());
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("addr")
        .port()
}

fn profile(i: usize) -> serde_json::Value {
    serde_json::json!({"name": format!("user {i}"), "email": format!("u{i}@example.com"),
        "plan": "free", "n": i})
}

/// What one phase measured: throughput, p99, server CPU per request.
#[derive(Debug, Clone, Copy)]
struct Figure {
    rps: f64,
    p99_ms: f64,
    cpu_us: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

// --- PostgreSQL -------------------------------------------------------------------------------

struct Postgres {
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
fn start_postgres(dir: &Path, docs: usize) -> Option<Postgres> {
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
    fn pgbench(&self, script: &str, clients: usize, secs: u64, scratch: &Path) -> Figure {
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

// --- Redis ------------------------------------------------------------------------------------

struct Redis {
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
fn start_redis(dir: &Path, docs: usize) -> Option<Redis> {
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
    fn bench(
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

// --- the automerge floor ----------------------------------------------------------------------

/// µs per write of automerge alone, single-threaded: one field put in a transaction, the
/// commit, the change's bytes, the incremental save, and the document rendered as JSON; over
/// `docs` documents written in turn, `writes` in all.
fn automerge_floor(docs: usize, writes: usize) -> f64 {
    use automerge::{
        transaction::Transactable, AutoCommit, ObjType, ReadDoc, ScalarValue, Value, ROOT,
    };
    let mut all: Vec<(AutoCommit, automerge::ObjId)> = (0..docs)
        .map(|i| {
            let mut d = AutoCommit::new();
            let user = d.put_object(ROOT, "user", ObjType::Map).expect("user");
            for (k, v) in profile(i).as_object().expect("object") {
                match v {
                    serde_json::Value::String(s) => d.put(&user, k.as_str(), s.as_str()),
                    other => d.put(&user, k.as_str(), other.as_i64().unwrap_or(0)),
                }
                .expect("put");
            }
            d.commit();
            let _ = d.save_incremental();
            (d, user)
        })
        .collect();
    let t0 = Instant::now();
    let mut bytes = 0usize;
    for i in 0..writes {
        let (d, user) = &mut all[i % docs];
        d.put(&*user, "n", (i + 1_000_000) as i64).expect("put");
        let hash = d.commit().expect("a change");
        bytes += d
            .get_change_by_hash(&hash)
            .expect("the change")
            .raw_bytes()
            .len();
        bytes += d.save_incremental().len();
        let mut json = serde_json::Map::new();
        let keys: Vec<String> = d.keys(&*user).collect();
        for k in keys {
            let v = match d.get(&*user, k.as_str()).expect("get") {
                Some((Value::Scalar(s), _)) => match s.as_ref() {
                    ScalarValue::Str(s) => serde_json::Value::from(s.as_str()),
                    ScalarValue::Int(n) => serde_json::Value::from(*n),
                    _ => serde_json::Value::Null,
                },
                _ => serde_json::Value::Null,
            };
            json.insert(k, v);
        }
        bytes += serde_json::to_string(&json).expect("json").len();
    }
    let per = t0.elapsed().as_secs_f64() * 1e6 / writes as f64;
    assert!(bytes > 0);
    per
}

// --- Meridian and the constant handler ----------------------------------------------------------

fn figure(p: &Phase, cpu: f64, secs: u64) -> Figure {
    // the phase's requests: its rate over the measured time, plus the one-second warm-up's
    let requests = p.rps * (secs + 1) as f64;
    Figure {
        rps: p.rps,
        p99_ms: p.p99_ms,
        cpu_us: cpu * 1e6 / requests,
    }
}

async fn run(args: Args) {
    let dir = tempfile::tempdir().expect("temp dir");
    let secs = args.seconds;
    let docs = args.docs;

    // --- Meridian, its documents written once
    let node = Process::start(&dir.path().join("meridian"), &["--node-id", "bench"]);
    let c = meridian_tests::http_client();
    for i in 0..docs {
        let r = c
            .put(node.url(&format!("/v1/users/u{i}")))
            .json(&profile(i))
            .send()
            .await
            .expect("put");
        assert!(r.status().is_success());
    }
    let target = Target::plain(&node.addr);
    let (mut ceiling, ceiling_addr) = start_ceiling(None);
    let ceiling_target = Target::plain(&ceiling_addr);
    let pg = start_postgres(&dir.path().join("pg"), docs);
    let redis = start_redis(&dir.path().join("redis"), docs);
    if pg.is_none() {
        eprintln!(
            "PostgreSQL is not installed (apt-get install postgresql): its phases are left out"
        );
    }
    if redis.is_none() {
        eprintln!("Redis is not installed (apt-get install redis-server): its phases are left out");
    }
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).expect("scratch");
    if unsafe { libc::geteuid() } == 0 {
        let _ = Command::new("chmod").arg("777").arg(&scratch).status();
    }
    let update = "\\set id random(0, 999)\nUPDATE profiles SET doc = jsonb_set(doc, '{n}', to_jsonb(:id::int)) WHERE id = :id;\n"
        .replace("999", &(docs - 1).to_string());
    let select = "\\set id random(0, 999)\nSELECT doc FROM profiles WHERE id = :id;\n"
        .replace("999", &(docs - 1).to_string());

    let mut rows: std::collections::BTreeMap<&str, Vec<Figure>> = Default::default();
    let mut floors = vec![];
    for round in 1..=args.rounds {
        eprintln!("round {round} of {}", args.rounds);
        let cpu0 = node.cpu_secs();
        let p = drive(
            "PATCH",
            &target,
            args.clients,
            Duration::from_secs(secs),
            move |i| {
                Req::patch(
                    format!("/v1/users/u{}", (i * 7919) % docs as u64),
                    format!("{{\"n\":{i}}}"),
                )
            },
        )
        .await;
        assert_eq!(p.errors, 0);
        rows.entry("Meridian PATCH (durable)")
            .or_default()
            .push(figure(&p, node.cpu_secs() - cpu0, secs));
        if let Some(pg) = &pg {
            rows.entry("PostgreSQL UPDATE jsonb_set (durable)")
                .or_default()
                .push(pg.pgbench(&update, args.clients, secs, &scratch));
        }
        let cpu0 = node.cpu_secs();
        let g = drive(
            "GET",
            &target,
            args.clients,
            Duration::from_secs(secs),
            move |i| Req::get(format!("/v1/users/u{}", (i * 7919) % docs as u64)),
        )
        .await;
        assert_eq!(g.errors, 0);
        rows.entry("Meridian GET")
            .or_default()
            .push(figure(&g, node.cpu_secs() - cpu0, secs));
        if let Some(r) = &redis {
            let guess = rows
                .get("Meridian GET")
                .and_then(|v| v.last())
                .map_or(50_000.0, |f| f.rps);
            rows.entry("Redis GET (AOF always)")
                .or_default()
                .push(r.bench(&["GET", "u:__rand_int__"], args.clients, secs, docs, guess));
        }
        if let Some(pg) = &pg {
            rows.entry("PostgreSQL SELECT")
                .or_default()
                .push(pg.pgbench(&select, args.clients, secs, &scratch));
        }
        let cpu0 = cpu_secs(ceiling.id() as i32);
        let k = drive(
            "ceiling",
            &ceiling_target,
            args.clients,
            Duration::from_secs(secs),
            |_| Req::get("/".into()),
        )
        .await;
        rows.entry("constant axum handler GET")
            .or_default()
            .push(figure(&k, cpu_secs(ceiling.id() as i32) - cpu0, secs));
        floors.push(automerge_floor(docs, 20_000));
    }
    let _ = ceiling.kill();

    println!("| phase ({} clients, {} docs, {} s, median of {} rounds) | req/s | p99 | server CPU per request |", args.clients, docs, secs, args.rounds);
    println!("|---|---:|---:|---:|");
    let med = |name: &str| -> Option<Figure> {
        rows.get(name).map(|v| Figure {
            rps: median(v.iter().map(|f| f.rps).collect()),
            p99_ms: median(v.iter().map(|f| f.p99_ms).collect()),
            cpu_us: median(v.iter().map(|f| f.cpu_us).collect()),
        })
    };
    for name in rows.keys() {
        let f = med(name).expect("a row");
        println!(
            "| {name} | {:.0} | {:.1} ms | {:.0} µs |",
            f.rps, f.p99_ms, f.cpu_us
        );
    }
    let floor = median(floors.clone());
    println!("| automerge alone: one write + JSON render, single-threaded | | | {floor:.1} µs |");
    println!();
    let ratio = |a: &str, b: &str| -> Option<String> {
        let (x, y) = (rows.get(a)?, rows.get(b)?);
        let per: Vec<f64> = x.iter().zip(y).map(|(x, y)| x.rps / y.rps).collect();
        Some(format!(
            "{:.2}x (rounds: {})",
            median(per.clone()),
            per.iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    };
    println!("| ratio | figure | target |");
    println!("|---|---:|---:|");
    if let Some(r) = ratio(
        "Meridian PATCH (durable)",
        "PostgreSQL UPDATE jsonb_set (durable)",
    ) {
        println!("| PATCH / PostgreSQL UPDATE | {r} | >= 1.0x |");
    }
    if let Some(r) = ratio("Meridian GET", "Redis GET (AOF always)") {
        println!("| GET / Redis GET | {r} | >= 0.9x |");
    }
    if let Some(r) = ratio("Meridian GET", "PostgreSQL SELECT") {
        println!("| GET / PostgreSQL SELECT | {r} | |");
    }
    if let (Some(p), Some(k)) = (
        med("Meridian PATCH (durable)"),
        med("constant axum handler GET"),
    ) {
        println!(
            "| CPU per PATCH / (automerge floor + constant handler) | {:.2}x ({:.0} / ({floor:.1} + {:.1}) µs) | <= 3x |",
            p.cpu_us / (floor + k.cpu_us),
            p.cpu_us,
            k.cpu_us
        );
    }
    if let (Some(p), Some(q)) = (
        med("Meridian PATCH (durable)"),
        med("PostgreSQL UPDATE jsonb_set (durable)"),
    ) {
        println!(
            "| PATCH p99 / UPDATE p99 | {:.2}x ({:.1} / {:.1} ms) | <= 1.0x |",
            p.p99_ms / q.p99_ms,
            p.p99_ms,
            q.p99_ms
        );
    }
    if let (Some(g), Some(k)) = (med("Meridian GET"), med("constant axum handler GET")) {
        println!(
            "| GET p99 / constant handler p99 | {:.2}x ({:.1} / {:.1} ms) | <= 2x |",
            g.p99_ms / k.p99_ms,
            g.p99_ms,
            k.p99_ms
        );
    }
}
