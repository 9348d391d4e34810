//! Helpers for tests of agents in a mesh: start them, read what they see, wait for it.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Agent;
use crate::netbed::NetBed;

/// Starts an agent in the mesh on a free loopback port, joining through `seeds`.
pub fn mesh_agent(tag: &str, identity: &std::path::Path, seeds: &[&str], extra: &[&str]) -> Agent {
    let identity = identity.to_str().expect("utf-8 path");
    let mut args = vec!["--listen", "127.0.0.1:0", "--identity-dir", identity];
    for seed in seeds {
        args.extend(["--join", seed]);
    }
    args.extend(extra);
    // Each agent has its own container storage, as on a host of its own.
    Agent::start_isolated(tag, &args)
}

/// Starts an agent in the mesh on `host` of `bed`, listening on its bed address and
/// joining through `seeds` (bed hosts, as [`NetBed::agent_address`] gives them).
pub fn bed_agent(
    bed: &NetBed,
    host: usize,
    tag: &str,
    identity: &std::path::Path,
    seeds: &[usize],
    extra: &[&str],
) -> Agent {
    let identity = identity.to_str().expect("utf-8 path");
    let listen = bed.agent_address(host);
    let seeds: Vec<String> = seeds.iter().map(|&s| bed.agent_address(s)).collect();
    let mut args = vec!["--listen", &listen, "--identity-dir", identity];
    for seed in &seeds {
        args.extend(["--join", seed]);
    }
    args.extend(extra);
    Agent::start_isolated_in(&bed.namespace(host), tag, &args)
}

/// `parley nodes -o json` on `agent`.
pub fn nodes(agent: &Agent) -> Value {
    agent.cli(["nodes", "-o", "json"]).json()
}

/// The address this agent announces to the mesh.
pub fn address(agent: &Agent) -> String {
    let list = nodes(agent);
    list["nodes"][0]["meta"]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address in {list}"))
        .to_owned()
}

/// Member id → state, as `agent` sees them (itself excluded).
pub fn member_states(agent: &Agent) -> Vec<(String, String)> {
    nodes(agent)["nodes"]
        .as_array()
        .expect("nodes array")
        .iter()
        .filter(|n| n["this_node"] == false)
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_owned(),
                n["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Polls `done` every 200 ms until it holds; fails the test, saying `what`, after `limit`.
#[track_caller]
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until every agent sees all the others alive.
#[track_caller]
pub fn wait_for_full_mesh(agents: &[&Agent]) {
    for agent in agents {
        wait_until(
            &format!("{} sees the other {} alive", agent.node(), agents.len() - 1),
            Duration::from_secs(30),
            || {
                let states = member_states(agent);
                states.len() == agents.len() - 1 && states.iter().all(|(_, s)| s == "alive")
            },
        );
    }
}

/// Names of the running containers of `workload` on `agent`'s node (by their labels).
pub fn replicas_on(agent: &Agent, workload: &str) -> Vec<String> {
    let out = agent.podman([
        "ps",
        "--filter",
        &format!("label=io.parley.node={}", agent.node()),
        "--filter",
        &format!("label=io.parley.workload={workload}"),
        "--filter",
        "status=running",
        "--format",
        "{{.Names}}",
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The workload identity file inside `container`, read through `agent`'s Podman.
pub fn svid_in(agent: &Agent, container: &str) -> Value {
    let out = agent.podman(["exec", container, "cat", "/run/parley/identity/svid.json"]);
    assert!(
        out.status.success(),
        "cannot read the identity in {container}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("svid.json is JSON")
}

/// The owner of `workload` as `agent`'s `parley ps` reports it.
pub fn owner_seen_by(agent: &Agent, workload: &str) -> Option<String> {
    let ps = agent.ps();
    ps["workloads"]
        .as_array()?
        .iter()
        .find(|w| w["name"] == workload)?["owner"]
        .as_str()
        .map(str::to_owned)
}

/// Every agent's log, headed by its node name: for a failing test's message.
pub fn logs(agents: &[&Agent]) -> String {
    agents
        .iter()
        .map(|x| format!("== {}\n{}", x.node(), x.log()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A running container of a Parley workload, from its labels.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RunningContainer {
    /// The node that runs it (`io.parley.node`).
    pub node: String,
    /// Its replica (`io.parley.replica`).
    pub replica: String,
    /// The epoch it was started at (`io.parley.epoch`): a strong replica's lease epoch.
    pub epoch: String,
    /// The container's short id.
    pub id: String,
}

/// The running containers of `workload` in the storage of any of `agents`, sorted. The
/// agents are read at once, one thread each, so that a sample shows one moment.
pub fn running_containers(agents: &[&Agent], workload: &str) -> Vec<RunningContainer> {
    let read = |agent: &Agent| {
        let out = agent.podman([
            "ps",
            "--filter",
            &format!("label=io.parley.workload={workload}"),
            "--filter",
            "status=running",
            "--format",
            "{{index .Labels \"io.parley.node\"}} {{index .Labels \"io.parley.replica\"}} \
             {{index .Labels \"io.parley.epoch\"}} {{.ID}}",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let mut words = line.split(' ');
                Some(RunningContainer {
                    node: words.next()?.to_owned(),
                    replica: words.next()?.to_owned(),
                    epoch: words.next()?.to_owned(),
                    id: words.next()?.to_owned(),
                })
            })
            .collect::<Vec<_>>()
    };
    let mut all: Vec<RunningContainer> = std::thread::scope(|scope| {
        let reads: Vec<_> = agents
            .iter()
            .map(|agent| scope.spawn(move || read(agent)))
            .collect();
        reads
            .into_iter()
            .flat_map(|r| r.join().expect("a podman read"))
            .collect()
    });
    all.sort();
    all
}
