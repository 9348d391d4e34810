//! Authorization: which SPIFFE IDs may do what, in which namespaces.
//!
//! Authentication (the transport) says who sent a message; this module says whether that
//! sender may ask for it. Every request is checked when it arrives — not once per
//! connection — so a policy reloaded on SIGHUP applies to the very next message.
//!
//! A policy file is TOML, a list of grants; anything not granted is refused:
//!
//! ```toml
//! [[allow]]
//! ids = ["spiffe://example.org/node/*"]   # glob patterns; `*` stays within one segment
//! actions = ["member", "submit", "bid", "logs", "remove", "list"]
//! namespaces = ["*"]                        # optional, default: every namespace
//! ```
//!
//! `member` (probe, answer probes, gossip) is mesh-wide: a node without it is cut off
//! from the mesh, whatever else it is granted, and a grant's namespaces do not apply to
//! it. Every node should read the same policy: owners are chosen among the nodes it lets
//! `submit`, and nodes that disagree would choose different successors.
//!
//! Without a policy file, every node of the agent's own trust domain may do everything
//! (the transport already refuses other trust domains).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use glob::{MatchOptions, Pattern};
use serde::Deserialize;

/// Largest policy file read: a policy is a few dozen lines.
const MAX_POLICY_BYTES: u64 = 1024 * 1024;

pub use parley_negotiation::negotiator::Action;
use parley_negotiation::negotiator::{Authorizer, Denial};

/// Why a policy file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error, or that it is too large.
        reason: String,
    },
    /// The file is not a valid policy.
    #[error("invalid policy file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line where TOML can tell.
        reason: String,
    },
}

/// A request the policy refuses, worded for the one who asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{id} may not {action} in namespace {namespace:?} (`{}` is not granted by the {source_name})", .action.name())]
pub struct Denied {
    /// Who asked.
    pub id: String,
    /// What for.
    pub action: Action,
    /// Where.
    pub namespace: String,
    /// Which policy refused: its file, or the built-in one.
    pub source_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    allow: Vec<GrantFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantFile {
    ids: Vec<String>,
    actions: BTreeSet<Action>,
    #[serde(default)]
    namespaces: Option<Vec<String>>,
}

/// One `[[allow]]` entry.
#[derive(Debug, Clone)]
struct Grant {
    ids: Vec<Pattern>,
    actions: BTreeSet<Action>,
    namespaces: Vec<Pattern>,
}

/// A set of grants; what none grants is refused.
#[derive(Debug, Clone)]
pub struct Policy {
    grants: Vec<Grant>,
    source: String,
}

/// `*` must not cross a `/`: `spiffe://td/node/*` grants nodes, not
/// `spiffe://td/node/x/wl/y`. `**` as a whole segment crosses them.
const MATCH: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

impl Policy {
    /// The policy used without a file: every node of `trust_domain` may do everything.
    pub fn trust_domain_nodes(trust_domain: &str) -> Self {
        let pattern = format!("spiffe://{}/node/*", Pattern::escape(trust_domain));
        Self {
            grants: vec![Grant {
                ids: vec![Pattern::new(&pattern).expect("an escaped trust domain is a pattern")],
                actions: Action::ALL.into_iter().collect(),
                namespaces: vec![Pattern::new("*").expect("`*` is a pattern")],
            }],
            source: format!("built-in policy (every node of {trust_domain} may do everything)"),
        }
    }

    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let read_error = |reason: String| PolicyError::Read {
            path: path.to_path_buf(),
            reason,
        };
        let length = std::fs::metadata(path)
            .map_err(|e| read_error(e.to_string()))?
            .len();
        if length > MAX_POLICY_BYTES {
            return Err(read_error(format!(
                "{length} bytes, more than the {MAX_POLICY_BYTES} a policy may have"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| read_error(e.to_string()))?;
        Self::parse(&text, path)
    }

    /// Checks a policy file's text; `path` names it in errors and in refusals.
    pub fn parse(text: &str, path: &Path) -> Result<Self, PolicyError> {
        let invalid = |reason: String| PolicyError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let file: PolicyFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let compile = |patterns: &[String], what: &str| -> Result<Vec<Pattern>, PolicyError> {
            patterns
                .iter()
                .map(|p| {
                    Pattern::new(p).map_err(|e| invalid(format!("{what} pattern {p:?}: {}", e.msg)))
                })
                .collect()
        };
        let mut grants = Vec::with_capacity(file.allow.len());
        for (index, grant) in file.allow.into_iter().enumerate() {
            if grant.ids.is_empty() || grant.actions.is_empty() {
                return Err(invalid(format!(
                    "[[allow]] number {} grants nothing: it needs at least one id and one action",
                    index + 1
                )));
            }
            grants.push(Grant {
                ids: compile(&grant.ids, "id")?,
                actions: grant.actions,
                namespaces: compile(
                    grant.namespaces.as_deref().unwrap_or(&["*".to_owned()]),
                    "namespace",
                )?,
            });
        }
        Ok(Self {
            grants,
            source: format!("policy file {}", path.display()),
        })
    }

    /// Where this policy came from, for logs and refusals.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// How many grants it holds.
    pub fn grants(&self) -> usize {
        self.grants.len()
    }

    /// Logs what a policy in force lets no one do that a mesh needs: a file written before
    /// `member` existed grants no membership, and every node reading it is cut off.
    pub fn warn_if_crippling(&self) {
        if !self
            .grants
            .iter()
            .any(|grant| grant.actions.contains(&Action::Member))
        {
            tracing::warn!(
                policy = %self.source,
                "this policy grants `member` to no one: every probe and gossip message will be \
                 refused and this node cut off from the mesh; add \"member\" to the actions \
                 of the nodes' grant"
            );
        }
    }

    /// Whether `id` may do `action` in `namespace`.
    pub fn check(&self, id: &str, action: Action, namespace: &str) -> Result<(), Denied> {
        let granted = self.grants.iter().any(|grant| {
            grant.actions.contains(&action)
                && grant.ids.iter().any(|p| p.matches_with(id, MATCH))
                && (action.is_mesh_wide()
                    || grant
                        .namespaces
                        .iter()
                        .any(|p| p.matches_with(namespace, MATCH)))
        });
        if granted {
            Ok(())
        } else {
            Err(Denied {
                id: id.to_owned(),
                action,
                namespace: namespace.to_owned(),
                source_name: self.source.clone(),
            })
        }
    }
}

/// The agent's current policy, shared by the API and the negotiation loop and replaced
/// whole on reload.
#[derive(Debug, Clone)]
pub struct PolicyHandle {
    current: Arc<RwLock<Arc<Policy>>>,
    file: Option<PathBuf>,
}

impl PolicyHandle {
    /// Holds `policy`, read from `file` if it came from one.
    pub fn new(policy: Policy, file: Option<PathBuf>) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(policy))),
            file,
        }
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether `id` may do `action` in `namespace` under the policy in force now.
    pub fn check(&self, id: &str, action: Action, namespace: &str) -> Result<(), Denied> {
        self.current().check(id, action, namespace)
    }

    /// Reads the policy file again. On error the policy in force stays: a typo in an edit
    /// must not open or close the whole mesh.
    pub fn reload(&self) -> Result<Arc<Policy>, PolicyError> {
        let Some(file) = &self.file else {
            return Ok(self.current());
        };
        let policy = Arc::new(Policy::load(file)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&policy);
        Ok(policy)
    }
}

/// The negotiator asks the policy in force at each message: a reload applies to the
/// very next one.
impl Authorizer for PolicyHandle {
    fn check(&self, peer: &str, action: Action, namespace: &str) -> Result<(), Denial> {
        self.current()
            .check(peer, action, namespace)
            .map_err(denial)
    }
}

impl Authorizer for Policy {
    fn check(&self, peer: &str, action: Action, namespace: &str) -> Result<(), Denial> {
        Policy::check(self, peer, action, namespace).map_err(denial)
    }
}

fn denial(denied: Denied) -> Denial {
    Denial {
        action: denied.action,
        reason: denied.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn built_in_policy_grants_the_trust_domains_nodes_only() {
        let policy = Policy::trust_domain_nodes("example.org");
        for action in Action::ALL {
            assert!(
                policy
                    .check("spiffe://example.org/node/a", action, "default")
                    .is_ok()
            );
        }
        assert!(
            policy
                .check("spiffe://other.org/node/a", Action::Submit, "default")
                .is_err()
        );
        // A workload identity is not a node.
        assert!(
            policy
                .check(
                    "spiffe://example.org/ns/default/wl/web",
                    Action::List,
                    "default"
                )
                .is_err()
        );
    }

    #[test]
    fn grants_match_by_id_action_and_namespace() {
        let (_dir, path) = write(
            r#"
            [[allow]]
            ids = ["spiffe://td/node/*"]
            actions = ["bid", "list"]

            [[allow]]
            ids = ["spiffe://td/node/ops-*"]
            actions = ["submit", "remove", "logs"]
            namespaces = ["prod", "team-*"]
            "#,
        );
        let policy = Policy::load(&path).unwrap();
        assert_eq!(policy.grants(), 2);
        let check = |id: &str, action, ns: &str| policy.check(id, action, ns).is_ok();
        assert!(check("spiffe://td/node/web1", Action::Bid, "anything"));
        // Membership was granted to no one here, and it is not a namespace's to grant.
        assert!(!check("spiffe://td/node/web1", Action::Member, ""));
        assert!(!check("spiffe://td/node/web1", Action::Submit, "prod"));
        assert!(check("spiffe://td/node/ops-1", Action::Submit, "prod"));
        assert!(check("spiffe://td/node/ops-1", Action::Logs, "team-a"));
        assert!(!check("spiffe://td/node/ops-1", Action::Submit, "default"));
        // `*` does not cross a path separator.
        assert!(!check("spiffe://td/node/ops-1/extra", Action::Bid, "x"));
        let denied = policy
            .check("spiffe://td/node/web1", Action::Remove, "prod")
            .unwrap_err();
        assert_eq!(
            denied.to_string(),
            format!(
                "spiffe://td/node/web1 may not remove workloads in namespace \"prod\" \
                 (`remove` is not granted by the policy file {})",
                path.display()
            )
        );
    }

    #[test]
    fn an_empty_policy_refuses_everything() {
        let (_dir, path) = write("");
        let policy = Policy::load(&path).unwrap();
        assert!(
            policy
                .check("spiffe://td/node/a", Action::List, "default")
                .is_err()
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        for (text, expected) in [
            (
                "[[allow]]\nids = [\"x\"]\nactions = [\"fly\"]",
                "unknown variant `fly`",
            ),
            (
                "[[allow]]\nids = [\"x\"]\nactions = [\"bid\"]\nnamepsaces = []",
                "unknown field `namepsaces`",
            ),
            ("[[allow]]\nids = []\nactions = [\"bid\"]", "grants nothing"),
            (
                "[[allow]]\nids = [\"spiffe://td/[node\"]\nactions = [\"bid\"]",
                "id pattern",
            ),
            ("allow = 3", "invalid type"),
        ] {
            let (_dir, path) = write(text);
            let error = Policy::load(&path).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?} gave {error}");
            assert!(error.contains(&path.display().to_string()), "{error}");
        }
        let missing = Policy::load(Path::new("/nonexistent/policy.toml")).unwrap_err();
        assert!(matches!(missing, PolicyError::Read { .. }), "{missing}");
    }

    #[test]
    fn oversized_files_are_refused_before_reading() {
        let (_dir, path) = write(&"#".repeat(MAX_POLICY_BYTES as usize + 1));
        let error = Policy::load(&path).unwrap_err().to_string();
        assert!(error.contains("more than the"), "{error}");
    }

    #[test]
    fn a_failed_reload_keeps_the_policy_in_force() {
        let (_dir, path) = write("[[allow]]\nids = [\"spiffe://td/node/a\"]\nactions = [\"bid\"]");
        let handle = PolicyHandle::new(Policy::load(&path).unwrap(), Some(path.clone()));
        assert!(
            handle
                .check("spiffe://td/node/a", Action::Bid, "ns")
                .is_ok()
        );

        std::fs::write(&path, "[[allow]]\nids = [").unwrap();
        assert!(handle.reload().is_err());
        assert!(
            handle
                .check("spiffe://td/node/a", Action::Bid, "ns")
                .is_ok()
        );

        std::fs::write(
            &path,
            "[[allow]]\nids = [\"spiffe://td/node/b\"]\nactions = [\"bid\"]",
        )
        .unwrap();
        handle.reload().unwrap();
        assert!(
            handle
                .check("spiffe://td/node/a", Action::Bid, "ns")
                .is_err()
        );
        assert!(
            handle
                .check("spiffe://td/node/b", Action::Bid, "ns")
                .is_ok()
        );
    }
}
