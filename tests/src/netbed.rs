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
//! cuts need nothing more.
//!
//! Latency ([`NetBed::delay`]) is netem's other half, made in user space: an iptables rule
//! in the host's namespace queues what it sends to an NFQUEUE, and a thread of the test
//! holds each packet for the delay before it lets it go on, in order. These kernels have
//! the xtables `NFQUEUE` target (iptables-nft reaches it through `nft_compat`) but not
//! nftables' own `queue` statement, hence iptables for this one rule.
//!
//! Making namespaces needs root (CI runs the suite as root). A bed made without root, or
//! without `ip` or `nft`, fails the test saying how to fix it: never a silent skip.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
    /// The hosts whose sending is delayed, and the threads that hold their packets.
    delays: Mutex<BTreeMap<usize, Delayer>>,
}

/// The NFQUEUE every delayed host's packets wait in: each namespace has its own queues.
const DELAY_QUEUE: u16 = 0;

/// Most packets a delayed host may have waiting; more are dropped by the kernel, as a
/// full link would. Far above what a test's agents send in a delay of a second.
const DELAY_QUEUE_PACKETS: u32 = 8_192;

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
            delays: Mutex::default(),
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

    /// Holds every packet `host` sends on its link for `delay` before it goes on, in
    /// order, replacing any earlier delay: one way, so a round trip between two delayed
    /// hosts takes both delays. Cuts and loss apply as well, and [`NetBed::heal`] takes the
    /// delay off with them. A cut or a loss set while a delay holds packets drops those
    /// (the kernel flushes the queue when the host's filter is replaced).
    pub fn delay(&self, host: usize, delay: Duration) {
        let namespace = self.namespace(host);
        let mut delays = self.delays.lock().expect("the bed's delays");
        if let Some(earlier) = delays.remove(&host) {
            earlier.stop(&namespace).unwrap_or_else(|e| panic!("{e}"));
        }
        delays.insert(host, Delayer::start(&namespace, delay));
    }

    /// Takes every impairment off `host`'s link.
    pub fn heal(&self, host: usize) {
        // The delay first: the held packets go on before the filter is replaced, which
        // would drop them (see `hold_and_release`).
        let earlier = self.delays.lock().expect("the bed's delays").remove(&host);
        if let Some(earlier) = earlier {
            earlier
                .stop(&self.namespace(host))
                .unwrap_or_else(|e| panic!("{e}"));
        }
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
        let delays = std::mem::take(self.delays.get_mut().expect("the bed's delays"));
        for (host, delayer) in delays {
            // Dropped while a test fails, perhaps: no second panic, the namespaces go next.
            let _ = delayer.stop(&self.namespace(host));
        }
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

/// A thread in one host's namespace that holds the packets the host sends, each for the
/// delay, and then lets them go on.
#[derive(Debug)]
struct Delayer {
    stopping: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// The iptables rule that queues what a host sends on its link to [`DELAY_QUEUE`], as
/// `iptables` arguments after the command (`-A` or `-D`).
fn delay_rule() -> Vec<String> {
    let queue = DELAY_QUEUE.to_string();
    [
        "OUTPUT",
        "-o",
        "eth0",
        "-j",
        "NFQUEUE",
        "--queue-num",
        &queue,
    ]
    .map(str::to_owned)
    .to_vec()
}

impl Delayer {
    /// Binds the host's queue, then queues its packets to it; fails the test when either
    /// cannot be done, saying what to install.
    fn start(namespace: &str, delay: Duration) -> Self {
        let stopping = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = format!("/run/netns/{namespace}");
        let thread = std::thread::spawn({
            let stopping = Arc::clone(&stopping);
            move || {
                let queue = enter(&path).and_then(|()| open_delay_queue());
                let queue = match queue {
                    Ok(queue) => {
                        let _ = ready_tx.send(Ok(()));
                        queue
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                hold_and_release(queue, delay, &stopping);
            }
        });
        let ready = ready_rx
            .recv()
            .unwrap_or_else(|_| Err("the delay thread ended before it was ready".to_owned()));
        if let Err(e) = ready {
            panic!("cannot delay {namespace}'s packets: {e}");
        }
        let delayer = Self { stopping, thread };
        // Only now, with a listener bound: a queue without one drops what reaches it.
        if let Err(e) = iptables(namespace, "-A") {
            let _ = delayer.stop(namespace);
            panic!("{e}");
        }
        delayer
    }

    /// Stops queueing, lets every held packet go, and waits for the thread; says what
    /// failed, if anything did.
    fn stop(self, namespace: &str) -> Result<(), String> {
        let unqueued = iptables(namespace, "-D");
        // Stopped even when the rule would not go: the thread must not outlive the bed.
        self.stopping.store(true, Ordering::Relaxed);
        let joined = self.thread.join().map_err(|_| {
            format!("the thread delaying {namespace}'s packets failed (its panic is above)")
        });
        unqueued.and(joined)
    }
}

/// Moves the calling thread into the network namespace at `path`.
fn enter(path: &str) -> Result<(), String> {
    let namespace = std::fs::File::open(path).map_err(|e| format!("open {path}: {e}"))?;
    nix::sched::setns(namespace, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("enter {path}: {e}"))
}

/// The calling thread's namespace's delay queue, bound: metadata only (a verdict needs
/// no payload), non-blocking, room for [`DELAY_QUEUE_PACKETS`].
fn open_delay_queue() -> Result<nfq::Queue, String> {
    let mut queue = nfq::Queue::open().map_err(|e| format!("open a netfilter queue: {e}"))?;
    queue
        .bind(DELAY_QUEUE)
        .and_then(|()| queue.set_copy_range(DELAY_QUEUE, 0))
        .and_then(|()| queue.set_queue_max_len(DELAY_QUEUE, DELAY_QUEUE_PACKETS))
        .map_err(|e| {
            format!("bind netfilter queue {DELAY_QUEUE} (the kernel needs NFQUEUE): {e}")
        })?;
    queue.set_nonblocking(true);
    Ok(queue)
}

/// Holds each packet that reaches `queue` until `delay` after it arrived, then accepts
/// it, until `stopping`; then accepts all that are left at once.
fn hold_and_release(mut queue: nfq::Queue, delay: Duration, stopping: &AtomicBool) {
    // Packets leave in the order they came, so the oldest is always the next one due.
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    loop {
        let stop = stopping.load(Ordering::Relaxed);
        loop {
            match queue.recv() {
                Ok(packet) => held.push_back((Instant::now() + delay, packet)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // The answer to a verdict for a packet the kernel no longer holds: it
                // flushes a namespace's queues whenever a netfilter hook there goes away,
                // as when `cut`, `lossy` or `heal` replace the host's filter. Those
                // packets are lost, as a short burst of loss would lose them.
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32) => {}
                Err(e) => panic!("reading the delay queue: {e}"),
            }
        }
        let now = Instant::now();
        while let Some((due, _)) = held.front() {
            if !stop && *due > now {
                break;
            }
            let (_, mut packet) = held.pop_front().expect("the front packet");
            packet.set_verdict(nfq::Verdict::Accept);
            queue
                .verdict(packet)
                .unwrap_or_else(|e| panic!("letting a delayed packet go: {e}"));
        }
        if stop {
            // The rule is gone, so nothing more arrives; unbinding frees the queue.
            let _ = queue.unbind(DELAY_QUEUE);
            return;
        }
        // A millisecond is fine grain for delays of tens of milliseconds and more.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Adds (`-A`) or deletes (`-D`) the rule that queues what a host sends; iptables' error,
/// and what to install when it is missing, if that fails.
fn iptables(namespace: &str, command: &str) -> Result<(), String> {
    let rule = delay_rule();
    let out = Command::new("ip")
        .args(["netns", "exec", namespace, "iptables", "-w", command])
        .args(&rule)
        .output()
        .map_err(|e| format!("run ip (iproute2): {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "iptables {command} {} in {namespace} failed (the bed's delay needs iptables: \
         install it, scripts/setup-host.sh does): {}",
        rule.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    ))
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

    /// When each of `count` numbered datagrams, sent from `from` 5 ms apart, reached `to`
    /// after the first was sent, in the order they arrived; those lost in 2 s are missing.
    fn arrivals(bed: &NetBed, from: usize, to: usize, count: u8) -> Vec<(u8, Duration)> {
        let to_address = std::net::SocketAddr::from((bed.address(to), AGENT_PORT));
        let listener = in_namespace(bed, to, || {
            std::net::UdpSocket::bind(to_address).expect("bind in the namespace")
        });
        listener
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let sender = in_namespace(bed, from, || {
            std::net::UdpSocket::bind("0.0.0.0:0").expect("bind a sender")
        });
        let sent_at = Instant::now();
        for n in 0..count {
            sender.send_to(&[n], to_address).expect("send a datagram");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut buffer = [0; 4];
        std::iter::from_fn(|| {
            let read = listener.recv(&mut buffer).ok()?;
            (read == 1).then(|| (buffer[0], sent_at.elapsed()))
        })
        .take(usize::from(count))
        .collect()
    }

    /// A delay holds what the host sends, one way only, keeps the order, loses nothing,
    /// and heals. Root only (CI runs as root).
    #[test]
    fn a_delay_holds_what_a_host_sends_in_order_and_heals() {
        let bed = NetBed::new(2);
        let delay = Duration::from_millis(300);
        bed.delay(0, delay);
        let delayed = arrivals(&bed, 0, 1, 20);
        let order: Vec<u8> = delayed.iter().map(|(n, _)| *n).collect();
        assert_eq!(order, (0..20).collect::<Vec<_>>(), "all arrive, in order");
        assert!(
            delayed.iter().all(|(_, at)| *at >= delay),
            "nothing arrives before its delay: {delayed:?}"
        );
        let other_way = arrivals(&bed, 1, 0, 1);
        assert!(
            other_way.len() == 1 && other_way[0].1 < delay,
            "what host 0 receives is not delayed: {other_way:?}"
        );
        // Replaced, not added to.
        bed.delay(0, Duration::from_millis(100));
        let shorter = arrivals(&bed, 0, 1, 1);
        assert!(
            shorter.len() == 1 && (Duration::from_millis(100)..delay).contains(&shorter[0].1),
            "a new delay replaces the old: {shorter:?}"
        );
        // A filter replaced while packets are held drops them, and the bed goes on.
        let sender = in_namespace(&bed, 0, || {
            std::net::UdpSocket::bind("0.0.0.0:0").expect("bind a sender")
        });
        for _ in 0..20 {
            let _ = sender.send_to(b"held", (bed.address(1), AGENT_PORT));
        }
        bed.cut(0, Cut::Inbound);
        std::thread::sleep(Duration::from_millis(300));
        let still_delayed = arrivals(&bed, 0, 1, 1);
        assert!(
            still_delayed.len() == 1 && still_delayed[0].1 >= Duration::from_millis(100),
            "a cut of what host 0 hears leaves its delay on: {still_delayed:?}"
        );
        bed.heal(0);
        let healed = arrivals(&bed, 0, 1, 1);
        assert!(
            healed.len() == 1 && healed[0].1 < Duration::from_millis(100),
            "healed, nothing is held: {healed:?}"
        );
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
