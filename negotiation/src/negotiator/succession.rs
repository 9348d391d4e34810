//! Who owns each workload this node knows of, in this node's view of the mesh: the node it
//! was submitted to while that node is alive, otherwise a deterministic successor (the
//! rendezvous hash of the workload over the members not known dead,
//! [`crate::ownership`]). Every node with the same view reaches the same
//! answer, so the nodes running a dead owner's replicas report to the same successor,
//! and that successor takes the workload over.
//!
//! A node knows a workload when it owns it, runs one of its replicas (the award carried
//! the spec), or was handed it by a node that runs one. Only this last path reaches a
//! successor that ran nothing of the workload, which is why the nodes running replicas
//! hand the workload to the successor they compute (again every [`HANDOVER_REPEAT_MS`],
//! in case the successor's view lagged and it let the first pass).

use std::collections::BTreeMap;

use crate::ownership;
use crate::workload::WorkloadSpec;

/// How often a node running a replica repeats its handover while the owner is a
/// successor.
pub const HANDOVER_REPEAT_MS: u64 = 10_000;

/// How long a workload learned only from a handover is remembered without being owned.
pub const HANDOVER_MEMORY_MS: u64 = 30_000;

/// What the node must do to follow its view of ownership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Report this workload's replicas to `owner`.
    SetOwner {
        /// Workload key.
        workload: String,
        /// Its owner in this node's view.
        owner: String,
    },
    /// Take the workload over: this node is the successor of its dead submitter.
    Adopt {
        /// Workload key.
        workload: String,
        /// The node it was submitted to.
        submitter: String,
        /// The workload.
        spec: Box<WorkloadSpec>,
    },
    /// Give the workload back: its submitter is alive again.
    Relinquish {
        /// Workload key.
        workload: String,
    },
    /// Tell the successor it owns the workload now.
    Handover {
        /// The successor.
        to: String,
        /// Workload key.
        workload: String,
        /// The node it was submitted to.
        submitter: String,
        /// The workload.
        spec: Box<WorkloadSpec>,
    },
}

#[derive(Debug)]
struct Known {
    submitter: String,
    spec: WorkloadSpec,
    /// When it was learned from a handover, if that is the only way this node knows it.
    handed_to_us_ms: Option<u64>,
    /// The successor this node last handed it to, and when.
    handed_over: Option<(String, u64)>,
}

/// The workloads this node knows of and their submitters.
#[derive(Debug)]
pub struct Succession {
    id: String,
    known: BTreeMap<String, Known>,
}

impl Succession {
    /// Knowledge of node `id`.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            known: BTreeMap::new(),
        }
    }

    /// Remembers `workload`, submitted to `submitter`. `handover_at_ms` is set when a
    /// handover is the source (such knowledge is forgotten unless acted on).
    pub fn learn(
        &mut self,
        workload: &str,
        submitter: &str,
        spec: &WorkloadSpec,
        handover_at_ms: Option<u64>,
    ) {
        let known = self
            .known
            .entry(workload.to_owned())
            .or_insert_with(|| Known {
                submitter: submitter.to_owned(),
                spec: spec.clone(),
                handed_to_us_ms: handover_at_ms,
                handed_over: None,
            });
        if handover_at_ms.is_none() {
            known.handed_to_us_ms = None;
        }
    }

    /// Replaces what is known of `workload` with a newer record of it.
    pub fn update(&mut self, workload: &str, submitter: &str, spec: &WorkloadSpec) {
        let known = self
            .known
            .entry(workload.to_owned())
            .or_insert_with(|| Known {
                submitter: submitter.to_owned(),
                spec: spec.clone(),
                handed_to_us_ms: None,
                handed_over: None,
            });
        known.submitter = submitter.to_owned();
        known.spec = spec.clone();
        known.handed_to_us_ms = None;
    }

    /// The node `workload` was submitted to, if this node knows the workload.
    pub fn submitter(&self, workload: &str) -> Option<&str> {
        self.known.get(workload).map(|k| k.submitter.as_str())
    }

    /// Forgets a removed workload.
    pub fn forget(&mut self, workload: &str) {
        self.known.remove(workload);
    }

    /// The owner of `workload` in the view `alive` (members not known dead, this node
    /// included), if this node knows the workload.
    #[cfg(test)]
    pub fn owner<'a>(&'a self, workload: &str, alive: &[&'a str]) -> Option<&'a str> {
        let known = self.known.get(workload)?;
        ownership::owner(workload, known.submitter.as_str(), alive)
    }

    /// The steps that bring this node in line with the view `alive` (members not known
    /// dead, this node included). `owns` says whether this node's announcer owns a
    /// workload; `holds`, whether it runs one of its replicas.
    pub fn decide(
        &mut self,
        now_ms: u64,
        alive: &[&str],
        owns: impl Fn(&str) -> bool,
        holds: impl Fn(&str) -> bool,
    ) -> Vec<Step> {
        self.decide_with(
            now_ms,
            |id| alive.contains(&id),
            || alive.iter().map(|id| (*id).to_owned()).collect(),
            |_, _| true,
            owns,
            holds,
            |_| false,
        )
    }

    /// Whether this node knows no workload at all (then there is nothing to decide).
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// Whether this node knows `workload`.
    pub fn knows(&self, workload: &str) -> bool {
        self.known.contains_key(workload)
    }

    /// [`Succession::decide`] for a large view: `is_alive` answers for one member, and
    /// the whole list (`alive`, this node included) is built only if some submitter is
    /// dead and a successor must be found. `recorded` says whether a workload has a live
    /// record here (then it is known whatever this node runs). A successor is chosen only among members
    /// `may_own(member, workload)` allows: under a least-privilege policy a node that may
    /// only host replicas must not be made an owner, whose every call would be refused.
    #[allow(clippy::too_many_arguments)]
    pub fn decide_with(
        &mut self,
        now_ms: u64,
        is_alive: impl Fn(&str) -> bool,
        alive: impl FnOnce() -> Vec<String>,
        may_own: impl Fn(&str, &str) -> bool,
        owns: impl Fn(&str) -> bool,
        holds: impl Fn(&str) -> bool,
        recorded: impl Fn(&str) -> bool,
    ) -> Vec<Step> {
        let mut alive = Some(alive);
        let mut view: Vec<String> = Vec::new();
        let id = self.id.clone();
        self.known.retain(|workload, known| {
            owns(workload)
                || holds(workload)
                || recorded(workload)
                || known
                    .handed_to_us_ms
                    .is_some_and(|at| now_ms.saturating_sub(at) < HANDOVER_MEMORY_MS)
        });
        let mut steps = Vec::new();
        for (workload, known) in &mut self.known {
            let owner = if is_alive(&known.submitter) {
                known.submitter.clone()
            } else {
                if let Some(list) = alive.take() {
                    view = list();
                }
                let heirs = view
                    .iter()
                    .map(String::as_str)
                    .filter(|member| may_own(member, workload));
                match ownership::successor(workload, heirs) {
                    Some(heir) => heir.to_owned(),
                    None => continue,
                }
            };
            let owner = owner.as_str();
            let submitted_here = known.submitter == id;
            if holds(workload) {
                steps.push(Step::SetOwner {
                    workload: workload.clone(),
                    owner: owner.to_owned(),
                });
            }
            if owner == id {
                if !submitted_here && !owns(workload) {
                    steps.push(Step::Adopt {
                        workload: workload.clone(),
                        submitter: known.submitter.clone(),
                        spec: Box::new(known.spec.clone()),
                    });
                }
                continue;
            }
            if !submitted_here && owns(workload) {
                steps.push(Step::Relinquish {
                    workload: workload.clone(),
                });
            }
            let repeat_due = known.handed_over.as_ref().is_none_or(|(to, at)| {
                to != owner || now_ms.saturating_sub(*at) >= HANDOVER_REPEAT_MS
            });
            if owner != known.submitter && holds(workload) && repeat_due {
                known.handed_over = Some((owner.to_owned(), now_ms));
                steps.push(Step::Handover {
                    to: owner.to_owned(),
                    workload: workload.clone(),
                    submitter: known.submitter.clone(),
                    spec: Box::new(known.spec.clone()),
                });
            }
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use crate::workload::WorkloadName;

    use super::*;

    const W: &str = "default/web";

    fn spec() -> WorkloadSpec {
        WorkloadSpec::new(
            WorkloadName::new("web").unwrap(),
            "img",
            Vec::new(),
            Vec::new(),
        )
        .unwrap()
    }

    fn kinds(steps: &[Step]) -> Vec<&'static str> {
        steps
            .iter()
            .map(|s| match s {
                Step::SetOwner { .. } => "set-owner",
                Step::Adopt { .. } => "adopt",
                Step::Relinquish { .. } => "relinquish",
                Step::Handover { .. } => "handover",
            })
            .collect()
    }

    #[test]
    fn the_submitter_owns_while_alive_then_the_successor_then_the_submitter_again() {
        let nodes = ["a", "b", "c"];
        // Whichever of b and c inherits from a, the other hands over to it.
        let heir = ownership::successor(W, ["b", "c"]).unwrap();
        let other = if heir == "b" { "c" } else { "b" };
        let mut at_heir = Succession::new(heir);
        let mut at_other = Succession::new(other);
        at_heir.learn(W, "a", &spec(), None);
        at_other.learn(W, "a", &spec(), None);

        // a alive: both report to a, nobody adopts.
        let steps = at_other.decide(0, &nodes, |_| false, |_| true);
        assert_eq!(
            steps,
            [Step::SetOwner {
                workload: W.into(),
                owner: "a".into()
            }]
        );

        // a dead: the heir adopts; the other node reports to the heir and hands over.
        let survivors = [heir, other];
        let steps = at_heir.decide(1_000, &survivors, |_| false, |_| true);
        assert_eq!(kinds(&steps), ["set-owner", "adopt"]);
        let steps = at_other.decide(1_000, &survivors, |_| false, |_| true);
        assert_eq!(kinds(&steps), ["set-owner", "handover"]);
        // The handover is repeated only after a while.
        let steps = at_other.decide(2_000, &survivors, |_| false, |_| true);
        assert_eq!(kinds(&steps), ["set-owner"]);
        let steps = at_other.decide(1_000 + HANDOVER_REPEAT_MS, &survivors, |_| false, |_| true);
        assert_eq!(kinds(&steps), ["set-owner", "handover"]);

        // a is back: the heir gives the workload back, everyone reports to a.
        let steps = at_heir.decide(5_000, &nodes, |_| true, |_| true);
        assert_eq!(kinds(&steps), ["set-owner", "relinquish"]);
        assert_eq!(at_heir.owner(W, &nodes), Some("a"));
    }

    #[test]
    fn a_successor_is_chosen_among_the_nodes_that_may_own_the_workload() {
        let heir = ownership::successor(W, ["b", "c"]).unwrap();
        let other = if heir == "b" { "c" } else { "b" };
        let survivors = || vec!["b".to_owned(), "c".to_owned()];
        // The node the hash prefers may only host: the other one inherits, and the
        // preferred one hands the workload to it instead of adopting it.
        let may_own = |member: &str, _: &str| member != heir;
        let mut at_heir = Succession::new(heir);
        at_heir.learn(W, "a", &spec(), None);
        let steps = at_heir.decide_with(
            0,
            |n| n != "a",
            survivors,
            may_own,
            |_| false,
            |_| true,
            |_| false,
        );
        assert_eq!(kinds(&steps), ["set-owner", "handover"]);
        assert!(matches!(&steps[1], Step::Handover { to, .. } if to == other));
        let mut at_other = Succession::new(other);
        at_other.learn(W, "a", &spec(), None);
        let steps = at_other.decide_with(
            0,
            |n| n != "a",
            survivors,
            may_own,
            |_| false,
            |_| true,
            |_| false,
        );
        assert_eq!(kinds(&steps), ["set-owner", "adopt"]);
        // Nobody may own it: nobody adopts, and nobody is handed it.
        let mut nobody = Succession::new(other);
        nobody.learn(W, "a", &spec(), None);
        let steps = nobody.decide_with(
            0,
            |n| n != "a",
            survivors,
            |_, _| false,
            |_| false,
            |_| true,
            |_| false,
        );
        assert!(steps.is_empty(), "{steps:?}");
    }

    #[test]
    fn a_recorded_workload_no_node_runs_is_kept_and_taken_over_by_the_successor() {
        let heir = ownership::successor(W, ["b", "c"]).unwrap();
        let mut at_heir = Succession::new(heir);
        at_heir.update(W, "a", &spec());
        let survivors = || vec!["b".to_owned(), "c".to_owned()];
        // Without the record, knowledge of a workload nothing holds here is dropped.
        let mut forgetful = Succession::new(heir);
        forgetful.update(W, "a", &spec());
        let steps = forgetful.decide_with(
            0,
            |n| n != "a",
            survivors,
            |_, _| true,
            |_| false,
            |_| false,
            |_| false,
        );
        assert!(steps.is_empty() && !forgetful.knows(W));
        let steps = at_heir.decide_with(
            0,
            |n| n != "a",
            survivors,
            |_, _| true,
            |_| false,
            |_| false,
            |_| true,
        );
        assert_eq!(kinds(&steps), ["adopt"]);
        // A newer record naming another submitter moves ownership there.
        at_heir.update(W, "b", &spec());
        assert_eq!(at_heir.submitter(W), Some("b"));
    }

    #[test]
    fn a_successor_that_ran_nothing_learns_the_workload_from_a_handover() {
        let heir = ownership::successor(W, ["b", "c"]).unwrap();
        let mut at_heir = Succession::new(heir);
        let survivors = ["b", "c"];
        assert!(
            at_heir
                .decide(0, &survivors, |_| false, |_| false)
                .is_empty()
        );
        at_heir.learn(W, "a", &spec(), Some(0));
        let steps = at_heir.decide(0, &survivors, |_| false, |_| false);
        assert_eq!(kinds(&steps), ["adopt"]);
        // Owned from now on: remembered for as long as it is owned.
        let steps = at_heir.decide(10 * HANDOVER_MEMORY_MS, &survivors, |_| true, |_| false);
        assert!(steps.is_empty());
        assert_eq!(at_heir.owner(W, &survivors), Some(heir));
        // A handover that was never acted on is forgotten.
        let mut bystander = Succession::new("z");
        bystander.learn(W, "a", &spec(), Some(0));
        bystander.decide(HANDOVER_MEMORY_MS, &["x", "z"], |_| false, |_| false);
        assert_eq!(bystander.owner(W, &["x", "z"]), None);
    }

    #[test]
    fn a_workload_submitted_here_is_never_adopted_or_relinquished() {
        let mut here = Succession::new("a");
        here.learn(W, "a", &spec(), None);
        assert!(here.decide(0, &["a", "b"], |_| true, |_| false).is_empty());
        here.forget(W);
        assert_eq!(here.owner(W, &["a"]), None);
    }
}
