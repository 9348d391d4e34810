//! Who owns (announces) a workload: the node it was submitted to while that node is
//! alive, otherwise a deterministic successor chosen by rendezvous hashing (highest
//! random weight) of the workload key over the alive members. Every node with the same
//! view picks the same owner, and a member joining or leaving moves only the workloads
//! whose top choice it is.

/// The rendezvous weight of `node` for `workload`: 64-bit FNV-1a of both, separated.
pub fn weight(workload: &str, node: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in workload
        .bytes()
        .chain(std::iter::once(0))
        .chain(node.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Finalize (FNV alone mixes the last bytes poorly).
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

/// The successor of a dead owner: the alive member with the highest weight (ties by id).
pub fn successor<'a>(workload: &str, alive: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    alive.into_iter().max_by(|a, b| {
        weight(workload, a)
            .cmp(&weight(workload, b))
            .then_with(|| b.cmp(a))
    })
}

/// The owner of `workload` submitted to `submitter`, given which members are alive.
pub fn owner<'a>(workload: &str, submitter: &'a str, alive: &[&'a str]) -> Option<&'a str> {
    if alive.contains(&submitter) {
        Some(submitter)
    } else {
        successor(workload, alive.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_submitter_owns_while_alive_and_a_stable_successor_after() {
        let alive = ["a", "b", "c", "d"];
        assert_eq!(owner("default/web", "b", &alive), Some("b"));
        let without_b = ["a", "c", "d"];
        let heir = owner("default/web", "b", &without_b).unwrap();
        // The same choice whatever the order of the view.
        assert_eq!(owner("default/web", "b", &["d", "c", "a"]), Some(heir));
        // Removing a member that is not the heir does not move the workload.
        let others: Vec<&str> = without_b.iter().copied().filter(|n| *n != heir).collect();
        let mut smaller = vec![heir];
        smaller.push(others[0]);
        assert_eq!(owner("default/web", "b", &smaller), Some(heir));
        assert_eq!(owner("default/web", "b", &[]), None);
    }

    #[test]
    fn successors_spread_across_members() {
        let alive: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
        let mut counts = std::collections::BTreeMap::new();
        for w in 0..1000 {
            let key = format!("default/w{w}");
            let heir = successor(&key, alive.iter().map(String::as_str)).unwrap();
            *counts.entry(heir.to_owned()).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 10);
        assert!(
            counts.values().all(|c| (50..=150).contains(c)),
            "{counts:?}"
        );
    }
}
