//! Asking the nodes of a [`TestCluster`]: `CLUSTER NODES` lines, state checks, waiting for a
//! state, and forming the cluster in the first place.

use std::thread;
use std::time::{Duration, Instant};

use super::TestCluster;
use crate::error::TestClusterError;

/// What one node says about one node of the cluster (a line of `CLUSTER NODES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NodeLine {
    pub(super) id: String,
    pub(super) port: u16,
    pub(super) flags: Vec<String>,
    pub(super) master_id: Option<String>,
    pub(super) slots: Vec<(u16, u16)>,
}

impl NodeLine {
    pub(super) fn parse(line: &str) -> Option<NodeLine> {
        let mut parts = line.split_whitespace();
        let id = parts.next()?.to_owned();
        let addr = parts.next()?;
        let port = addr
            .split('@')
            .next()?
            .rsplit(':')
            .next()?
            .parse()
            .unwrap_or(0);
        let flags = parts.next()?.split(',').map(str::to_owned).collect();
        let master = parts.next()?;
        let master_id = (master != "-").then(|| master.to_owned());
        let slots = parts
            .skip(4)
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => {
                    let n = s.parse().ok()?;
                    Some((n, n))
                }
            })
            .collect();
        Some(NodeLine {
            id,
            port,
            flags,
            master_id,
            slots,
        })
    }

    pub(super) fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    pub(super) fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }
}

impl TestCluster {
    pub(super) fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    pub(super) fn initial_slots(&self, node: usize) -> Option<(u16, u16)> {
        (node < self.masters).then(|| slot_range(node, self.masters))
    }

    pub(super) fn live_nodes(&mut self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].server.is_running())
            .collect()
    }

    pub(super) fn run(
        &self,
        node: usize,
        cmd: &redis::Cmd,
    ) -> Result<redis::Value, TestClusterError> {
        let server = &self.nodes[node].server;
        let fail = |source| TestClusterError::Command {
            node,
            port: server.port(),
            command: describe_cmd(cmd),
            source,
        };
        let mut con = server
            .client()
            .get_connection_with_timeout(Duration::from_secs(2))
            .map_err(fail)?;
        con.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(fail)?;
        cmd.query(&mut con).map_err(fail)
    }

    pub(super) fn text(&self, node: usize, cmd: &redis::Cmd) -> Result<String, TestClusterError> {
        let value = self.run(node, cmd)?;
        redis::from_redis_value::<String>(value).map_err(|e| TestClusterError::Command {
            node,
            port: self.nodes[node].server.port(),
            command: describe_cmd(cmd),
            source: e.into(),
        })
    }

    pub(super) fn view(&self, node: usize) -> Result<Vec<NodeLine>, TestClusterError> {
        let text = self.text(node, redis::cmd("CLUSTER").arg("NODES"))?;
        Ok(text.lines().filter_map(NodeLine::parse).collect())
    }

    pub(super) fn any_view(&self) -> Result<Vec<NodeLine>, TestClusterError> {
        let mut last = None;
        for node in 0..self.nodes.len() {
            match self.view(node) {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| TestClusterError::Invalid("no node is running".to_owned())))
    }

    /// `None` if `node` reports `cluster_state:ok`, else what it reports.
    pub(super) fn not_ok(&self, node: usize) -> Result<Option<String>, TestClusterError> {
        let info = self.text(node, redis::cmd("CLUSTER").arg("INFO"))?;
        if info.lines().any(|l| l.trim() == "cluster_state:ok") {
            Ok(None)
        } else {
            let state = info
                .lines()
                .find(|l| l.starts_with("cluster_state"))
                .unwrap_or("no cluster_state");
            Ok(Some(format!("node {node}: {}", state.trim())))
        }
    }

    /// `None` if `node` is a master or a replica whose link to its master is up.
    pub(super) fn replica_synced(&self, node: usize) -> Result<Option<String>, TestClusterError> {
        let info = self.text(node, redis::cmd("INFO").arg("replication"))?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
                .map(str::to_owned)
        };
        if field("role").as_deref() == Some("master") {
            return Ok(None);
        }
        if field("master_link_status").as_deref() == Some("up")
            && field("master_sync_in_progress").as_deref() != Some("1")
        {
            return Ok(None);
        }
        Ok(Some(format!("replica {node} is not in sync yet")))
    }

    pub(super) fn failover_done(
        &mut self,
        killed_id: &str,
        slot: Option<u16>,
    ) -> Result<Option<usize>, TestClusterError> {
        let mut promoted = None;
        for node in self.live_nodes() {
            if self.not_ok(node)?.is_some() {
                return Ok(None);
            }
            let view = self.view(node)?;
            let server = view.iter().find(|l| {
                l.id != killed_id && l.has("master") && slot.is_some_and(|s| l.serves(s))
            });
            let Some(server) = server else {
                return Ok(None);
            };
            match (promoted, self.index_of(&server.id)) {
                (None, Some(i)) => promoted = Some(i),
                (Some(p), Some(i)) if p == i => {}
                _ => return Ok(None),
            }
        }
        Ok(promoted)
    }

    /// Polls `check` (which returns why the cluster is not there yet, or `None`) until it
    /// passes or the timeout is over.
    pub(super) fn wait_until(
        &mut self,
        what: &str,
        mut check: impl FnMut(&mut Self) -> Result<Option<String>, TestClusterError>,
    ) -> Result<(), TestClusterError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let last = match check(self) {
                Ok(None) => return Ok(()),
                Ok(Some(why)) => why,
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(TestClusterError::Timeout {
                    what: what.to_owned(),
                    waited: self.timeout,
                    last,
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Assigns slots, joins the nodes, attaches the replicas, and waits for a healthy cluster.
    pub(super) fn form(mut self) -> Result<TestCluster, TestClusterError> {
        for i in 0..self.nodes.len() {
            let id = self.text(i, redis::cmd("CLUSTER").arg("MYID"))?;
            self.nodes[i].id = id;
            // Distinct epochs from the start spare the nodes a round of epoch collisions.
            self.run(
                i,
                redis::cmd("CLUSTER")
                    .arg("SET-CONFIG-EPOCH")
                    .arg(i as u64 + 1),
            )?;
        }
        for m in 0..self.masters {
            let (first, last) = slot_range(m, self.masters);
            self.run(
                m,
                redis::cmd("CLUSTER")
                    .arg("ADDSLOTSRANGE")
                    .arg(first)
                    .arg(last),
            )?;
        }
        for i in 1..self.nodes.len() {
            let (port, bus) = (self.nodes[i].server.port(), self.nodes[i].bus.0);
            self.run(
                0,
                redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    .arg(port)
                    .arg(bus),
            )?;
        }
        let total = self.nodes.len();
        self.wait_until("joined", |this| {
            for n in 0..total {
                let view = this.view(n)?;
                let known = view
                    .iter()
                    .filter(|l| !l.has("handshake") && !l.has("noaddr"))
                    .count();
                if known < total {
                    return Ok(Some(format!("node {n} knows {known} of {total} nodes")));
                }
            }
            Ok(None)
        })?;
        for r in self.masters..total {
            let master_id = self.nodes[(r - self.masters) % self.masters].id.clone();
            self.run(r, redis::cmd("CLUSTER").arg("REPLICATE").arg(&master_id))?;
        }
        let masters = self.masters;
        self.wait_until("healthy", |this| {
            for n in 0..total {
                if let Some(why) = this.not_ok(n)? {
                    return Ok(Some(why));
                }
                let view = this.view(n)?;
                for r in masters..total {
                    let want = &this.nodes[(r - masters) % masters].id;
                    let id = &this.nodes[r].id;
                    if !view
                        .iter()
                        .any(|l| l.id == *id && l.master_id.as_ref() == Some(want))
                    {
                        return Ok(Some(format!("node {n} does not see replica {r} yet")));
                    }
                }
                if let Some(why) = this.replica_synced(n)? {
                    return Ok(Some(why));
                }
            }
            Ok(None)
        })?;
        self.arm_watchdog();
        Ok(self)
    }
}

/// The slots of master `m` of `masters`: an even split of 0..=16383.
pub(super) fn slot_range(m: usize, masters: usize) -> (u16, u16) {
    let first = m * 16384 / masters;
    let last = (m + 1) * 16384 / masters - 1;
    (first as u16, last as u16)
}

pub(super) fn describe_cmd(cmd: &redis::Cmd) -> String {
    cmd.args_iter()
        .map(|a| match a {
            redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
            _ => "?".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod cluster_tests {
    use super::*;

    #[test]
    fn slots_are_split_evenly_and_completely() {
        for masters in 1..=5 {
            let mut next = 0u32;
            for m in 0..masters {
                let (a, b) = slot_range(m, masters);
                assert_eq!(u32::from(a), next);
                next = u32::from(b) + 1;
            }
            assert_eq!(next, 16384);
        }
    }

    #[test]
    fn cluster_nodes_lines_parse() {
        let line = "07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,host slave \
                    e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected";
        let l = NodeLine::parse(line).unwrap();
        assert_eq!(l.port, 30004);
        assert!(l.has("slave"));
        assert_eq!(
            l.master_id.as_deref(),
            Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca")
        );
        let line = "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - \
                    0 0 1 connected 0-5460 6000 [5461->-abc]";
        let l = NodeLine::parse(line).unwrap();
        assert_eq!(l.slots, vec![(0, 5460), (6000, 6000)]);
        assert!(l.serves(17 - 17) && l.serves(6000) && !l.serves(5461));
    }
}
