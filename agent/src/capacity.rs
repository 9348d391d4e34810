//! What this node can give to workloads: the host's CPUs and memory (sysinfo), lowered by
//! the cgroup limits the agent itself runs under (a container, a systemd slice with
//! `CPUQuota=`/`MemoryMax=`), minus a configurable system reserve. Free capacity is
//! allocatable minus what committed workloads ask for; both travel in membership metadata.

use std::path::Path;

use parley_negotiation::messages::Resources;

/// What the host has, before the reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCapacity {
    /// Thousandths of a CPU the agent's cgroup may use (all CPUs when unlimited).
    pub cpu_millis: u64,
    /// Bytes of memory the agent's cgroup may use (all memory when unlimited).
    pub memory_bytes: u64,
}

impl HostCapacity {
    /// Reads this host: CPU count and memory from sysinfo, lowered by cgroup limits.
    pub fn read() -> Self {
        let mut system = sysinfo::System::new();
        system.refresh_memory();
        system.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
        let cpus = system.cpus().len().max(1) as u64;
        let mut memory_bytes = system.total_memory();
        // sysinfo reads the memory limit of the cgroup (v1 or v2) this process is in.
        if let Some(limits) = system.cgroup_limits() {
            memory_bytes = memory_bytes.min(limits.total_memory);
        }
        let mut cpu_millis = cpus * 1000;
        if let Some(quota) =
            cgroup_cpu_quota_millis(Path::new("/proc/self/cgroup"), Path::new("/sys/fs/cgroup"))
        {
            cpu_millis = cpu_millis.min(quota);
        }
        Self {
            cpu_millis,
            memory_bytes,
        }
    }

    /// Allocatable capacity: this minus `reserve`, never below zero.
    pub fn allocatable(&self, reserve: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(reserve.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(reserve.memory_bytes),
        }
    }
}

/// Space left for unprivileged users on the filesystem holding `path` (statvfs), in bytes.
pub fn disk_available(path: &Path) -> Option<u64> {
    let stats = nix::sys::statvfs::statvfs(path).ok()?;
    Some(
        stats
            .blocks_available()
            .saturating_mul(stats.fragment_size()),
    )
}

/// Free capacity: allocatable minus the sum of what committed workloads ask for.
pub fn free(allocatable: &Resources, committed: impl IntoIterator<Item = Resources>) -> Resources {
    committed
        .into_iter()
        .fold(*allocatable, |free, used| Resources {
            cpu_millis: free.cpu_millis.saturating_sub(used.cpu_millis),
            memory_bytes: free.memory_bytes.saturating_sub(used.memory_bytes),
        })
}

/// The CPU quota of this process's cgroup, in thousandths of a CPU, if one is set: cgroup
/// v2's `cpu.max` (`QUOTA PERIOD`, or `max`), else v1's `cpu.cfs_quota_us` over
/// `cpu.cfs_period_us` (`-1` when unlimited).
fn cgroup_cpu_quota_millis(proc_cgroup: &Path, cgroup_root: &Path) -> Option<u64> {
    let membership = std::fs::read_to_string(proc_cgroup).ok()?;
    for line in membership.lines() {
        // "0::/user.slice/…" (v2) or "4:cpu,cpuacct:/user.slice" (v1)
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let relative = path.trim_start_matches('/');
        if controllers.is_empty() {
            let text = std::fs::read_to_string(cgroup_root.join(relative).join("cpu.max")).ok();
            if let Some(quota) = text.as_deref().and_then(parse_cpu_max) {
                return Some(quota);
            }
        } else if controllers.split(',').any(|c| c == "cpu") {
            let dir = [
                cgroup_root.join(controllers).join(relative),
                cgroup_root.join("cpu").join(relative),
            ]
            .into_iter()
            .find(|dir| dir.join("cpu.cfs_quota_us").exists())?;
            let quota = std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).ok()?;
            let period = std::fs::read_to_string(dir.join("cpu.cfs_period_us")).ok()?;
            return parse_cfs(&quota, &period);
        }
    }
    None
}

/// `cpu.max`: "max 100000" (no limit) or "150000 100000" (1.5 CPUs).
fn parse_cpu_max(text: &str) -> Option<u64> {
    let mut fields = text.split_whitespace();
    let quota = fields.next()?;
    let period: u64 = fields.next()?.parse().ok()?;
    if quota == "max" || period == 0 {
        return None;
    }
    let quota: u64 = quota.parse().ok()?;
    Some(quota.saturating_mul(1000) / period)
}

/// cgroup v1: quota `-1` means no limit.
fn parse_cfs(quota: &str, period: &str) -> Option<u64> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period: u64 = period.trim().parse().ok()?;
    if quota <= 0 || period == 0 {
        return None;
    }
    Some((quota as u64).saturating_mul(1000) / period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_and_cfs_quotas_become_millicpus() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1500));
        assert_eq!(parse_cpu_max("garbage"), None);
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("50000\n", "100000\n"), Some(500));
    }

    #[test]
    fn the_quota_is_read_from_the_processs_own_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        let proc_cgroup = dir.path().join("cgroup");
        let root = dir.path().join("fs");
        // v2: a quota on the agent's own cgroup.
        std::fs::create_dir_all(root.join("user.slice/parley.service")).unwrap();
        std::fs::write(
            root.join("user.slice/parley.service/cpu.max"),
            "250000 100000\n",
        )
        .unwrap();
        std::fs::write(&proc_cgroup, "0::/user.slice/parley.service\n").unwrap();
        assert_eq!(cgroup_cpu_quota_millis(&proc_cgroup, &root), Some(2500));
        // v1: the cpu controller's hierarchy.
        std::fs::create_dir_all(root.join("cpu,cpuacct/edge")).unwrap();
        std::fs::write(root.join("cpu,cpuacct/edge/cpu.cfs_quota_us"), "100000\n").unwrap();
        std::fs::write(root.join("cpu,cpuacct/edge/cpu.cfs_period_us"), "100000\n").unwrap();
        std::fs::write(&proc_cgroup, "7:memory:/edge\n4:cpu,cpuacct:/edge\n").unwrap();
        assert_eq!(cgroup_cpu_quota_millis(&proc_cgroup, &root), Some(1000));
        // No quota anywhere.
        std::fs::write(&proc_cgroup, "0::/elsewhere\n").unwrap();
        assert_eq!(cgroup_cpu_quota_millis(&proc_cgroup, &root), None);
    }

    #[test]
    fn allocatable_subtracts_the_reserve_and_free_subtracts_commitments() {
        let host = HostCapacity {
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
        };
        let allocatable = host.allocatable(&Resources {
            cpu_millis: 500,
            memory_bytes: 1 << 30,
        });
        assert_eq!(allocatable.cpu_millis, 3500);
        assert_eq!(allocatable.memory_bytes, 7 << 30);
        let left = free(
            &allocatable,
            [
                Resources {
                    cpu_millis: 1000,
                    memory_bytes: 2 << 30,
                },
                Resources {
                    cpu_millis: 3000,
                    memory_bytes: 1 << 30,
                },
            ],
        );
        // Overcommitment (after a restart with a smaller reserve, say) floors at zero.
        assert_eq!(left.cpu_millis, 0);
        assert_eq!(left.memory_bytes, 4 << 30);
        let huge_reserve = host.allocatable(&Resources {
            cpu_millis: u64::MAX,
            memory_bytes: u64::MAX,
        });
        assert_eq!(huge_reserve, Resources::default());
    }

    #[test]
    fn the_real_host_has_some_capacity() {
        let host = HostCapacity::read();
        assert!(host.cpu_millis >= 1, "{host:?}");
        assert!(host.memory_bytes > 64 << 20, "{host:?}");
        // Online CPUs, independent of sysinfo (std's available_parallelism rounds quotas).
        let cpus = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
            .ok()
            .flatten()
            .unwrap_or(1) as u64;
        assert!(host.cpu_millis <= cpus * 1000, "{host:?} with {cpus} CPUs");
    }

    #[test]
    fn disk_space_is_measured_on_the_filesystem_of_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let available = disk_available(dir.path()).unwrap();
        assert!(available > 0);
        assert!(disk_available(Path::new("/nonexistent/parley")).is_none());
    }
}
