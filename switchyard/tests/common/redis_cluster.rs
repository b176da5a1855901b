//! A real Redis Cluster (3 primaries, 3 replicas) on loopback, started by
//! `scripts/redis-cluster.sh` — once per test binary and shared by its tests (each test
//! keeps to its own key prefix), torn down by the script's watchdog when the test process
//! exits.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

pub struct RedisCluster {
    /// `redis-cluster://host:port?node=host:port&…`
    pub url: String,
    pub ports: Vec<u16>,
    pub dir: PathBuf,
}

fn script() -> PathBuf {
    super::workspace_root().join("scripts/redis-cluster.sh")
}

/// The binary's cluster, started on first use.
pub fn shared() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start)
}

impl RedisCluster {
    /// A cluster of this test's own, with a small `cluster-node-timeout` (failover tests).
    pub fn start() -> RedisCluster {
        // Kept until the watchdog removes the nodes: not a TempDir, which would go first.
        let dir = std::env::temp_dir().join(format!(
            "switchyard-redis-cluster-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let out = Command::new("bash")
            .arg(script())
            .args(["up", dir.to_str().unwrap(), "--node-timeout", "1000"])
            .args(["--watch", &std::process::id().to_string()])
            .output()
            .expect("run scripts/redis-cluster.sh");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "redis-cluster.sh up failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let value = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(|v| v.trim_matches('"').to_owned())
                .unwrap_or_else(|| panic!("{key} missing in:\n{stdout}"))
        };
        RedisCluster {
            url: value("REDIS_URL"),
            ports: value("REDIS_PORTS")
                .split_whitespace()
                .map(|p| p.parse().unwrap())
                .collect(),
            dir,
        }
    }

    /// `redis-cli -p port args…`; stdout.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// A node that answers.
    pub fn live(&self) -> u16 {
        *self
            .ports
            .iter()
            .find(|p| self.cli(**p, &["ping"]).trim() == "PONG")
            .expect("a live cluster node")
    }

    /// The hash slot of a key or shard channel.
    pub fn keyslot(&self, key: &str) -> u16 {
        self.cli(self.live(), &["cluster", "keyslot", key])
            .trim()
            .parse()
            .unwrap()
    }

    /// The primaries as the cluster sees them now: `(port, slot ranges)`.
    pub fn primaries(&self) -> Vec<(u16, Vec<(u16, u16)>)> {
        let nodes = self.cli(self.live(), &["cluster", "nodes"]);
        nodes
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                let port = fields[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
                let ranges = fields[8..]
                    .iter()
                    .filter(|r| !r.starts_with('['))
                    .map(|r| match r.split_once('-') {
                        Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                        None => (r.parse().unwrap(), r.parse().unwrap()),
                    })
                    .collect();
                (port, ranges)
            })
            .filter(|(_, ranges): &(u16, Vec<(u16, u16)>)| !ranges.is_empty())
            .collect()
    }

    /// The port of the primary owning `key`'s slot (None while none does: a failover).
    pub fn owner(&self, key: &str) -> Option<u16> {
        let slot = self.keyslot(key);
        self.primaries()
            .into_iter()
            .find(|(_, ranges)| ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|(port, _)| port)
    }

    /// The port of the primary owning `slot` (None while none does: a failover).
    pub fn owner_of_slot(&self, slot: u16) -> Option<u16> {
        self.primaries()
            .into_iter()
            .find(|(_, ranges)| ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|(port, _)| port)
    }

    /// Subscribers of a shard channel (`PUBSUB SHARDNUMSUB` on the primary owning it).
    pub fn shardnumsub(&self, channel: &str) -> u64 {
        let owner = self
            .owner(channel)
            .expect("the channel's slot has a primary");
        let out = self.cli(owner, &["pubsub", "shardnumsub", channel]);
        out.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }

    /// SIGKILLs the node on `port` (by the pid file the script wrote).
    pub fn kill(&self, port: u16) {
        let pid_file = self.dir.join(format!("node-{port}.pid"));
        let pid = std::fs::read_to_string(&pid_file).expect("node pid file");
        let status = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::remove_file(&pid_file).unwrap();
    }

    /// The node id of the node on `port`.
    pub fn node_id(&self, port: u16) -> String {
        self.cli(port, &["cluster", "myid"]).trim().to_owned()
    }

    /// Moves hash slot `slot`, with its keys, to the primary on `to` (what a resharding does,
    /// one slot): importing/migrating, `MIGRATE` of its keys, then every primary learns the
    /// new owner.
    pub fn move_slot(&self, slot: u16, to: u16) {
        let from = self
            .primaries()
            .into_iter()
            .find(|(_, ranges)| ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|(port, _)| port)
            .expect("the slot has a primary");
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let slot = slot.to_string();
        let ok = |out: String| assert_eq!(out.trim(), "OK", "{out}");
        ok(self.cli(to, &["cluster", "setslot", &slot, "importing", &from_id]));
        ok(self.cli(from, &["cluster", "setslot", &slot, "migrating", &to_id]));
        loop {
            let keys = self.cli(from, &["cluster", "getkeysinslot", &slot, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let to = to.to_string();
            let mut migrate = vec!["migrate", "127.0.0.1", &to, "", "0", "5000", "keys"];
            migrate.extend(keys);
            ok(self.cli(from, &migrate));
        }
        for (port, _) in self.primaries() {
            ok(self.cli(port, &["cluster", "setslot", &slot, "node", &to_id]));
        }
    }

    pub fn down(&self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["down", self.dir.to_str().unwrap()])
            .status();
    }
}
