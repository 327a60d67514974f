//! Three real `meridian serve` processes (`a`, `b`, `c`) on loopback, a full mesh whose six
//! directed links each run through a [`Proxy`], so tests and the benchmark can cut links and
//! count the bytes between nodes.

use std::collections::HashMap;

use crate::proxy::Proxy;
use crate::Process;

pub const SECRET: &str = "mesh-cluster-secret";
pub const IDS: [&str; 3] = ["a", "b", "c"];

/// Three nodes and the six directed links between them.
#[derive(Debug)]
pub struct Mesh {
    dirs: HashMap<&'static str, tempfile::TempDir>,
    pub nodes: HashMap<&'static str, Process>,
    pub links: HashMap<(&'static str, &'static str), Proxy>,
    extra: Vec<String>,
    /// Arguments a node gets instead of `extra` from its next start on (see [`Mesh::restart`]).
    own: HashMap<&'static str, Vec<String>>,
}

impl Mesh {
    /// Starts the proxies, then the nodes (each with `extra` arguments).
    pub async fn start(extra: &[&str]) -> Mesh {
        let mut links = HashMap::new();
        for from in IDS {
            for to in IDS {
                if from != to {
                    links.insert((from, to), Proxy::start().await);
                }
            }
        }
        let mut m = Mesh {
            dirs: IDS
                .iter()
                .map(|id| (*id, tempfile::tempdir().expect("temp dir")))
                .collect(),
            nodes: HashMap::new(),
            links,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            own: HashMap::new(),
        };
        for id in IDS {
            m.start_node(id);
        }
        m
    }

    /// Starts (or restarts) a node on its data dir and points the links to it at its address.
    pub fn start_node(&mut self, id: &'static str) {
        let mut args = vec![
            "--node-id".to_string(),
            id.to_string(),
            "--region".into(),
            id.into(),
            "--cluster-secret".into(),
            SECRET.into(),
        ];
        args.extend(self.own.get(id).unwrap_or(&self.extra).iter().cloned());
        for to in IDS.iter().filter(|to| **to != id) {
            args.push("--peer".into());
            args.push(format!("{to}={}", self.links[&(id, *to)].url()));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let p = Process::start(self.dirs[id].path(), &args);
        for from in IDS.iter().filter(|from| **from != id) {
            self.links[&(*from, id)].set_target(&p.addr);
        }
        self.nodes.insert(id, p);
    }

    /// Stops a node with SIGTERM (as an operator would), waits for it to exit, and starts it
    /// again on its data dir with `extra` instead of the mesh's arguments (a new binary's
    /// settings, in a rolling upgrade). Returns how it exited.
    pub fn restart(&mut self, id: &'static str, extra: &[&str]) -> std::process::ExitStatus {
        let status = self.nodes.remove(id).expect("a running node").terminate();
        self.own
            .insert(id, extra.iter().map(|s| s.to_string()).collect());
        self.start_node(id);
        status
    }

    /// A node's data dir (stop the node before touching it).
    pub fn data_dir(&self, id: &str) -> &std::path::Path {
        self.dirs[id].path()
    }

    pub fn node(&self, id: &str) -> &Process {
        &self.nodes[id]
    }

    /// Cuts every link between `side` and the other nodes, both ways.
    pub fn partition(&self, side: &str) {
        for ((from, to), proxy) in &self.links {
            if (*from == side) != (*to == side) {
                proxy.cut();
            }
        }
    }

    /// Like [`Mesh::partition`], but silent: packets are dropped, no connection is closed.
    pub fn stall(&self, side: &str) {
        for ((from, to), proxy) in &self.links {
            if (*from == side) != (*to == side) {
                proxy.stall();
            }
        }
    }

    pub fn heal(&self) {
        for proxy in self.links.values() {
            proxy.heal();
        }
    }

    /// Bytes carried between nodes so far (all links, both directions, HTTP included).
    pub fn wire_bytes(&self) -> u64 {
        self.links.values().map(Proxy::bytes).sum()
    }
}
