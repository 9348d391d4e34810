//! Start-up checks for the host problems that break rootless Podman most often, so that
//! the agent names them (in its log, once, and in `parley status`) instead of leaving the
//! user to decode a container error later. Each finding says what is wrong and how to fix
//! it. The checks only read; they never change the host.
//!
//! The facts are gathered by [`HostFacts::gather`] and judged by [`HostFacts::warnings`],
//! a pure function, so every finding is tested without a broken host.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::runtime::RuntimeInfo;

/// How many subordinate ids rootless Podman needs for ordinary images (uids up to 65535).
const FULL_ID_RANGE: u64 = 65_536;

/// One problem found on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostWarning {
    /// A stable name for scripts and docs: `subuid`, `subgid`, `tun`, `cgroup-v1`,
    /// `crun-cgroup-v1`, `rootful`.
    pub check: String,
    /// What is wrong and what it breaks.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

/// Whether `/dev/net/tun` (needed by slirp4netns and passt for rootless networking) can
/// be opened by this user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunAccess {
    /// Readable and writable.
    Usable,
    /// The device node does not exist.
    Missing,
    /// It exists but this user may not open it.
    Denied,
}

/// What the checks look at.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// The user the agent runs as.
    pub user: String,
    /// Its uid.
    pub uid: u32,
    /// Contents of `/etc/subuid` (`None` when unreadable or absent).
    pub subuid: Option<String>,
    /// Contents of `/etc/subgid`.
    pub subgid: Option<String>,
    /// Access to `/dev/net/tun`.
    pub tun: TunAccess,
    /// What Podman reported, when it answered.
    pub podman: Option<RuntimeInfo>,
}

impl HostFacts {
    /// Reads the facts off this host for the current user.
    pub fn gather(podman: Option<RuntimeInfo>) -> Self {
        let uid = nix::unistd::getuid();
        let user = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| uid.to_string());
        Self {
            user,
            uid: uid.as_raw(),
            subuid: std::fs::read_to_string("/etc/subuid").ok(),
            subgid: std::fs::read_to_string("/etc/subgid").ok(),
            tun: tun_access(Path::new("/dev/net/tun")),
            podman,
        }
    }

    /// The problems these facts show, in a stable order.
    pub fn warnings(&self) -> Vec<HostWarning> {
        let mut warnings = Vec::new();
        let rootless = self.podman.as_ref().is_none_or(|p| p.rootless);
        if rootless {
            for (file, contents, check, flag) in [
                ("/etc/subuid", &self.subuid, "subuid", "--add-subuids"),
                ("/etc/subgid", &self.subgid, "subgid", "--add-subgids"),
            ] {
                let count = contents
                    .as_deref()
                    .map_or(0, |text| subordinate_ids(text, &self.user, self.uid));
                if count < FULL_ID_RANGE {
                    let problem = if count == 0 {
                        format!(
                            "{file} gives {} no subordinate ids: rootless Podman can map only \
                             the user's own id, and pulling or running any image with files \
                             owned by other users fails (\"potentially insufficient UIDs or \
                             GIDs available in user namespace\")",
                            self.user
                        )
                    } else {
                        format!(
                            "{file} gives {} only {count} subordinate ids (fewer than \
                             {FULL_ID_RANGE}): images with files owned by higher ids fail to \
                             pull or run",
                            self.user
                        )
                    };
                    warnings.push(HostWarning {
                        check: check.to_owned(),
                        problem,
                        fix: format!(
                            "sudo usermod {flag} 100000-165535 {}, then `podman system migrate`",
                            self.user
                        ),
                    });
                }
            }
            match self.tun {
                TunAccess::Usable => {}
                TunAccess::Missing | TunAccess::Denied => warnings.push(HostWarning {
                    check: "tun".to_owned(),
                    problem: format!(
                        "/dev/net/tun {}: rootless networking (slirp4netns, passt) cannot start, \
                         so every container with a network fails to start",
                        if self.tun == TunAccess::Missing {
                            "does not exist"
                        } else {
                            "cannot be opened by this user"
                        }
                    ),
                    fix: "as root: `modprobe tun` if it is missing, `chmod 0666 /dev/net/tun` if \
                          it is not world read-writable (the usual mode)"
                        .to_owned(),
                }),
            }
        }
        if let Some(podman) = &self.podman {
            if !podman.rootless {
                warnings.push(HostWarning {
                    check: "rootful".to_owned(),
                    problem: "Podman runs as root here: Parley is built for rootless Podman, and \
                              its workloads would run with root's privileges"
                        .to_owned(),
                    fix: "run the agent as an unprivileged user, or with the parley@USER \
                          system unit"
                        .to_owned(),
                });
            }
            if podman.rootless && podman.cgroup_version == "v1" {
                warnings.push(HostWarning {
                    check: "cgroup-v1".to_owned(),
                    problem: "cgroup v1: rootless containers cannot be given CPU or memory \
                              limits here; the agent still accounts for what workloads ask \
                              for, but does not enforce it"
                        .to_owned(),
                    fix: "boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1), the default \
                          since Debian 11 and Fedora 31, and enable delegation to users"
                        .to_owned(),
                });
                if podman.oci_runtime == "crun" {
                    warnings.push(HostWarning {
                        check: "crun-cgroup-v1".to_owned(),
                        problem: "the OCI runtime is crun on a cgroup v1 host: on hosts with a \
                                  hybrid cgroup layout crun fails to create rootless containers"
                            .to_owned(),
                        fix: "use runc: `apt install runc` and set `runtime = \"runc\"` under \
                              [engine] in ~/.config/containers/containers.conf"
                            .to_owned(),
                    });
                }
            }
        }
        warnings
    }
}

/// Total subordinate ids `/etc/subuid`-format `text` gives the user (by name or uid).
fn subordinate_ids(text: &str, user: &str, uid: u32) -> u64 {
    let uid = uid.to_string();
    text.lines()
        .filter_map(|line| {
            let mut fields = line.trim().split(':');
            let owner = fields.next()?;
            let _start: u64 = fields.next()?.parse().ok()?;
            let count: u64 = fields.next()?.parse().ok()?;
            (owner == user || owner == uid).then_some(count)
        })
        .sum()
}

fn tun_access(path: &Path) -> TunAccess {
    use nix::unistd::{AccessFlags, access};
    if !path.exists() {
        return TunAccess::Missing;
    }
    match access(path, AccessFlags::R_OK | AccessFlags::W_OK) {
        Ok(()) => TunAccess::Usable,
        Err(_) => TunAccess::Denied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn podman(cgroup: &str, runtime: &str, rootless: bool) -> RuntimeInfo {
        RuntimeInfo {
            version: "4.3.1".to_owned(),
            api_version: "4.3.1".to_owned(),
            rootless,
            cgroup_version: cgroup.to_owned(),
            oci_runtime: runtime.to_owned(),
            graph_root: None,
        }
    }

    fn healthy() -> HostFacts {
        HostFacts {
            user: "ada".to_owned(),
            uid: 1000,
            subuid: Some("root:1:5\nada:100000:65536\n".to_owned()),
            subgid: Some("ada:100000:65536\n".to_owned()),
            tun: TunAccess::Usable,
            podman: Some(podman("v2", "crun", true)),
        }
    }

    fn checks(facts: &HostFacts) -> Vec<String> {
        facts.warnings().into_iter().map(|w| w.check).collect()
    }

    #[test]
    fn a_healthy_host_has_no_warnings() {
        assert!(healthy().warnings().is_empty());
        // Ranges may be split over lines and name the uid instead of the user.
        let split = HostFacts {
            subuid: Some("1000:100000:30000\nada:200000:35536\n".to_owned()),
            ..healthy()
        };
        assert!(split.warnings().is_empty(), "{:?}", split.warnings());
    }

    #[test]
    fn missing_or_short_subordinate_ranges_are_named_with_the_fix() {
        let missing = HostFacts {
            subuid: Some("bob:100000:65536\n".to_owned()),
            subgid: None,
            ..healthy()
        };
        let warnings = missing.warnings();
        assert_eq!(checks(&missing), ["subuid", "subgid"]);
        assert!(warnings[0].problem.contains("no subordinate ids"));
        assert!(warnings[0].fix.contains("usermod --add-subuids"));
        assert!(warnings[1].fix.contains("--add-subgids"));

        let short = HostFacts {
            subgid: Some("ada:100000:1000\n".to_owned()),
            ..healthy()
        };
        assert_eq!(checks(&short), ["subgid"]);
        assert!(short.warnings()[0].problem.contains("only 1000"));
    }

    #[test]
    fn an_unusable_tun_device_is_named() {
        for tun in [TunAccess::Missing, TunAccess::Denied] {
            let facts = HostFacts { tun, ..healthy() };
            assert_eq!(checks(&facts), ["tun"]);
        }
    }

    #[test]
    fn cgroup_v1_says_limits_are_not_enforced_and_crun_there_is_flagged() {
        let runc = HostFacts {
            podman: Some(podman("v1", "runc", true)),
            ..healthy()
        };
        assert_eq!(checks(&runc), ["cgroup-v1"]);
        let crun = HostFacts {
            podman: Some(podman("v1", "crun", true)),
            ..healthy()
        };
        assert_eq!(checks(&crun), ["cgroup-v1", "crun-cgroup-v1"]);
    }

    #[test]
    fn rootful_podman_is_flagged_and_rootless_checks_do_not_apply() {
        let rootful = HostFacts {
            user: "root".to_owned(),
            uid: 0,
            subuid: None,
            subgid: None,
            podman: Some(podman("v2", "crun", false)),
            ..healthy()
        };
        assert_eq!(checks(&rootful), ["rootful"]);
    }

    #[test]
    fn malformed_subuid_lines_count_for_nothing() {
        assert_eq!(subordinate_ids("ada:x:65536\nada\n:::\n", "ada", 1000), 0);
    }

    #[test]
    fn tun_access_reads_the_real_device_node() {
        assert_eq!(
            tun_access(Path::new("/nonexistent/tun")),
            TunAccess::Missing
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tun");
        std::fs::write(&file, "").unwrap();
        assert_eq!(tun_access(&file), TunAccess::Usable);
    }
}
