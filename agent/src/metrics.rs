//! Counters for `GET /metrics` on the local API, in the Prometheus text format. The
//! negotiation loop counts what it sees; the rest (peers by state, refused messages) is
//! read when the metrics are rendered. A handful of counters does not need a metrics
//! library: each is an atomic, and the exposition format is a few lines of text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the negotiation loop counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Replicas this node placed as an owner.
    pub placements: AtomicU64,
    /// Auctions this node ran as an owner that ended without a winner.
    pub failed_auctions: AtomicU64,
    /// Bids this node sent.
    pub bids: AtomicU64,
    /// Awards this node sent as an owner.
    pub awards: AtomicU64,
    /// Replicas this node placed again after their node died.
    pub reauctions: AtomicU64,
    /// Membership statements from other members that did not check (forged, replayed
    /// for another incarnation, or signed with an identity not valid here).
    pub statements_refused: AtomicU64,
    /// Workload records refused: malformed, not signed by their author, or written by a
    /// node the policy does not allow to.
    pub records_refused: AtomicU64,
    /// Declines this node sent, by reason code.
    declines: Mutex<BTreeMap<&'static str, u64>>,
    /// Requests the policy refused, by action.
    denials: Mutex<BTreeMap<&'static str, u64>>,
}

fn bump(counts: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str) {
    *counts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(key)
        .or_insert(0) += 1;
}

fn read(counts: &Mutex<BTreeMap<&'static str, u64>>) -> BTreeMap<&'static str, u64> {
    counts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

impl Metrics {
    /// Counts one decline with reason `code`.
    pub fn decline(&self, code: &'static str) {
        bump(&self.declines, code);
    }

    /// Counts one request the policy refused, by its action.
    pub fn denial(&self, action: &'static str) {
        bump(&self.denials, action);
    }

    /// Adds one to `counter`.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Gauges read at render time.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Workloads stored (owned) on this node.
    pub workloads: u64,
    /// Replicas this node was awarded.
    pub assignments: u64,
    /// Members by state (`alive`, `suspect`, `dead`).
    pub peers: BTreeMap<&'static str, u64>,
    /// Messages and connections refused, by reason.
    pub message_errors: BTreeMap<&'static str, u64>,
}

/// Renders the metrics in the Prometheus text exposition format (version 0.0.4).
pub fn render(metrics: Option<&Metrics>, snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let plain = |value: u64| vec![(String::new(), value)];
    let labelled = |label: &str, values: &BTreeMap<&'static str, u64>| -> Vec<(String, u64)> {
        values
            .iter()
            .map(|(key, value)| (format!("{{{label}=\"{key}\"}}"), *value))
            .collect()
    };
    metric(
        "parley_workloads",
        "gauge",
        "Workloads stored on (owned by) this node.",
        &plain(snapshot.workloads),
    );
    metric(
        "parley_assignments",
        "gauge",
        "Replicas this node was awarded and runs.",
        &plain(snapshot.assignments),
    );
    metric(
        "parley_peers",
        "gauge",
        "Mesh members by state.",
        &labelled("state", &snapshot.peers),
    );
    metric(
        "parley_message_errors_total",
        "counter",
        "Messages and connections refused, by reason.",
        &labelled("kind", &snapshot.message_errors),
    );
    let zero = Metrics::default();
    let m = metrics.unwrap_or(&zero);
    let load = |counter: &AtomicU64| plain(counter.load(Ordering::Relaxed));
    metric(
        "parley_placements_total",
        "counter",
        "Replicas placed by this node as a workload's owner.",
        &load(&m.placements),
    );
    metric(
        "parley_failed_auctions_total",
        "counter",
        "Auctions this node ran that ended without a winner (retried with backoff).",
        &load(&m.failed_auctions),
    );
    metric(
        "parley_membership_statements_refused_total",
        "counter",
        "Members' signed statements refused: forged, replayed, or signed with a bad identity.",
        &load(&m.statements_refused),
    );
    metric(
        "parley_workload_records_refused_total",
        "counter",
        "Workload records refused: malformed, forged, or written by a node not allowed to.",
        &load(&m.records_refused),
    );
    metric(
        "parley_bids_total",
        "counter",
        "Bids this node sent.",
        &load(&m.bids),
    );
    metric(
        "parley_declines_total",
        "counter",
        "Calls for proposals this node declined, by reason.",
        &labelled("reason", &read(&m.declines)),
    );
    metric(
        "parley_policy_denials_total",
        "counter",
        "Requests the authorization policy refused, by action.",
        &labelled("action", &read(&m.denials)),
    );
    metric(
        "parley_awards_total",
        "counter",
        "Awards this node sent as a workload's owner.",
        &load(&m.awards),
    );
    metric(
        "parley_reauctions_total",
        "counter",
        "Replicas placed again because their node died.",
        &load(&m.reauctions),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format_with_labels() {
        let metrics = Metrics::default();
        Metrics::inc(&metrics.bids);
        Metrics::inc(&metrics.bids);
        metrics.decline("insufficient-memory");
        metrics.denial("submit");
        let snapshot = Snapshot {
            workloads: 3,
            peers: [("alive", 2), ("dead", 1)].into(),
            ..Snapshot::default()
        };
        let text = render(Some(&metrics), &snapshot);
        for line in [
            "# TYPE parley_bids_total counter",
            "parley_bids_total 2",
            "parley_declines_total{reason=\"insufficient-memory\"} 1",
            "parley_peers{state=\"alive\"} 2",
            "parley_policy_denials_total{action=\"submit\"} 1",
            "parley_peers{state=\"dead\"} 1",
            "parley_workloads 3",
            "parley_placements_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }
}
