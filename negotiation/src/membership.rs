//! SWIM membership (Das, Gupta, Motivala 2002) with suspicion and incarnation numbers,
//! sans-IO: failure detection by direct and indirect probes, dissemination piggybacked on
//! probes, node metadata spread the same way, and push-pull state exchange on join and
//! periodically so that newcomers and healed partitions catch up.
//!
//! Defaults follow memberlist's LAN profile: a probe every second, 500 ms to answer,
//! three indirect probes, suspicion lasting `4 × log10(n)` probe intervals (at least 5 s),
//! pending gossip pushed to three random members every 200 ms besides riding on probes,
//! a push-pull exchange every 30 s, stretched as the cluster grows past 32 members.
//!
//! Every node holds every member, so a process simulating N nodes holds N² records: ids
//! and metadata are shared through an [`Interner`] rather than copied into each table.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use crate::messages::{
    Ack, Body, MemberState, MemberUpdate, NodeMeta, Ping, PingReq, SignedStatement, Statement, Sync,
};

/// How far above its own incarnation a node refutes a statement about itself that it did
/// not make. A node raises its incarnation by one per refutation or metadata change, at
/// most every couple of seconds: 2^32 is centuries of that, while a forged `u64::MAX`
/// (which no refutation could outbid) is left alone rather than followed to the top.
pub const MAX_INCARNATION_STEP: u64 = 1 << 32;

/// What a signed statement states. Each kind is signed for its own context, which no
/// message kind shares: a signed frame never passes for a statement, nor one kind of
/// statement for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    /// A member's [`Statement`] about itself.
    Member,
    /// An owner's [`crate::messages::Grant`] of a replica to a node.
    Grant,
    /// An author's [`crate::messages::WorkloadRecord`] of a workload's desired state.
    Record,
}

impl StatementKind {
    /// The signature context.
    pub fn context(self) -> &'static str {
        match self {
            Self::Member => "member-statement",
            Self::Grant => "replica-grant",
            Self::Record => "workload-record",
        }
    }
}

/// Signs this node's statements, and checks other nodes' (see [`SignedStatement`]). The
/// agent signs with its node key and puts its certificate in the credential; the
/// simulator uses keyed checksums.
pub trait Notary: std::fmt::Debug + Send {
    /// Signs `statement`, the bytes of a statement of `kind` by this node.
    fn sign(&self, kind: StatementKind, statement: Vec<u8>) -> SignedStatement;
    /// Whether `signed`, of `kind`, was signed by node `signer`, with a credential valid
    /// at `now_ms` (ms since the Unix epoch in the agent, virtual time in the simulator).
    fn verify(
        &self,
        kind: StatementKind,
        signer: &str,
        signed: &SignedStatement,
        now_ms: u64,
    ) -> bool;
}

/// Most members a table holds (this node excluded). Growth needs statements signed by
/// enrolled nodes, so only a mesh this large reaches it; it is the backstop that bounds
/// memory whatever a peer sends.
pub const DEFAULT_MAX_MEMBERS: usize = 16_384;

/// Membership settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MembershipConfig {
    /// Time between probes.
    pub probe_interval_ms: u64,
    /// Time a direct probe has to be answered before indirect probes go out.
    pub probe_timeout_ms: u64,
    /// Members asked to probe indirectly.
    pub indirect_probes: usize,
    /// Suspicion lasts this many probe intervals × log10(members), at least the minimum.
    pub suspicion_multiplier: u64,
    /// Shortest suspicion.
    pub min_suspicion_ms: u64,
    /// Gossip entries piggybacked per message.
    pub max_piggyback: usize,
    /// Time between gossip rounds: while updates are pending, they are pushed to
    /// `gossip_nodes` random members (as a `Sync` that asks no reply, which every
    /// protocol version understands). Probes alone carry news to about two members a
    /// second; rounds spread a suspicion, a death or a refutation in a few hundred
    /// milliseconds per hop, which is what lets a refutation outrun suspicion timers.
    pub gossip_interval_ms: u64,
    /// Members each gossip round goes to.
    pub gossip_nodes: usize,
    /// Metadata announcements the whole cluster may make per second through
    /// [`Membership::set_meta_paced`]. Every member receives every update several times
    /// over (the retransmit limit), eight to a message, about seventeen messages a
    /// second: the cluster as a whole can carry some ten updates a second whatever its
    /// size. Each node therefore re-announces at most once per `members / rate` seconds.
    pub cluster_announcements_per_s: u64,
    /// Shortest time between a node's paced announcements, in small clusters.
    pub min_announce_interval_ms: u64,
    /// Each update is sent this many × log10(members + 1) times (at least 3).
    pub retransmit_multiplier: u64,
    /// Time between push-pull exchanges with a random member, in clusters of up to 32
    /// members; beyond, it grows with log2 of the size as memberlist's does (×2 at 64,
    /// ×6 at 1,000, ×10 at 10,000), so that full-state exchanges do not grow as N².
    pub sync_interval_ms: u64,
    /// Updates per `Sync` message (keeps frames under the size cap).
    pub max_sync_chunk: usize,
    /// How long dead members are remembered (so late gossip does not revive them).
    pub dead_retention_ms: u64,
    /// Most members held; a new one beyond is ignored (see [`DEFAULT_MAX_MEMBERS`]).
    pub max_members: usize,
    /// Time between attempts to reach a random dead member. After a partition both sides
    /// hold the other dead and stop probing it; this is how they find each other again.
    pub reconnect_interval_ms: u64,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            probe_interval_ms: 1_000,
            probe_timeout_ms: 500,
            indirect_probes: 3,
            suspicion_multiplier: 4,
            min_suspicion_ms: 5_000,
            max_piggyback: 8,
            gossip_interval_ms: 200,
            gossip_nodes: 3,
            cluster_announcements_per_s: 8,
            min_announce_interval_ms: 2_000,
            retransmit_multiplier: 4,
            sync_interval_ms: 30_000,
            max_sync_chunk: 100,
            dead_retention_ms: 300_000,
            max_members: DEFAULT_MAX_MEMBERS,
            reconnect_interval_ms: 10_000,
        }
    }
}

/// A member as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Node id.
    pub id: Arc<str>,
    /// Liveness.
    pub state: MemberState,
    /// Latest incarnation heard.
    pub incarnation: u64,
    /// Latest metadata heard, if any.
    pub meta: Option<Arc<NodeMeta>>,
    /// The member's signed statement of that metadata, which this node relays; none when
    /// the member told this node directly without one (an older version).
    pub statement: Option<Arc<SignedStatement>>,
    /// When the state last changed (ms).
    pub since_ms: u64,
}

/// Shares member ids and metadata between membership tables. Every table holds every
/// member, so the tables of many nodes in one process (a simulation of thousands) would
/// otherwise hold N² copies of the same strings and records; with one interner they hold
/// N² pointers. A lone agent's table has an interner of its own. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Interner(Arc<Mutex<InternTables>>);

#[derive(Debug, Default)]
struct InternTables {
    ids: HashSet<Arc<str>>,
    /// Each node's latest metadata and signed statement heard by any table: an equal
    /// copy decoded elsewhere is replaced by this one.
    records: HashMap<Arc<str>, Shared>,
    /// Size after the last pruning: the next one comes when the tables have doubled.
    pruned_len: usize,
}

/// What the tables share of one node.
#[derive(Debug, Default)]
struct Shared {
    meta: Option<Arc<NodeMeta>>,
    statement: Option<Arc<SignedStatement>>,
}

impl Interner {
    fn tables(&self) -> std::sync::MutexGuard<'_, InternTables> {
        // The tables are only ever inserted into whole; a panic elsewhere leaves them valid.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shared copy of `id`.
    fn id(&self, id: &str) -> Arc<str> {
        let mut tables = self.tables();
        if let Some(known) = tables.ids.get(id) {
            return known.clone();
        }
        let id: Arc<str> = Arc::from(id);
        tables.ids.insert(id.clone());
        tables.prune_if_grown();
        id
    }

    /// The shared copy of `meta`, `node`'s metadata.
    fn meta(&self, node: &Arc<str>, meta: Arc<NodeMeta>) -> Arc<NodeMeta> {
        let mut tables = self.tables();
        let shared = tables.records.entry(node.clone()).or_default();
        shared_copy(&mut shared.meta, meta)
    }

    /// The shared copy of `statement`, `node`'s signed statement.
    fn statement(&self, node: &Arc<str>, statement: Arc<SignedStatement>) -> Arc<SignedStatement> {
        let mut tables = self.tables();
        let shared = tables.records.entry(node.clone()).or_default();
        shared_copy(&mut shared.statement, statement)
    }
}

/// Members in id order, in one allocation. A simulation holds N tables of N members, so
/// the per-entry overhead of a map (which about doubles an entry) decides whether 10,000
/// nodes fit in memory; lookups are binary searches, inserts (joins) move the tail.
#[derive(Debug, Default)]
struct MemberTable(Vec<Member>);

impl MemberTable {
    fn position(&self, id: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|m| (*m.id).cmp(id))
    }

    fn get(&self, id: &str) -> Option<&Member> {
        self.position(id).ok().map(|at| &self.0[at])
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut Member> {
        self.position(id).ok().map(|at| &mut self.0[at])
    }

    /// Adds a member not in the table yet.
    fn insert(&mut self, member: Member) {
        if let Err(at) = self.position(&member.id) {
            self.0.insert(at, member);
        }
    }

    /// Adds many members at once (one sort instead of a move per insert); members
    /// already known stay as they are.
    fn extend(&mut self, members: impl IntoIterator<Item = Member>) {
        self.0.extend(members);
        // Stable: an existing member sorts before a new one with the same id and wins.
        self.0.sort_by(|a, b| a.id.cmp(&b.id));
        self.0.dedup_by(|later, earlier| later.id == earlier.id);
        self.0.shrink_to_fit();
    }

    fn remove(&mut self, id: &str) -> Option<Member> {
        self.position(id).ok().map(|at| self.0.remove(at))
    }

    fn iter(&self) -> std::slice::Iter<'_, Member> {
        self.0.iter()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `value`, or the equal copy `slot` holds; `value` becomes the held copy otherwise.
fn shared_copy<T: PartialEq>(slot: &mut Option<Arc<T>>, value: Arc<T>) -> Arc<T> {
    match slot {
        Some(known) if Arc::ptr_eq(known, &value) || **known == *value => known.clone(),
        _ => {
            *slot = Some(value.clone());
            value
        }
    }
}

impl InternTables {
    /// Forgets what no table refers to any more (members long dead), so that churn does
    /// not grow the tables without bound. Amortized: runs when they have doubled.
    fn prune_if_grown(&mut self) {
        if self.ids.len() < 2 * self.pruned_len.max(512) {
            return;
        }
        // Held here and as the key of `records`: referenced elsewhere only above two.
        self.records.retain(|id, _| Arc::strong_count(id) > 2);
        self.ids.retain(|id| Arc::strong_count(id) > 1);
        self.pruned_len = self.ids.len();
    }
}

/// Changes the driver acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A member appeared (or came back).
    Joined(String),
    /// A member is suspected.
    Suspected(String),
    /// A suspected member refuted: alive after all.
    Recovered(String),
    /// A member was declared dead.
    Died(String),
    /// A member's metadata changed.
    MetaChanged(String),
}

#[derive(Debug)]
enum ProbePhase {
    Direct { deadline_ms: u64 },
    Indirect { deadline_ms: u64 },
}

#[derive(Debug)]
struct Probe {
    target: Arc<str>,
    seq: u64,
    phase: ProbePhase,
}

#[derive(Debug)]
struct Gossip {
    update: MemberUpdate,
    sent: u64,
}

/// The membership state machine of one node.
#[derive(Debug)]
pub struct Membership {
    me: String,
    incarnation: u64,
    meta: Arc<NodeMeta>,
    /// This node's signed statement of `incarnation` and `meta`.
    statement: Arc<SignedStatement>,
    notary: Box<dyn Notary>,
    /// Statements refused (forged, for another incarnation, or from a bad credential).
    refused_statements: u64,
    /// Set once a statement in the message being applied failed to verify: the rest of
    /// its unproven claims are dropped unchecked, so that one message costs at most one
    /// failed signature check.
    distrust_message: bool,
    config: MembershipConfig,
    interner: Interner,
    members: MemberTable,
    /// Members declared dead, oldest first, with when: each is forgotten once
    /// `dead_retention_ms` has passed (an entry is stale if the member came back).
    died: VecDeque<(u64, Arc<str>)>,
    /// Members known without their metadata (their announcement was lost).
    without_meta: BTreeSet<Arc<str>>,
    probe_order: Vec<Arc<str>>,
    probe_index: usize,
    probe: Option<Probe>,
    next_probe_ms: u64,
    next_sync_ms: u64,
    next_reconnect_ms: u64,
    next_gossip_ms: u64,
    /// Metadata waiting for its paced announcement, and when that may go.
    pending_meta: Option<NodeMeta>,
    next_announce_ms: u64,
    /// Our relay seq → (requester, requester's seq, expiry).
    relays: HashMap<u64, (String, u64, u64)>,
    suspicions: BTreeMap<Arc<str>, u64>,
    gossip: Vec<Gossip>,
    next_seq: u64,
    rng: u64,
    /// Seed members, contacted again while no member is known (a lost join).
    seeds: Vec<String>,
    transmits: VecDeque<(String, Body)>,
    events: VecDeque<MembershipEvent>,
}

impl Membership {
    /// A member `me` with its metadata; `seed` drives probe order and sampling, and
    /// `notary` signs this node's statements and checks others'.
    pub fn new(
        me: impl Into<String>,
        meta: NodeMeta,
        config: MembershipConfig,
        now_ms: u64,
        seed: u64,
        notary: Box<dyn Notary>,
    ) -> Self {
        let me = me.into();
        let statement = Arc::new(
            notary.sign(
                StatementKind::Member,
                Statement {
                    node: me.clone(),
                    incarnation: 0,
                    meta: meta.clone(),
                }
                .encode(),
            ),
        );
        let mut membership = Self {
            incarnation: 0,
            meta: Arc::new(meta),
            statement,
            notary,
            refused_statements: 0,
            distrust_message: false,
            config,
            interner: Interner::default(),
            members: MemberTable::default(),
            died: VecDeque::new(),
            without_meta: BTreeSet::new(),
            probe_order: Vec::new(),
            probe_index: 0,
            probe: None,
            next_probe_ms: now_ms + config.probe_interval_ms,
            next_sync_ms: now_ms + config.sync_interval_ms,
            next_reconnect_ms: now_ms + config.reconnect_interval_ms,
            next_gossip_ms: now_ms,
            pending_meta: None,
            next_announce_ms: now_ms,
            relays: HashMap::new(),
            suspicions: BTreeMap::new(),
            gossip: Vec::new(),
            next_seq: 0,
            rng: seed | 1,
            seeds: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            me,
        };
        // Nodes started together must not probe and exchange state in lockstep: the
        // first probe and the first push-pull come at a random point of their interval
        // (memberlist staggers its timers the same way).
        membership.next_probe_ms =
            now_ms + 1 + membership.random() % config.probe_interval_ms.max(1);
        membership.next_sync_ms = now_ms + 1 + membership.random() % config.sync_interval_ms.max(1);
        let announce = membership.self_update(true);
        membership.enqueue_gossip(announce);
        membership
    }

    /// Shares ids and metadata with the other tables that use `interner` (see
    /// [`Interner`]); call before any member is known.
    pub fn share_interner(&mut self, interner: Interner) {
        self.interner = interner;
    }

    /// Records `updates` as known members without gossiping them or raising events, as if
    /// the exchanges of a completed join had brought them. For starting a simulation of
    /// thousands of nodes from a converged view: joining them one by one costs minutes of
    /// virtual time and N² pieces of gossip before anything can be measured.
    pub fn assume_known(&mut self, now_ms: u64, updates: &[MemberUpdate]) {
        let mut new = Vec::with_capacity(updates.len());
        for update in updates
            .iter()
            .filter(|u| u.node != self.me && u.state != MemberState::Dead)
        {
            if self.members.get(&update.node).is_some() {
                continue;
            }
            let id = self.interner.id(&update.node);
            let meta = update
                .meta
                .clone()
                .map(|meta| self.interner.meta(&id, meta));
            if meta.is_none() {
                self.without_meta.insert(id.clone());
            }
            if update.state == MemberState::Suspect {
                self.suspicions
                    .insert(id.clone(), now_ms + self.suspicion_ms());
            }
            let statement = update
                .statement
                .clone()
                .map(|statement| self.interner.statement(&id, statement));
            self.probe_order.push(id.clone());
            new.push(Member {
                id,
                state: update.state,
                incarnation: update.incarnation,
                meta,
                statement,
                since_ms: now_ms,
            });
        }
        self.members.extend(new);
        // The push-pull interval grows with the cluster: the first exchange comes at a
        // random point of the interval for this size, or thousands of nodes started
        // together would all exchange their full state within the base 30 s.
        self.next_sync_ms = now_ms + 1 + self.random() % self.sync_interval_ms().max(1);
        // Likewise paced announcements: nodes started together would otherwise all spend
        // their first one at the same moment, which is the burst pacing is there to avoid.
        self.next_announce_ms = now_ms + self.random() % self.announce_interval_ms().max(1);
        // A fresh random round: nodes given the same list must not all probe the same
        // member at the same time.
        self.probe_index = 0;
        let order = std::mem::take(&mut self.probe_order);
        self.probe_order = self.shuffled(order);
    }

    /// This node's view of itself as gossip, with its metadata: what [`Self::assume_known`]
    /// takes from every other node.
    pub fn announcement(&self) -> MemberUpdate {
        self.self_update(true)
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.me
    }

    /// `items` in a random order (Fisher–Yates).
    fn shuffled(&mut self, mut items: Vec<Arc<str>>) -> Vec<Arc<str>> {
        for i in (1..items.len()).rev() {
            let j = (self.random() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
        items
    }

    /// Up to `count` distinct live members other than `except`, drawn at random.
    fn distinct_live_members(&mut self, count: usize, except: Option<&str>) -> Vec<Arc<str>> {
        let mut picked: Vec<Arc<str>> = Vec::with_capacity(count);
        for _ in 0..4 * count {
            if picked.len() == count {
                break;
            }
            if let Some(pick) = self.random_live_member(except)
                && !picked.contains(&pick)
            {
                picked.push(pick);
            }
        }
        picked
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// This node's liveness as gossip; `with_meta` adds its metadata and its signed
    /// statement of them (the metadata for peers of older versions, which read no
    /// statement).
    fn self_update(&self, with_meta: bool) -> MemberUpdate {
        MemberUpdate {
            node: self.me.clone(),
            state: MemberState::Alive,
            incarnation: self.incarnation,
            meta: with_meta.then(|| self.meta.clone()),
            statement: with_meta.then(|| self.statement.clone()),
        }
    }

    /// Moves to `incarnation` and signs the statement of it and the current metadata.
    fn restate(&mut self, incarnation: u64) {
        self.incarnation = incarnation;
        let statement = Statement {
            node: self.me.clone(),
            incarnation,
            meta: (*self.meta).clone(),
        };
        self.statement = Arc::new(self.notary.sign(StatementKind::Member, statement.encode()));
    }

    /// Announces the current metadata again under a new incarnation, newly signed: after
    /// the node's credential is renewed, so that its statements stay verifiable.
    pub fn restate_meta(&mut self) {
        self.set_meta((*self.meta).clone());
    }

    /// The notary this node signs with (the negotiator's owner signs its grants with it).
    pub(crate) fn notary(&self) -> &dyn Notary {
        self.notary.as_ref()
    }

    /// Statements from other members refused so far (forged, for another incarnation,
    /// or signed with a credential that does not check).
    pub fn refused_statements(&self) -> u64 {
        self.refused_statements
    }

    /// Contacts seed members: pushes this node's state and asks for theirs.
    pub fn join(&mut self, seeds: &[String]) {
        // Seeds arrive one at a time as the agent reaches them: each joins the list.
        for seed in seeds {
            if *seed != self.me && !self.seeds.contains(seed) {
                self.seeds.push(seed.clone());
            }
        }
        for seed in seeds {
            if *seed != self.me {
                self.send_sync(seed.clone(), true);
            }
        }
    }

    /// Announces new metadata (capacity, labels, images) under a new incarnation.
    pub fn set_meta(&mut self, meta: NodeMeta) {
        // Newer than anything waiting for its paced turn.
        self.pending_meta = None;
        self.meta = Arc::new(meta);
        self.restate(self.incarnation.saturating_add(1));
        let update = self.self_update(true);
        self.enqueue_gossip(update);
    }

    /// Members other than this node, in id order.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.iter()
    }

    /// How many members other than this node are known, dead ones included.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// A member by id.
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.get(id)
    }

    /// Alive (or suspected, not yet dead) members other than this node.
    pub fn live_members(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.state != MemberState::Dead)
    }

    /// The cluster size for SWIM's logarithmic timeouts. Counts recently dead members
    /// too (they are kept for a while): a slight overestimate, which only lengthens
    /// timeouts, bought for constant time on every piece of gossip.
    fn live_count(&self) -> usize {
        self.members.len() + 1
    }

    /// Announces new metadata no more often than the cluster's gossip can carry (see
    /// [`MembershipConfig::cluster_announcements_per_s`]): at once if this node's last
    /// paced announcement is old enough, else when its turn comes, with whatever was
    /// set last. For values that change with every placement, such as free capacity;
    /// members then see a slightly older value, which is only ever a hint.
    pub fn set_meta_paced(&mut self, now_ms: u64, meta: NodeMeta) {
        if now_ms >= self.next_announce_ms {
            self.set_meta(meta);
            self.next_announce_ms = now_ms + self.announce_interval_ms();
        } else {
            self.pending_meta = Some(meta);
        }
    }

    fn announce_interval_ms(&self) -> u64 {
        let rate = self.config.cluster_announcements_per_s.max(1);
        (self.live_count() as u64 * 1_000 / rate).max(self.config.min_announce_interval_ms)
    }

    /// memberlist's push-pull scaling: the base interval up to 32 members, then one more
    /// multiple for each doubling (rounded up).
    fn sync_interval_ms(&self) -> u64 {
        let n = self.live_count() as f64;
        let multiplier = if n <= 32.0 {
            1.0
        } else {
            (n.log2() - 32f64.log2()).ceil() + 1.0
        };
        (self.config.sync_interval_ms as f64 * multiplier) as u64
    }

    fn retransmit_limit(&self) -> u64 {
        let n = self.live_count() as f64;
        (self.config.retransmit_multiplier as f64 * (n + 1.0).log10())
            .ceil()
            .max(3.0) as u64
    }

    fn suspicion_ms(&self) -> u64 {
        let n = (self.live_count() as f64).max(1.0);
        let ms = (self.config.suspicion_multiplier as f64
            * n.log10().max(1.0)
            * self.config.probe_interval_ms as f64) as u64;
        ms.max(self.config.min_suspicion_ms)
    }

    fn enqueue_gossip(&mut self, update: MemberUpdate) {
        // A bare liveness update must not push out a pending one that carries the same
        // incarnation's metadata.
        let carries_meta = |u: &MemberUpdate| u.meta.is_some() || u.statement.is_some();
        if !carries_meta(&update)
            && self.gossip.iter().any(|g| {
                g.update.node == update.node
                    && g.update.incarnation == update.incarnation
                    && g.update.state == update.state
                    && carries_meta(&g.update)
            })
        {
            return;
        }
        self.gossip.retain(|g| g.update.node != update.node);
        self.gossip.push(Gossip { update, sent: 0 });
    }

    /// Gossip for a message to `to`: our own liveness, what we believe about `to` if it is
    /// not "alive" (so a node wrongly suspected or declared dead learns it and refutes at
    /// once), and the least-sent entries, counted as sent once more.
    fn piggyback(&mut self, to: &str) -> Vec<MemberUpdate> {
        let limit = self.retransmit_limit();
        self.gossip.sort_by_key(|g| g.sent);
        let mut out = vec![self.self_update(false)];
        if let Some(member) = self.members.get(to)
            && member.state != MemberState::Alive
        {
            out.push(MemberUpdate {
                node: member.id.to_string(),
                state: member.state,
                incarnation: member.incarnation,
                meta: None,
                statement: None,
            });
        }
        for gossip in self.gossip.iter_mut().take(self.config.max_piggyback) {
            gossip.sent += 1;
            out.push(gossip.update.clone());
        }
        self.gossip.retain(|g| g.sent < limit);
        out
    }

    /// Applies one piece of gossip. `from` is the node that sent it (proven by the
    /// transport), `None` for this node's own conclusions.
    ///
    /// What SWIM lets each party say, and no more:
    /// - a member speaks for itself: its own `Alive` at any higher incarnation (a
    ///   refutation, new metadata) is taken from it directly;
    /// - a third party relays: a member's `Alive` at a new incarnation only with the
    ///   member's signed statement of that incarnation, and a suspicion or death only of
    ///   the incarnation held, one it could have observed. A statement about an
    ///   incarnation the member never issued (`Dead @ u64::MAX`, which no refutation
    ///   could outbid) is dropped;
    /// - a member is first learned from itself or from its own statement, never from a
    ///   third party's word: nobody can invent members, or addresses for this node to dial;
    /// - metadata comes from the member, directly or through its statement, never from
    ///   the relay;
    /// - statements about this node that it did not make are refuted, whatever their
    ///   state, with an incarnation above them (saturating: it never wraps).
    fn apply(&mut self, now_ms: u64, from: Option<&str>, update: &MemberUpdate) {
        if update.node == self.me {
            let refute = match update.state {
                // A newer "alive" we did not say: forged, or from our previous run.
                MemberState::Alive => update.incarnation > self.incarnation,
                MemberState::Suspect | MemberState::Dead => update.incarnation >= self.incarnation,
            };
            if refute && update.incarnation <= self.incarnation.saturating_add(MAX_INCARNATION_STEP)
            {
                self.restate(update.incarnation.saturating_add(1));
                let refutation = self.self_update(true);
                self.enqueue_gossip(refutation);
            }
            return;
        }
        let firsthand = from == Some(update.node.as_str());
        let Some(member) = self.members.get(update.node.as_str()) else {
            self.learn(now_ms, firsthand, update);
            return;
        };
        let held = member.incarnation;
        let newer = match (update.state, member.state) {
            // A higher incarnation is the member's own word: from the member itself, or
            // with its signed statement (checked below).
            (MemberState::Alive, _) => update.incarnation > held,
            // A member says nothing but "alive" about itself.
            (_, _) if firsthand => false,
            (MemberState::Suspect, MemberState::Alive) => update.incarnation == held,
            (MemberState::Suspect, _) => false,
            (MemberState::Dead, MemberState::Dead) => false,
            (MemberState::Dead, _) => update.incarnation == held,
        };
        if !newer {
            if update.incarnation == held && completes(member, firsthand, update) {
                self.complete(now_ms, firsthand, update);
            }
            return;
        }
        let proven = if update.state == MemberState::Alive {
            let proven = self.proven(now_ms, firsthand, update);
            if proven.is_none() && !firsthand {
                return;
            }
            proven
        } else {
            None
        };
        let suspicion_ms = self.suspicion_ms();
        let interner = &self.interner;
        let Some(member) = self.members.get_mut(update.node.as_str()) else {
            return;
        };
        let previous = member.state;
        member.state = update.state;
        member.incarnation = update.incarnation;
        match &proven {
            Some(proven) => {
                member.statement = proven
                    .statement
                    .clone()
                    .map(|statement| interner.statement(&member.id, statement));
                if member.meta.as_ref() != Some(&proven.meta) {
                    member.meta = Some(interner.meta(&member.id, proven.meta.clone()));
                    self.without_meta.remove(&member.id);
                    self.events
                        .push_back(MembershipEvent::MetaChanged(update.node.clone()));
                }
            }
            // A bare "alive" from the member at a new incarnation: the statement held is
            // of an older one and can no longer be relayed with it.
            None if update.state == MemberState::Alive => member.statement = None,
            None => {}
        }
        if previous != update.state {
            member.since_ms = now_ms;
        }
        let id = member.id.clone();
        match (previous, update.state) {
            (MemberState::Alive, MemberState::Suspect) => {
                self.suspicions.insert(id, now_ms + suspicion_ms);
                self.events
                    .push_back(MembershipEvent::Suspected(update.node.clone()));
            }
            (MemberState::Suspect, MemberState::Alive) => {
                self.suspicions.remove(update.node.as_str());
                self.events
                    .push_back(MembershipEvent::Recovered(update.node.clone()));
            }
            (MemberState::Dead, MemberState::Alive) => {
                self.events
                    .push_back(MembershipEvent::Joined(update.node.clone()));
            }
            (_, MemberState::Dead) if previous != MemberState::Dead => {
                self.suspicions.remove(update.node.as_str());
                self.died.push_back((now_ms, id));
                self.events
                    .push_back(MembershipEvent::Died(update.node.clone()));
            }
            _ => {}
        }
        self.enqueue_gossip(relayed(update, proven.as_ref()));
    }

    /// A member not in the table: learned from itself, or from its signed statement.
    fn learn(&mut self, now_ms: u64, firsthand: bool, update: &MemberUpdate) {
        if update.state == MemberState::Dead || self.members.len() >= self.config.max_members {
            return;
        }
        let proven = self.proven(now_ms, firsthand, update);
        if proven.is_none() && !firsthand {
            return;
        }
        let id = self.interner.id(&update.node);
        let (meta, statement) = match &proven {
            Some(proven) => (
                Some(self.interner.meta(&id, proven.meta.clone())),
                proven
                    .statement
                    .clone()
                    .map(|statement| self.interner.statement(&id, statement)),
            ),
            // The member itself, in a bare probe: known now, its metadata asked for.
            None => {
                self.without_meta.insert(id.clone());
                (None, None)
            }
        };
        self.members.insert(Member {
            id: id.clone(),
            state: update.state,
            incarnation: update.incarnation,
            meta,
            statement,
            since_ms: now_ms,
        });
        self.probe_order.push(id.clone());
        self.events
            .push_back(MembershipEvent::Joined(update.node.clone()));
        if update.state == MemberState::Suspect {
            self.suspicions.insert(id, now_ms + self.suspicion_ms());
        }
        self.enqueue_gossip(relayed(update, proven.as_ref()));
    }

    /// Metadata (or the statement to relay it with) for the incarnation held, where the
    /// record lacks it or the member itself corrects it.
    fn complete(&mut self, now_ms: u64, firsthand: bool, update: &MemberUpdate) {
        let Some(proven) = self.proven(now_ms, firsthand, update) else {
            return;
        };
        let interner = &self.interner;
        let Some(member) = self.members.get_mut(update.node.as_str()) else {
            return;
        };
        if let Some(statement) = &proven.statement {
            member.statement = Some(interner.statement(&member.id, statement.clone()));
        }
        if member.meta.as_ref() != Some(&proven.meta) {
            member.meta = Some(interner.meta(&member.id, proven.meta.clone()));
            self.without_meta.remove(&member.id);
            self.events
                .push_back(MembershipEvent::MetaChanged(update.node.clone()));
        }
        // Pass it on, or it reaches only the node's direct contacts.
        self.enqueue_gossip(relayed(update, Some(&proven)));
    }

    /// The metadata `update` proves its member stated at `update.incarnation`: told by
    /// the member itself (the transport authenticated it), or signed by it. A statement
    /// that fails its check is counted, and makes the rest of the message's unproven
    /// claims be dropped unchecked.
    fn proven(&mut self, now_ms: u64, firsthand: bool, update: &MemberUpdate) -> Option<Proven> {
        if let Some(signed) = &update.statement {
            // The statement held was checked when it came, and is of the incarnation held.
            if let Some(member) = self.members.get(update.node.as_str())
                && member.incarnation == update.incarnation
                && let (Some(held), Some(meta)) = (&member.statement, &member.meta)
                && (Arc::ptr_eq(held, signed) || **held == **signed)
            {
                return Some(Proven {
                    meta: meta.clone(),
                    statement: Some(held.clone()),
                });
            }
            if !self.distrust_message {
                let checked = Statement::decode(&signed.statement)
                    .filter(|s| s.node == update.node && s.incarnation == update.incarnation)
                    .filter(|_| {
                        self.notary
                            .verify(StatementKind::Member, &update.node, signed, now_ms)
                    });
                if let Some(statement) = checked {
                    return Some(Proven {
                        meta: Arc::new(statement.meta),
                        statement: Some(signed.clone()),
                    });
                }
                self.refused_statements += 1;
                self.distrust_message = true;
            }
        }
        if !firsthand {
            return None;
        }
        update.meta.clone().map(|meta| Proven {
            meta,
            statement: None,
        })
    }

    fn apply_all(&mut self, now_ms: u64, from: &str, updates: &[MemberUpdate]) {
        self.distrust_message = false;
        for update in updates {
            self.apply(now_ms, Some(from), update);
        }
    }

    fn send_sync(&mut self, to: String, reply: bool) {
        let mut all: Vec<MemberUpdate> = vec![self.self_update(true)];
        all.extend(self.members.iter().map(|m| MemberUpdate {
            node: m.id.to_string(),
            state: m.state,
            incarnation: m.incarnation,
            // The statement carries the metadata; without one, the member's own word.
            meta: if m.statement.is_some() {
                None
            } else {
                m.meta.clone()
            },
            statement: m.statement.clone(),
        }));
        let chunks = sync_chunks(&all, self.config.max_sync_chunk);
        let count = chunks.len();
        for (i, range) in chunks.into_iter().enumerate() {
            // Only the last chunk asks for a reply, so the exchange stays one round.
            self.transmits.push_back((
                to.clone(),
                Body::Sync(Sync {
                    updates: all[range].to_vec(),
                    reply: reply && i + 1 == count,
                }),
            ));
        }
    }

    /// A probe: answer it.
    pub fn handle_ping(&mut self, now_ms: u64, from: &str, ping: &Ping) {
        self.apply_all(now_ms, from, &ping.updates);
        let updates = self.piggyback(from);
        self.transmits.push_back((
            from.to_owned(),
            Body::Ack(Ack {
                seq: ping.seq,
                updates,
            }),
        ));
    }

    /// An indirect probe request: probe the target and forward its answer.
    pub fn handle_ping_req(&mut self, now_ms: u64, from: &str, request: &PingReq) {
        self.apply_all(now_ms, from, &request.updates);
        self.next_seq += 1;
        let seq = self.next_seq;
        self.relays.insert(
            seq,
            (
                from.to_owned(),
                request.seq,
                now_ms + self.config.probe_interval_ms,
            ),
        );
        let updates = self.piggyback(&request.target);
        self.transmits
            .push_back((request.target.clone(), Body::Ping(Ping { seq, updates })));
    }

    /// A probe answer (ours, or one to forward).
    pub fn handle_ack(&mut self, now_ms: u64, from: &str, ack: &Ack) {
        self.apply_all(now_ms, from, &ack.updates);
        if self.probe.as_ref().is_some_and(|p| p.seq == ack.seq) {
            self.probe = None;
            return;
        }
        if let Some((requester, their_seq, _)) = self.relays.remove(&ack.seq) {
            let updates = self.piggyback(&requester);
            self.transmits.push_back((
                requester,
                Body::Ack(Ack {
                    seq: their_seq,
                    updates,
                }),
            ));
        }
    }

    /// A state exchange: merge it, and answer with ours if asked.
    pub fn handle_sync(&mut self, now_ms: u64, from: &str, sync: &Sync) {
        self.apply_all(now_ms, from, &sync.updates);
        if sync.reply {
            self.send_sync(from.to_owned(), false);
        }
    }

    fn next_probe_target(&mut self) -> Option<Arc<str>> {
        // Round-robin over a shuffled order, reshuffled each round (SWIM's bounded
        // detection time). Members that died during a round are skipped; the next round
        // is built from the live members of the moment. Constant work per probe, amortized.
        for _ in 0..2 {
            while let Some(id) = self.probe_order.get(self.probe_index) {
                self.probe_index += 1;
                if self
                    .members
                    .get(id)
                    .is_some_and(|m| m.state != MemberState::Dead)
                {
                    return Some(id.clone());
                }
            }
            self.probe_order = self.live_members().map(|m| m.id.clone()).collect();
            self.probe_index = 0;
            let order = std::mem::take(&mut self.probe_order);
            self.probe_order = self.shuffled(order);
        }
        None
    }

    fn suspect(&mut self, now_ms: u64, target: &str) {
        let Some(member) = self.members.get(target) else {
            return;
        };
        if member.state != MemberState::Alive {
            return;
        }
        let update = MemberUpdate {
            node: target.to_owned(),
            state: MemberState::Suspect,
            incarnation: member.incarnation,
            meta: None,
            statement: None,
        };
        self.apply(now_ms, None, &update);
    }

    /// Drives probes, indirect probes, suspicion timeouts and state exchanges.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        // Probe deadlines.
        if let Some(probe) = &self.probe {
            match probe.phase {
                ProbePhase::Direct { deadline_ms } if now_ms >= deadline_ms => {
                    let (target, seq) = (probe.target.clone(), probe.seq);
                    for helper in self.indirect_probe_helpers(&target) {
                        let updates = self.piggyback(&helper);
                        self.transmits.push_back((
                            helper.to_string(),
                            Body::PingReq(PingReq {
                                seq,
                                target: target.to_string(),
                                updates,
                            }),
                        ));
                    }
                    let deadline_ms =
                        now_ms + self.config.probe_interval_ms - self.config.probe_timeout_ms;
                    if let Some(probe) = self.probe.as_mut() {
                        probe.phase = ProbePhase::Indirect { deadline_ms };
                    }
                }
                ProbePhase::Indirect { deadline_ms } if now_ms >= deadline_ms => {
                    let target = probe.target.clone();
                    self.probe = None;
                    self.suspect(now_ms, &target);
                }
                _ => {}
            }
        }
        // Suspicions that ran out.
        let expired: Vec<Arc<str>> = self
            .suspicions
            .iter()
            .filter(|(_, deadline)| **deadline <= now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.suspicions.remove(&id);
            if let Some(member) = self.members.get(&id)
                && member.state == MemberState::Suspect
            {
                let update = MemberUpdate {
                    node: id.to_string(),
                    state: MemberState::Dead,
                    incarnation: member.incarnation,
                    meta: None,
                    statement: None,
                };
                self.apply(now_ms, None, &update);
            }
        }
        self.relays.retain(|_, (_, _, expiry)| *expiry > now_ms);
        self.forget_long_dead(now_ms);
        // The next probe.
        if now_ms >= self.next_probe_ms {
            self.next_probe_ms = now_ms + self.config.probe_interval_ms;
            self.catch_up();
            if self.probe.is_none()
                && let Some(target) = self.next_probe_target()
            {
                self.next_seq += 1;
                let seq = self.next_seq;
                self.probe = Some(Probe {
                    target: target.clone(),
                    seq,
                    phase: ProbePhase::Direct {
                        deadline_ms: now_ms + self.config.probe_timeout_ms,
                    },
                });
                let updates = self.piggyback(&target);
                self.transmits
                    .push_back((target.to_string(), Body::Ping(Ping { seq, updates })));
            }
        }
        if now_ms >= self.next_announce_ms
            && let Some(meta) = self.pending_meta.take()
        {
            self.set_meta(meta);
            self.next_announce_ms = now_ms + self.announce_interval_ms();
        }
        if now_ms >= self.next_gossip_ms && self.gossip_pending() {
            self.next_gossip_ms = now_ms + self.config.gossip_interval_ms.max(1);
            self.gossip_round();
        }
        // Try to reach a random dead member: if it is alive after all, the exchange tells
        // it what we believe and it refutes.
        if now_ms >= self.next_reconnect_ms {
            self.next_reconnect_ms = now_ms + self.config.reconnect_interval_ms;
            let dead: Vec<String> = self
                .died
                .iter()
                .filter(|(since, id)| {
                    self.members
                        .get(id)
                        .is_some_and(|m| m.state == MemberState::Dead && m.since_ms == *since)
                })
                .map(|(_, id)| id.to_string())
                .collect();
            // Up to three of them: a truly dead member must not hide a live one for long.
            let mut dead = dead;
            for _ in 0..dead.len().min(3) {
                let pick = dead.swap_remove((self.random() % dead.len() as u64) as usize);
                self.send_sync(pick, true);
            }
            // A seed never heard from: the join's exchange with it was lost. Without this,
            // two groups whose joins across were all lost would never learn of each other.
            // One at random: a seed gone for good must not starve the others.
            let unheard: Vec<String> = self
                .seeds
                .iter()
                .filter(|seed| self.members.get(seed).is_none())
                .cloned()
                .collect();
            if !unheard.is_empty() {
                let pick = (self.random() % unheard.len() as u64) as usize;
                self.send_sync(unheard[pick].clone(), true);
            }
        }
        // Push-pull with a random live member.
        if now_ms >= self.next_sync_ms {
            self.next_sync_ms = now_ms + self.sync_interval_ms();
            if let Some(pick) = self.random_live_member(None) {
                self.send_sync(pick.to_string(), true);
            }
        }
    }

    /// Once per probe interval: a join whose exchange was lost tries the seeds again, and
    /// a member known without its metadata (its announcement was lost) is asked for it.
    fn catch_up(&mut self) {
        if self.members.is_empty() {
            for seed in self.seeds.clone() {
                self.send_sync(seed, true);
            }
            return;
        }
        let missing_meta = self
            .without_meta
            .iter()
            .find(|id| {
                self.members
                    .get(id)
                    .is_some_and(|m| m.state != MemberState::Dead)
            })
            .map(|id| id.to_string());
        if let Some(id) = missing_meta {
            self.send_sync(id, true);
        }
    }

    /// Forgets members dead for longer than `dead_retention_ms` (late gossip can no
    /// longer revive them by then). Constant work unless someone is due.
    fn forget_long_dead(&mut self, now_ms: u64) {
        let retention = self.config.dead_retention_ms;
        while let Some((since, id)) = self.died.front().cloned() {
            if since.saturating_add(retention) > now_ms {
                break;
            }
            self.died.pop_front();
            if self
                .members
                .get(&id)
                .is_some_and(|m| m.state == MemberState::Dead && m.since_ms == since)
            {
                self.members.remove(&id);
                self.without_meta.remove(&id);
            }
        }
    }

    /// A live member other than `except`, drawn from the probe order (which holds every
    /// member known at the start of the round and every one that joined since): constant
    /// time, where collecting the live members would cost a pass over all of them.
    fn random_live_member(&mut self, except: Option<&str>) -> Option<Arc<str>> {
        for _ in 0..16 {
            if self.probe_order.is_empty() {
                break;
            }
            let index = (self.random() % self.probe_order.len() as u64) as usize;
            let pick = self.probe_order[index].clone();
            let usable = Some(&*pick) != except
                && self
                    .members
                    .get(&pick)
                    .is_some_and(|m| m.state == MemberState::Alive);
            if usable {
                return Some(pick);
            }
        }
        // Mostly dead or suspected members, or none: an exact draw.
        let live: Vec<Arc<str>> = self
            .members
            .iter()
            .filter(|m| m.state == MemberState::Alive && Some(&*m.id) != except)
            .map(|m| m.id.clone())
            .collect();
        (!live.is_empty()).then(|| live[(self.random() % live.len() as u64) as usize].clone())
    }

    /// Up to `indirect_probes` distinct alive members other than `target`, at random.
    fn indirect_probe_helpers(&mut self, target: &str) -> Vec<Arc<str>> {
        let wanted = self.config.indirect_probes;
        if self.members.len() <= 4 * wanted + 1 {
            // A small cluster: shuffle them all, so every helper there is gets asked.
            let helpers: Vec<Arc<str>> = self
                .members
                .iter()
                .filter(|m| &*m.id != target && m.state == MemberState::Alive)
                .map(|m| m.id.clone())
                .collect();
            let mut helpers = self.shuffled(helpers);
            helpers.truncate(wanted);
            return helpers;
        }
        self.distinct_live_members(wanted, Some(target))
    }

    fn gossip_pending(&self) -> bool {
        self.config.gossip_nodes > 0 && !self.gossip.is_empty()
    }

    /// Pushes pending gossip to up to `gossip_nodes` distinct random live members.
    fn gossip_round(&mut self) {
        for target in self.distinct_live_members(self.config.gossip_nodes, None) {
            if self.gossip.is_empty() {
                break;
            }
            let updates = self.piggyback(&target);
            self.transmits.push_back((
                target.to_string(),
                Body::Sync(Sync {
                    updates,
                    reply: false,
                }),
            ));
        }
    }

    /// When [`Membership::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        let probe = self.probe.as_ref().map(|p| match p.phase {
            ProbePhase::Direct { deadline_ms } | ProbePhase::Indirect { deadline_ms } => {
                deadline_ms
            }
        });
        [
            Some(self.next_probe_ms),
            Some(self.next_sync_ms),
            probe,
            self.suspicions.values().min().copied(),
            self.gossip_pending().then_some(self.next_gossip_ms),
            self.pending_meta.as_ref().map(|_| self.next_announce_ms),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<(String, Body)> {
        self.transmits.pop_front()
    }

    /// The next change.
    pub fn poll_event(&mut self) -> Option<MembershipEvent> {
        self.events.pop_front()
    }
}

/// Metadata a member is proven to have stated, and the statement that proves it to
/// others (none when the member told this node directly without one).
struct Proven {
    meta: Arc<NodeMeta>,
    statement: Option<Arc<SignedStatement>>,
}

/// Whether `update`, of the incarnation held, could complete `member`'s record: it has
/// no metadata, or no statement to relay it with, or the member itself corrects it.
fn completes(member: &Member, firsthand: bool, update: &MemberUpdate) -> bool {
    let brings_statement = update.statement.is_some();
    if update.meta.is_none() && !brings_statement {
        return false;
    }
    member.meta.is_none()
        || (member.statement.is_none() && brings_statement)
        || (firsthand && update.meta.is_some() && member.meta != update.meta)
}

/// `update` as this node passes it on: an "alive" with the statement that proves it (the
/// metadata inside it, not beside it), the member's own word as it came (an older
/// version's, without a statement), and a suspicion or death bare.
fn relayed(update: &MemberUpdate, proven: Option<&Proven>) -> MemberUpdate {
    let statement = proven.and_then(|p| p.statement.clone());
    let meta = match (&statement, update.state) {
        (Some(_), _) | (None, MemberState::Suspect | MemberState::Dead) => None,
        (None, MemberState::Alive) => proven.map(|p| p.meta.clone()),
    };
    MemberUpdate {
        node: update.node.clone(),
        state: update.state,
        incarnation: update.incarnation,
        meta,
        statement,
    }
}

/// Bytes of statements and metadata one `Sync` carries at most: with the names and the
/// envelope, well inside a frame (`codec::MAX_FRAME_LEN`, 64 KiB).
const SYNC_CHUNK_BYTES: usize = 40 * 1024;

/// `updates` cut into runs of at most `max_updates` updates and about
/// [`SYNC_CHUNK_BYTES`] of statements, so that every `Sync` fits in a frame whatever
/// the members' labels and images.
fn sync_chunks(updates: &[MemberUpdate], max_updates: usize) -> Vec<std::ops::Range<usize>> {
    let weight = |u: &MemberUpdate| {
        let statement = u.statement.as_ref().map_or(0, |s| {
            s.statement.len() + s.credential.len() + s.signature.len()
        });
        // Metadata beside no statement: an estimate of its encoding is enough here.
        let meta = u.meta.as_ref().map_or(0, |m| {
            128 + m.images.iter().map(|i| i.len() + 2).sum::<usize>()
                + m.labels
                    .iter()
                    .map(|(k, v)| k.len() + v.len() + 4)
                    .sum::<usize>()
        });
        u.node.len() + 16 + statement + meta
    };
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, update) in updates.iter().enumerate() {
        let w = weight(update);
        if i > start && (i - start >= max_updates.max(1) || bytes + w > SYNC_CHUNK_BYTES) {
            chunks.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += w;
    }
    if start < updates.len() {
        chunks.push(start..updates.len());
    }
    chunks
}
