//! [`TestCluster`]: a real Redis Cluster of [`TestServer`]s, for failover and slot tests;
//! [`TestClusterBuilder`] for its options. How the nodes are joined and inspected is in
//! `cluster/nodes.rs`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use asdlc_runtime::config::RedisUrl;

use crate::error::{TestClusterError, TestServerError};
use crate::ports::{release_port, reserve_port};
use crate::process::kill_and_reap;
use crate::server::TestServer;

mod nodes;

/// How long [`TestCluster`] waits for the cluster to form, or to fail over, by default.
pub const DEFAULT_CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

/// Options for a [`TestCluster`]; from [`TestCluster::builder`].
#[derive(Debug, Clone)]
pub struct TestClusterBuilder {
    masters: usize,
    replicas: usize,
    node_timeout: Duration,
    aof: bool,
    args: Vec<(String, String)>,
    binary: Option<PathBuf>,
    timeout: Duration,
}

impl Default for TestClusterBuilder {
    fn default() -> Self {
        TestClusterBuilder {
            masters: 3,
            replicas: 1,
            node_timeout: Duration::from_millis(1000),
            aof: false,
            args: Vec::new(),
            binary: None,
            timeout: DEFAULT_CLUSTER_TIMEOUT,
        }
    }
}

impl TestClusterBuilder {
    /// How many masters share the 16384 slots (default 3; at least 1).
    pub fn masters(mut self, masters: usize) -> Self {
        self.masters = masters;
        self
    }

    /// How many replicas each master has (default 1).
    pub fn replicas_per_master(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// `cluster-node-timeout` (default 1 s): how long a silent master takes to be declared
    /// failed, and so roughly how long an automatic failover takes (about twice this).
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// Whether each node keeps an append-only file fsynced on every write (default `false`:
    /// the replicas are the cluster's copy, as in most deployments).
    pub fn aof(mut self, aof: bool) -> Self {
        self.aof = aof;
        self
    }

    /// Passes an extra option to every node.
    pub fn arg(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.args.push((name.into(), value.into()));
        self
    }

    /// Uses this server binary instead of [`server_binary`](crate::server_binary).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// How long to wait for the cluster to form (default [`DEFAULT_CLUSTER_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Starts the cluster, panicking with the reason if it cannot.
    #[track_caller]
    pub fn start(self) -> TestCluster {
        match self.try_start() {
            Ok(cluster) => cluster,
            Err(e) => panic!("cannot start a test Redis Cluster: {e}"),
        }
    }

    /// Starts every node, assigns the slots to the masters, joins the nodes, attaches the
    /// replicas, and waits until every node reports `cluster_state:ok` and every replica is
    /// in sync.
    pub fn try_start(self) -> Result<TestCluster, TestClusterError> {
        if self.masters == 0 || self.masters > 100 {
            return Err(TestClusterError::Invalid(
                "a test cluster needs 1 to 100 masters".to_owned(),
            ));
        }
        let total = self.masters * (1 + self.replicas);
        let mut nodes = Vec::with_capacity(total);
        for index in 0..total {
            let bus = BusPort(reserve_port().map_err(|source| TestClusterError::Server {
                node: index,
                source: Box::new(TestServerError::NoPort { source }),
            })?);
            let mut builder = TestServer::builder()
                .aof(self.aof)
                .arg("--cluster-enabled", "yes")
                .arg("--cluster-config-file", "nodes.conf")
                .arg("--cluster-port", bus.0.to_string())
                .arg(
                    "--cluster-node-timeout",
                    self.node_timeout.as_millis().to_string(),
                )
                .arg("--cluster-replica-validity-factor", "0")
                .arg("--repl-diskless-sync-delay", "0")
                .ready_timeout(self.timeout);
            for (name, value) in &self.args {
                builder = builder.arg(name, value);
            }
            if let Some(binary) = &self.binary {
                builder = builder.binary(binary);
            }
            let server = builder
                .try_start()
                .map_err(|source| TestClusterError::Server {
                    node: index,
                    source: Box::new(source),
                })?;
            nodes.push(ClusterNode {
                server,
                bus,
                id: String::new(),
            });
        }
        let cluster = TestCluster {
            nodes,
            masters: self.masters,
            timeout: self.timeout,
            watchdog: None,
        };
        cluster.form()
    }
}

/// A bus port reserved for a node while it lives.
#[derive(Debug)]
struct BusPort(u16);

impl Drop for BusPort {
    fn drop(&mut self) {
        release_port(self.0);
    }
}

#[derive(Debug)]
struct ClusterNode {
    server: TestServer,
    bus: BusPort,
    id: String,
}

/// A real Redis Cluster of child processes on loopback ports, started from the same binary as
/// [`TestServer`]: by default 3 masters, each with 1 replica, slots split evenly, a 1 s node
/// timeout so an automatic failover takes a couple of seconds. Every node is killed when the
/// cluster is dropped.
///
/// Nodes are numbered from 0; at the start nodes `0..masters` are the masters and node
/// `masters + i` replicates master `i % masters`. After a failover the roles change: ask
/// [`master_of_slot`](Self::master_of_slot) and [`replica_of`](Self::replica_of).
///
/// ```no_run
/// use asdlc_testing::TestCluster;
/// use asdlc_runtime::keys::hash_slot;
///
/// let mut cluster = TestCluster::start();
/// let url = cluster.redis_url(); // redis+cluster://127.0.0.1:P0,127.0.0.1:P1,127.0.0.1:P2
/// let killed = cluster.kill_master_of_slot(hash_slot(b"tenant:{acme}:asdlc:events"));
/// let promoted = cluster.wait_for_failover(killed).unwrap();
/// assert_ne!(killed, promoted);
/// ```
///
/// The methods that wait (start, failover, restart) block the calling thread; from async code
/// use a multi-threaded runtime with `tokio::task::block_in_place`, or `spawn_blocking`.
#[derive(Debug)]
pub struct TestCluster {
    nodes: Vec<ClusterNode>,
    masters: usize,
    timeout: Duration,
    /// Kills the nodes if this process exits without dropping the cluster (a static, a
    /// `process::exit`, a `SIGKILL`): see [`TestCluster::shared`].
    watchdog: Option<Child>,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // The watchdog goes first: closing its pipe would make it kill the nodes itself.
        if let Some(mut watchdog) = self.watchdog.take() {
            kill_and_reap(&mut watchdog);
        }
    }
}

impl TestCluster {
    /// Starts a cluster with the defaults (3 masters, 1 replica each), panicking with the
    /// reason if it cannot.
    #[track_caller]
    pub fn start() -> TestCluster {
        TestClusterBuilder::default().start()
    }

    /// Starts a cluster with the defaults.
    pub fn try_start() -> Result<TestCluster, TestClusterError> {
        TestClusterBuilder::default().try_start()
    }

    /// Options: masters, replicas, node timeout, binary, extra arguments.
    pub fn builder() -> TestClusterBuilder {
        TestClusterBuilder::default()
    }

    /// The cluster URL naming the initial masters as seeds:
    /// `redis+cluster://127.0.0.1:P0,127.0.0.1:P1,...`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes[..self.masters]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.server.port()))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// [`url`](Self::url) as a [`RedisUrl`], for a [`Config`](asdlc_runtime::Config).
    pub fn redis_url(&self) -> RedisUrl {
        RedisUrl::parse(self.url()).expect("a loopback cluster URL is valid")
    }

    /// The `redis://` URLs of the initial masters (seed nodes).
    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes[..self.masters]
            .iter()
            .map(|n| n.server.url())
            .collect()
    }

    /// How many nodes the cluster has (masters and replicas).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// How many masters it was started with.
    pub fn master_count(&self) -> usize {
        self.masters
    }

    /// The `redis://` URL of node `node`.
    pub fn node_url(&self, node: usize) -> String {
        self.nodes[node].server.url()
    }

    /// The cluster id of node `node`.
    pub fn node_id(&self, node: usize) -> &str {
        &self.nodes[node].id
    }

    /// A client for node `node` alone (it answers `MOVED` for slots it does not serve).
    pub fn node_client(&self, node: usize) -> redis::Client {
        self.nodes[node].server.client()
    }

    /// The test server behind node `node`, for its log and data directory.
    pub fn node(&self, node: usize) -> &TestServer {
        &self.nodes[node].server
    }

    /// Whether node `node` is running.
    pub fn is_running(&mut self, node: usize) -> bool {
        self.nodes[node].server.is_running()
    }

    /// The node that serves `slot` now, as a live node sees it.
    pub fn master_of_slot(&self, slot: u16) -> Result<usize, TestClusterError> {
        let view = self.any_view()?;
        view.iter()
            .find(|l| l.has("master") && !l.has("fail") && l.serves(slot))
            .and_then(|l| self.index_of(&l.id))
            .ok_or_else(|| TestClusterError::Invalid(format!("no live master serves slot {slot}")))
    }

    /// A live replica of master `node`, if it has one.
    pub fn replica_of(&mut self, node: usize) -> Result<Option<usize>, TestClusterError> {
        let master_id = self.nodes[node].id.clone();
        let view = self.any_view()?;
        let replica = view
            .iter()
            .filter(|l| l.master_id.as_deref() == Some(&master_id) && !l.has("fail"))
            .find_map(|l| self.index_of(&l.id));
        Ok(replica.filter(|r| self.nodes[*r].server.is_running()))
    }

    /// Kills node `node` with `SIGKILL`, as a crash would. Its data directory (and its
    /// `nodes.conf`) is kept for [`restart_node`](Self::restart_node).
    pub fn kill_node(&mut self, node: usize) {
        self.nodes[node].server.kill();
    }

    /// Kills the master serving `slot` and returns its index. Its replica takes over after
    /// about two node timeouts: [`wait_for_failover`](Self::wait_for_failover).
    pub fn kill_master_of_slot(&mut self, slot: u16) -> usize {
        let master = self
            .master_of_slot(slot)
            .unwrap_or_else(|e| panic!("cannot find the master of slot {slot}: {e}"));
        self.kill_node(master);
        master
    }

    /// Kills master `node` (an index) and returns it; see
    /// [`wait_for_failover`](Self::wait_for_failover).
    pub fn kill_master(&mut self, node: usize) -> usize {
        self.kill_node(node);
        node
    }

    /// Waits until the slots of the dead master `killed` are served by another (promoted)
    /// node and every live node reports `cluster_state:ok`; returns the new master's index.
    pub fn wait_for_failover(&mut self, killed: usize) -> Result<usize, TestClusterError> {
        let killed_id = self.nodes[killed].id.clone();
        let slots = self
            .initial_slots(killed)
            .or_else(|| {
                self.any_view().ok().and_then(|v| {
                    v.iter()
                        .find(|l| l.id == killed_id)
                        .and_then(|l| l.slots.first().copied())
                })
            })
            .map(|(a, _)| a);
        let deadline = Instant::now() + self.timeout;
        loop {
            let last = match self.failover_done(&killed_id, slots) {
                Ok(Some(index)) => return Ok(index),
                Ok(None) => "the slots are not served by a new master yet".to_owned(),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(TestClusterError::Timeout {
                    what: format!("failed over from node {killed}"),
                    waited: self.timeout,
                    last,
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// A graceful failover: replica `replica` takes over from its master (`CLUSTER FAILOVER`),
    /// after catching up with it, so no acknowledged write is lost. Waits until every live node
    /// sees it as a master and reports `cluster_state:ok`.
    pub fn failover(&mut self, replica: usize) -> Result<(), TestClusterError> {
        self.run(replica, redis::cmd("CLUSTER").arg("FAILOVER"))?;
        let id = self.nodes[replica].id.clone();
        self.wait_until("failed over gracefully", |this| {
            for node in this.live_nodes() {
                let view = this.view(node)?;
                if !view.iter().any(|l| l.id == id && l.has("master")) {
                    return Ok(Some(format!("node {node} does not see the new master yet")));
                }
                if let Some(why) = this.not_ok(node)? {
                    return Ok(Some(why));
                }
            }
            Ok(None)
        })
    }

    /// Starts a killed or stopped node again on its port and data directory. A former master
    /// whose slots were taken over rejoins as a replica. Waits until every live node reports
    /// `cluster_state:ok` and the node's replication link (if it is a replica) is up.
    pub fn restart_node(&mut self, node: usize) -> Result<(), TestClusterError> {
        self.nodes[node]
            .server
            .try_restart()
            .map_err(|source| TestClusterError::Server {
                node,
                source: Box::new(source),
            })?;
        self.wait_until("healthy after a restart", |this| {
            for n in this.live_nodes() {
                if let Some(why) = this.not_ok(n)? {
                    return Ok(Some(why));
                }
                let view = this.view(n)?;
                if view.iter().any(|l| l.has("fail") || l.has("fail?")) {
                    return Ok(Some(format!("node {n} still sees a failed node")));
                }
            }
            this.replica_synced(node)
        })?;
        self.arm_watchdog();
        Ok(())
    }

    /// Moves `slot` to master `to` while clients keep using it, as `redis-cli --cluster
    /// reshard` does: marks it importing on `to` and migrating on its owner, moves its keys
    /// with `MIGRATE` until none are left, keeps it in that state for `hold` (every command
    /// for the slot is then answered with an `ASK` redirection to `to`), and finally assigns
    /// it to `to` on every master (`MOVED` from then on).
    pub fn migrate_slot(
        &mut self,
        slot: u16,
        to: usize,
        hold: Duration,
    ) -> Result<(), TestClusterError> {
        let from = self.master_of_slot(slot)?;
        if from == to {
            return Ok(());
        }
        let (from_id, to_id) = (self.nodes[from].id.clone(), self.nodes[to].id.clone());
        let setslot = |state: &str, id: &str| {
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(state)
                .arg(id)
                .clone()
        };
        self.run(to, &setslot("IMPORTING", &from_id))?;
        self.run(from, &setslot("MIGRATING", &to_id))?;
        let to_port = self.nodes[to].server.port();
        loop {
            let keys: Vec<Vec<u8>> = redis::from_redis_value(
                self.run(
                    from,
                    redis::cmd("CLUSTER")
                        .arg("GETKEYSINSLOT")
                        .arg(slot)
                        .arg(1000),
                )?,
            )
            .map_err(|e| TestClusterError::Invalid(format!("GETKEYSINSLOT: {e}")))?;
            if keys.is_empty() {
                break;
            }
            self.run(
                from,
                redis::cmd("MIGRATE")
                    .arg("127.0.0.1")
                    .arg(to_port)
                    .arg("")
                    .arg(0)
                    .arg(5000)
                    .arg("KEYS")
                    .arg(keys),
            )?;
        }
        thread::sleep(hold);
        let mut order = vec![to, from];
        order.extend((0..self.nodes.len()).filter(|n| *n != to && *n != from));
        for node in order {
            if !self.nodes[node].server.is_running() {
                continue;
            }
            let is_master = self
                .view(node)?
                .iter()
                .any(|l| l.has("myself") && l.has("master"));
            if is_master {
                self.run(node, &setslot("NODE", &to_id))?;
            }
        }
        self.wait_until("agreed on the moved slot", |this| {
            for node in this.live_nodes() {
                let view = this.view(node)?;
                if !view.iter().any(|l| l.id == to_id && l.serves(slot)) {
                    return Ok(Some(format!(
                        "node {node} does not see slot {slot} moved yet"
                    )));
                }
            }
            Ok(None)
        })
    }

    /// A cluster shared by every test of this process that asks for it, started by the first
    /// call (3 masters, 1 replica each). Starting a cluster takes about two seconds (a master
    /// waits that long before it serves), so tests that only read and write their own keys
    /// share one; tests that kill or move nodes start their own.
    ///
    /// Statics are never dropped, so the nodes are watched by a small shell process that
    /// kills them, and deletes their directories, when this process exits in any way.
    #[track_caller]
    pub fn shared() -> &'static TestCluster {
        static SHARED: std::sync::OnceLock<TestCluster> = std::sync::OnceLock::new();
        SHARED.get_or_init(TestCluster::start)
    }

    /// (Re)starts the watchdog: `sh` reading a pipe this process holds; when the pipe closes
    /// (this process is gone) it kills the nodes and removes their directories.
    fn arm_watchdog(&mut self) {
        if let Some(mut old) = self.watchdog.take() {
            kill_and_reap(&mut old);
        }
        let mut args: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| n.server.child.as_ref().map(|c| c.id().to_string()))
            .collect();
        args.extend(
            self.nodes
                .iter()
                .map(|n| n.server.dir.path().display().to_string()),
        );
        let script = "cat >/dev/null; for a in \"$@\"; do case \"$a\" in \
                      /*) rm -rf \"$a\" ;; *) kill -9 \"$a\" 2>/dev/null ;; esac; done";
        self.watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("asdlc-cluster-watchdog")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
    }
}
