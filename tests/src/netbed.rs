//! A network test bed: hosts in network namespaces of their own, joined by one bridge,
//! whose links a test cuts (both ways or one way), makes lossy, and heals.
//!
//! ```text
//!   host 0 ns            switch ns              host 1 ns
//!   eth0 10.231.0.1 ──── h0 ─┐  br0  ┌─ h1 ──── eth0 10.231.0.2   …
//! ```
//!
//! Every bed has its own switch namespace, so beds of tests running in parallel share
//! nothing, not even addresses. Links are impaired by nftables rules in the host's own
//! namespace (`table inet parley_bed`), replaced whole and atomically by `nft -f`.
//!
//! Why nftables and not `tc netem`: the kernels of these machines (and of CI) are built
//! without `sch_netem` (`CONFIG_NET_SCH_NETEM` is unset: "Specified qdisc kind is
//! unknown"), while nf_tables, with its `numgen` random numbers, is built in. Loss and
//! cuts need nothing more; added latency would, and the bed does not offer it.
//!
//! Making namespaces needs root (CI runs the suite as root). A bed made without root, or
//! without `ip` or `nft`, fails the test saying how to fix it: never a silent skip.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// What a cut stops on one host's link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Nothing in or out: the host is cut off.
    Both,
    /// The host hears the others, but nothing it sends arrives.
    Outbound,
    /// What the host sends arrives, but it hears nothing.
    Inbound,
}

/// Packets and bytes that crossed a host's link, each way (IP packets, headers included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Packets the host received.
    pub packets_in: u64,
    /// Their bytes.
    pub bytes_in: u64,
    /// Packets the host sent (or tried to: a cut link counts them, then drops them).
    pub packets_out: u64,
    /// Their bytes.
    pub bytes_out: u64,
}

/// Hosts in network namespaces on one bridge; dropped, it deletes them all.
#[derive(Debug)]
pub struct NetBed {
    prefix: String,
    hosts: usize,
}

/// The port every agent of a bed listens on: each host has its own port space.
pub const AGENT_PORT: u16 = 7946;

impl NetBed {
    /// Makes `hosts` namespaces with a link each to one bridge, all links up and clean.
    pub fn new(hosts: usize) -> Self {
        assert!(
            (1..=200).contains(&hosts),
            "a bed has 1 to 200 hosts, not {hosts}"
        );
        assert!(
            nix::unistd::geteuid().is_root(),
            "the network test bed makes network namespaces, which needs root: run the suite as \
             root (CI does; `sudo bash scripts/test.sh` here)"
        );
        for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
            assert!(
                Command::new(tool)
                    .arg("-V")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
                "the network test bed needs `{tool}`: install {package} \
                 (scripts/setup-host.sh does)"
            );
        }
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let bed = Self {
            prefix: format!(
                "parley-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ),
            hosts,
        };
        let switch = bed.switch();
        ip(&["netns", "add", &switch]);
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        for host in 0..hosts {
            let namespace = bed.namespace(host);
            let port = format!("h{host}");
            ip(&["netns", "add", &namespace]);
            ip(&[
                "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &namespace,
            ]);
            ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"]);
            let address = format!("{}/24", bed.address(host));
            ip(&["-n", &namespace, "addr", "add", &address, "dev", "eth0"]);
            ip(&["-n", &namespace, "link", "set", "eth0", "up"]);
            ip(&["-n", &namespace, "link", "set", "lo", "up"]);
            bed.heal(host);
        }
        bed
    }

    /// The number of hosts.
    pub fn hosts(&self) -> usize {
        self.hosts
    }

    /// The name of `host`'s network namespace (under /run/netns).
    pub fn namespace(&self, host: usize) -> String {
        assert!(
            host < self.hosts,
            "host {host} is not in a bed of {}",
            self.hosts
        );
        format!("{}-h{host}", self.prefix)
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    /// `host`'s address on the bridge.
    pub fn address(&self, host: usize) -> Ipv4Addr {
        assert!(
            host < self.hosts,
            "host {host} is not in a bed of {}",
            self.hosts
        );
        Ipv4Addr::new(10, 231, 0, host as u8 + 1)
    }

    /// `host`'s agent address, `IP:PORT`.
    pub fn agent_address(&self, host: usize) -> String {
        format!("{}:{AGENT_PORT}", self.address(host))
    }

    /// Cuts `host`'s link as `cut` says, replacing any earlier impairment.
    pub fn cut(&self, host: usize, cut: Cut) {
        let (input, output) = match cut {
            Cut::Both => (Some("drop"), Some("drop")),
            Cut::Outbound => (None, Some("drop")),
            Cut::Inbound => (Some("drop"), None),
        };
        self.impair(host, input, output);
    }

    /// Drops `percent` % of `host`'s packets each way, at random, replacing any earlier
    /// impairment.
    pub fn lossy(&self, host: usize, percent: u8) {
        assert!(percent <= 100, "a loss of {percent} %");
        let drop = match percent {
            0 => return self.heal(host),
            // numgen's values are 0–99: `< 100` is out of its range, and nft says so.
            100 => "drop".to_owned(),
            _ => format!("numgen random mod 100 < {percent} drop"),
        };
        self.impair(host, Some(&drop), Some(&drop));
    }

    /// Takes every impairment off `host`'s link.
    pub fn heal(&self, host: usize) {
        self.impair(host, None, None);
    }

    /// What crossed `host`'s link since its last impairment or heal (each replaces the
    /// counters), as its own namespace counted it, dropped packets included.
    pub fn traffic(&self, host: usize) -> Traffic {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.namespace(host)])
            .args(["nft", "-j", "list", "table", "inet", "parley_bed"])
            .output()
            .expect("run nft");
        assert!(
            out.status.success(),
            "nft could not list host {host}'s table: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("nft -j prints JSON");
        let mut traffic = Traffic::default();
        for item in listing["nftables"].as_array().into_iter().flatten() {
            let rule = &item["rule"];
            let Some(counter) = rule["expr"]
                .as_array()
                .and_then(|e| e.iter().find_map(|x| x.get("counter")))
            else {
                continue;
            };
            let (packets, bytes) = (
                counter["packets"].as_u64().unwrap_or(0),
                counter["bytes"].as_u64().unwrap_or(0),
            );
            match rule["chain"].as_str() {
                Some("input") => (traffic.packets_in, traffic.bytes_in) = (packets, bytes),
                Some("output") => (traffic.packets_out, traffic.bytes_out) = (packets, bytes),
                _ => {}
            }
        }
        traffic
    }

    /// Replaces `host`'s filter with one that applies the nftables statement `input` to
    /// what its bridge link (`eth0`) receives and `output` to what it sends, beside the
    /// counters [`NetBed::traffic`] reads.
    fn impair(&self, host: usize, input: Option<&str>, output: Option<&str>) {
        let rule = |interface: &str, statement: Option<&str>| {
            statement
                .map(|statement| format!("\t\t{interface} \"eth0\" {statement}\n"))
                .unwrap_or_default()
        };
        let (input, output) = (rule("iifname", input), rule("oifname", output));
        // Declaring the table first makes the delete succeed on the first call too; the
        // whole file is one transaction, so no packet sees half a rule set.
        let ruleset = format!(
            "table inet parley_bed\ndelete table inet parley_bed\n\
             table inet parley_bed {{\n\
             \tchain input {{\n\t\ttype filter hook input priority 0; policy accept;\n\
             \t\tiifname \"eth0\" counter\n{input}\t}}\n\
             \tchain output {{\n\t\ttype filter hook output priority 0; policy accept;\n\
             \t\toifname \"eth0\" counter\n{output}\t}}\n\
             }}\n"
        );
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &self.namespace(host), "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nft");
        nft.stdin
            .take()
            .expect("nft's stdin")
            .write_all(ruleset.as_bytes())
            .expect("write the rule set to nft");
        let out = nft.wait_with_output().expect("wait for nft");
        assert!(
            out.status.success(),
            "nft refused the rules for host {host}: {}\n{ruleset}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for NetBed {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of every veth pair, and with it the other.
        for host in 0..self.hosts {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.namespace(host)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.switch()])
            .status();
    }
}

/// Runs `ip ARGS…`; fails the test with its error when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread inside `host`'s network namespace.
    fn in_namespace<T: Send>(bed: &NetBed, host: usize, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", bed.namespace(host));
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // setns moves only the calling thread, which ends with `f`.
                    let namespace = std::fs::File::open(&path).expect("open the namespace");
                    nix::sched::setns(namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                        .expect("enter the namespace");
                    f()
                })
                .join()
                .expect("the thread in the namespace")
        })
    }

    /// How many of `sent` UDP datagrams from `from` reach `to`.
    fn udp_delivered(bed: &NetBed, from: usize, to: usize, sent: usize) -> usize {
        let to_address = std::net::SocketAddr::from((bed.address(to), AGENT_PORT));
        // A socket stays in the namespace it was made in, after its thread is gone.
        let listener = in_namespace(bed, to, || {
            std::net::UdpSocket::bind(to_address).expect("bind in the namespace")
        });
        listener
            .set_read_timeout(Some(std::time::Duration::from_millis(300)))
            .unwrap();
        in_namespace(bed, from, || {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind a sender");
            for _ in 0..sent {
                // A cut link refuses the send (EPERM) or drops it: either way it never
                // arrives.
                let _ = socket.send_to(b"hello", to_address);
                // Paced, so that no datagram is lost to a full socket buffer.
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        });
        let mut buffer = [0; 16];
        std::iter::from_fn(|| listener.recv(&mut buffer).ok())
            .filter(|&n| n == 5)
            .count()
    }

    /// Whether UDP datagrams from `from` reach `to`.
    fn udp_reaches(bed: &NetBed, from: usize, to: usize) -> bool {
        udp_delivered(bed, from, to, 5) > 0
    }

    /// The bed's cuts do what they say, each way, and heal. Root only (CI runs as root).
    #[test]
    fn cuts_stop_what_they_say_and_heal() {
        let bed = NetBed::new(2);
        assert!(udp_reaches(&bed, 0, 1), "a clean link carries datagrams");
        bed.cut(0, Cut::Outbound);
        assert!(!udp_reaches(&bed, 0, 1), "host 0 cannot send");
        assert!(udp_reaches(&bed, 1, 0), "host 0 still hears");
        bed.cut(0, Cut::Inbound);
        assert!(udp_reaches(&bed, 0, 1), "host 0 sends again");
        assert!(!udp_reaches(&bed, 1, 0), "host 0 cannot hear");
        bed.cut(0, Cut::Both);
        assert!(!udp_reaches(&bed, 0, 1) && !udp_reaches(&bed, 1, 0));
        bed.lossy(0, 100);
        assert!(!udp_reaches(&bed, 1, 0), "a loss of 100 % drops everything");
        bed.lossy(0, 50);
        let arrived = udp_delivered(&bed, 1, 0, 400);
        assert!(
            (100..300).contains(&arrived),
            "at 50 % loss about half of 400 datagrams arrive, not {arrived}"
        );
        bed.heal(0);
        assert!(udp_reaches(&bed, 0, 1) && udp_reaches(&bed, 1, 0), "healed");
        // Healing replaces the counters too: from here, only the next 5 datagrams.
        bed.heal(0);
        bed.heal(1);
        assert!(udp_reaches(&bed, 0, 1));
        let (sent, received) = (bed.traffic(0), bed.traffic(1));
        assert_eq!(
            sent.packets_out, 5,
            "host 0 counted the 5 datagrams it sent: {sent:?}"
        );
        assert_eq!(received.packets_in, 5, "host 1 counted 5 in: {received:?}");
        assert_eq!(
            sent.bytes_out,
            5 * (20 + 8 + 5),
            "IPv4 and UDP headers and 5 bytes each"
        );
    }
}
