//! Questions this node asked other nodes on behalf of its users, waiting for answers: a
//! `ListMesh` fan-out collecting members' workload reports, and log reads routed to the
//! node running a replica. Each has a deadline, so the tables stay bounded even when
//! peers never answer.

use std::collections::{BTreeMap, BTreeSet};

use crate::messages::{LogChunk, LogsFailure, OwnedWorkload};

/// Most questions of each kind waiting at once; beyond it the oldest is answered with
/// what it has (a user polling in a loop must not grow the table without end).
pub const MAX_PENDING: usize = 256;

/// A `ListMesh` waiting for members' reports.
#[derive(Debug)]
pub struct PendingList {
    /// The token of the request it answers.
    pub token: u64,
    /// Members that have not answered yet.
    pub waiting: BTreeSet<String>,
    /// (owner, workload) pairs so far.
    pub collected: Vec<(String, OwnedWorkload)>,
    /// When it is answered with what it has.
    pub deadline_ms: u64,
}

/// A log read asked of another node.
#[derive(Debug)]
pub struct PendingLogs {
    /// The token of the request it answers.
    pub token: u64,
    /// The node asked: only its reply counts.
    pub node: String,
    /// When it is given up.
    pub deadline_ms: u64,
}

/// The questions in flight, by the request id sent on the wire.
#[derive(Debug, Default)]
pub struct Queries {
    next_request: u64,
    lists: BTreeMap<u64, PendingList>,
    logs: BTreeMap<u64, PendingLogs>,
}

/// A question finished: its token and its answer.
pub enum Finished {
    /// A list, complete or cut short.
    List(u64, Vec<(String, OwnedWorkload)>),
    /// A log read answered, refused or given up.
    Logs(u64, Result<LogChunk, LogsFailure>),
}

impl Queries {
    /// A request id not used before by this node's run.
    pub fn next_request(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    /// Starts waiting for `list`, sent as `request`; returns a list cut short to make
    /// room, if the table was full.
    pub fn wait_list(&mut self, request: u64, list: PendingList) -> Option<Finished> {
        let evicted = (self.lists.len() >= MAX_PENDING)
            .then(|| self.lists.pop_first())
            .flatten()
            .map(|(_, old)| Finished::List(old.token, old.collected));
        self.lists.insert(request, list);
        evicted
    }

    /// Starts waiting for a log reply to `request`; returns a read given up to make room.
    pub fn wait_logs(&mut self, request: u64, logs: PendingLogs) -> Option<Finished> {
        let evicted = (self.logs.len() >= MAX_PENDING)
            .then(|| self.logs.pop_first())
            .flatten()
            .map(|(_, old)| Finished::Logs(old.token, Err(gave_up())));
        self.logs.insert(request, logs);
        evicted
    }

    /// A member's report for `request`: counted once per member asked.
    pub fn report(
        &mut self,
        from: &str,
        request: u64,
        workloads: Vec<OwnedWorkload>,
    ) -> Option<Finished> {
        let list = self.lists.get_mut(&request)?;
        if !list.waiting.remove(from) {
            return None;
        }
        list.collected
            .extend(workloads.into_iter().map(|w| (from.to_owned(), w)));
        if !list.waiting.is_empty() {
            return None;
        }
        let list = self.lists.remove(&request)?;
        Some(Finished::List(list.token, list.collected))
    }

    /// A log reply for `request`, accepted only from the node asked.
    pub fn logs_reply(
        &mut self,
        from: &str,
        request: u64,
        result: Result<LogChunk, LogsFailure>,
    ) -> Option<Finished> {
        if self.logs.get(&request)?.node != from {
            return None;
        }
        let logs = self.logs.remove(&request)?;
        Some(Finished::Logs(logs.token, result))
    }

    /// The questions whose deadline passed, answered with what they have.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Finished> {
        let mut finished = Vec::new();
        self.lists.retain(|_, list| {
            let keep = list.deadline_ms > now_ms;
            if !keep {
                finished.push(Finished::List(
                    list.token,
                    std::mem::take(&mut list.collected),
                ));
            }
            keep
        });
        self.logs.retain(|_, logs| {
            let keep = logs.deadline_ms > now_ms;
            if !keep {
                finished.push(Finished::Logs(logs.token, Err(gave_up())));
            }
            keep
        });
        finished
    }

    /// The earliest deadline.
    pub fn poll_timeout(&self) -> Option<u64> {
        let lists = self.lists.values().map(|l| l.deadline_ms);
        let logs = self.logs.values().map(|l| l.deadline_ms);
        lists.chain(logs).min()
    }
}

fn gave_up() -> LogsFailure {
    LogsFailure {
        denied: false,
        message: format!("no answer within {}s", super::LOGS_TIMEOUT_MS / 1_000),
    }
}
