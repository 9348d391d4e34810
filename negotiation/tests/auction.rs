//! The auction's rules, driven by hand: one announcer, a few bidders, messages passed
//! directly (the codec and the network are the simulator's business).

use std::collections::BTreeMap;

use parley_negotiation::auction::{
    Announced, Announcer, AnnouncerConfig, AnnouncerEvent, Answer, Bidder, BidderConfig,
    BidderEvent, Candidate, NodeProfile, PlacementRequest,
};
use parley_negotiation::messages::{Body, Instance, Resources, Scoring};

const GIB: u64 = 1 << 30;

fn bidder(name: &str, cpu: u64, mem_gib: u64, labels: &[(&str, &str)]) -> Bidder {
    Bidder::new(
        NodeProfile {
            id: name.to_owned(),
            arch: "amd64".to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            allocatable: Resources {
                cpu_millis: cpu,
                memory_bytes: mem_gib * GIB,
            },
        },
        BidderConfig::default(),
    )
}

fn request(replicas: u32, cpu: u64, mem_gib: u64) -> PlacementRequest {
    PlacementRequest {
        workload: "default/web".to_owned(),
        image: "app:1".to_owned(),
        replicas,
        resources: Resources {
            cpu_millis: cpu,
            memory_bytes: mem_gib * GIB,
        },
        constraints: BTreeMap::new(),
        arch: None,
        spread_label: None,
        scoring: Scoring::Spread,
        spec: None,
        submitter: None,
    }
}

/// Delivers messages until nothing moves, advancing time to each deadline.
fn settle(
    announcer: &mut Announcer,
    bidders: &mut [Bidder],
    mut now: u64,
    until: u64,
) -> (u64, Vec<(String, Body)>) {
    let mut log = Vec::new();
    let mut pending_timeout = None;
    loop {
        let mut moved = false;
        while let Some((to, body)) = announcer.poll_transmit() {
            moved = true;
            log.push((to.clone(), body.clone()));
            let from = announcer.id().to_owned();
            if let Some(b) = bidders.iter_mut().find(|b| b.profile().id == to) {
                match &body {
                    Body::Cfp(cfp) => b.handle_cfp(now, &from, cfp),
                    Body::Award(award) => b.handle_award(now, &from, award),
                    Body::Release(release) => b.handle_release(&from, release),
                    Body::Revoke(revoke) => b.handle_revoke(&from, revoke),
                    _ => {}
                }
            }
        }
        for b in bidders.iter_mut() {
            let from = b.profile().id.clone();
            while let Some((_, body)) = b.poll_transmit() {
                moved = true;
                match &body {
                    Body::Bid(bid) => announcer.handle_bid(now, &from, bid),
                    Body::Decline(decline) => announcer.handle_decline(&from, decline),
                    Body::Accept(accept) => announcer.handle_accept(now, &from, accept),
                    Body::Reject(reject) => announcer.handle_reject(now, &from, reject),
                    Body::Instance(instance) => announcer.handle_instance(now, &from, instance),
                    _ => {}
                }
            }
        }
        if !moved {
            // The announcer's deadlines run after the messages of the same instant, so a
            // report sent then counts.
            if let Some(at) = pending_timeout.take() {
                announcer.handle_timeout(at);
                continue;
            }
            let next = [announcer.poll_timeout()]
                .into_iter()
                .chain(bidders.iter().map(Bidder::poll_timeout))
                .flatten()
                .min();
            match next {
                Some(t) if t <= until => {
                    now = t.max(now);
                    for b in bidders.iter_mut() {
                        b.handle_timeout(now);
                        // Nodes report what they run; unreported replicas are re-placed.
                        b.report_instances();
                    }
                    pending_timeout = Some(now);
                }
                _ => return (now, log),
            }
        }
    }
}

fn members(names: &[&str]) -> Vec<Candidate> {
    names.iter().map(|n| Candidate::new(*n)).collect()
}

#[test]
fn replicas_land_on_distinct_nodes_and_losers_are_released() {
    let mut announcer = Announcer::new(
        "a",
        AnnouncerConfig {
            sample_factor: 10,
            ..Default::default()
        },
        1,
    );
    announcer.set_members(members(&["a", "b", "c"]));
    let mut bidders = vec![
        bidder("a", 4000, 8, &[]),
        bidder("b", 4000, 8, &[]),
        bidder("c", 4000, 8, &[]),
    ];
    announcer.place(0, request(3, 500, 1));
    let (_, log) = settle(&mut announcer, &mut bidders, 0, 60_000);
    let placed = announcer.placements("default/web");
    let nodes: std::collections::BTreeSet<_> = placed.values().map(|(n, _)| n.clone()).collect();
    assert_eq!(nodes.len(), 3, "{placed:?}");
    for b in &bidders {
        assert_eq!(b.committed().count(), 1);
        assert_eq!(
            b.reservations().count(),
            0,
            "a loser's reservation was not released"
        );
    }
    assert!(
        log.iter().any(|(_, body)| matches!(body, Body::Release(_))),
        "no explicit release was sent"
    );
}

#[test]
fn a_placement_that_cannot_be_made_says_why_node_by_node() {
    let mut announcer = Announcer::new(
        "a",
        AnnouncerConfig {
            sample_factor: 10,
            ..Default::default()
        },
        1,
    );
    announcer.set_members(members(&["a", "b", "c"]));
    let mut bidders = vec![
        bidder("a", 4000, 2, &[("disk", "ssd")]),
        bidder("b", 100, 64, &[("disk", "ssd")]),
        bidder("c", 4000, 64, &[("disk", "hdd")]),
    ];
    let mut wanted = request(1, 1000, 8);
    wanted
        .constraints
        .insert("disk".to_owned(), "ssd".to_owned());
    announcer.place(0, wanted);
    settle(&mut announcer, &mut bidders, 0, 500);
    let mut events = Vec::new();
    while let Some(event) = announcer.poll_event() {
        events.push(event);
    }
    let Some(AnnouncerEvent::NotPlaced { explanation, .. }) = events.first() else {
        panic!("expected NotPlaced, got {events:?}");
    };
    assert_eq!(
        explanation.counts(),
        BTreeMap::from([
            ("constraint-mismatch".to_owned(), 1),
            ("insufficient-cpu".to_owned(), 1),
            ("insufficient-memory".to_owned(), 1),
        ])
    );
    assert!(matches!(
        explanation.answers.get("b"),
        Some(Answer::Declined(_))
    ));
    assert!(bidders.iter().all(|b| b.reservations().count() == 0));
}

#[test]
fn an_unacknowledged_award_moves_to_the_next_bid_and_never_double_books() {
    let mut announcer = Announcer::new(
        "a",
        AnnouncerConfig {
            sample_factor: 10,
            ..Default::default()
        },
        1,
    );
    // "silent" never answers, so the bid window runs its full 300 ms.
    announcer.set_members(members(&["b", "c", "silent"]));
    let mut bidders = vec![bidder("b", 4000, 8, &[]), bidder("c", 1000, 2, &[])];
    announcer.place(0, request(1, 500, 1));
    // Collect bids, then let the award to the best bidder (b) vanish: drop b from the
    // bidders the driver delivers to.
    let (now, _) = settle(&mut announcer, &mut bidders, 0, 299);
    let mut only_c = vec![bidders.remove(1)];
    let (_, _) = settle(&mut announcer, &mut only_c, now, 60_000);
    let placed = announcer.placements("default/web");
    assert_eq!(
        placed.get(&0).map(|(n, _)| n.as_str()),
        Some("c"),
        "{placed:?}"
    );
    assert!(bidders[0].committed().next().is_none());
}

#[test]
fn bin_pack_and_spread_prefer_opposite_nodes_and_cached_images_win_ties() {
    for (scoring, expected) in [(Scoring::Spread, "empty"), (Scoring::BinPack, "busy")] {
        let mut announcer = Announcer::new(
            "a",
            AnnouncerConfig {
                sample_factor: 10,
                ..Default::default()
            },
            1,
        );
        announcer.set_members(members(&["busy", "empty"]));
        let mut bidders = vec![bidder("busy", 1000, 4, &[]), bidder("empty", 8000, 32, &[])];
        let mut wanted = request(1, 500, 1);
        wanted.scoring = scoring;
        announcer.place(0, wanted);
        settle(&mut announcer, &mut bidders, 0, 60_000);
        assert_eq!(
            announcer.placements("default/web")[&0].0,
            expected,
            "{scoring:?}"
        );
    }
    let mut announcer = Announcer::new(
        "a",
        AnnouncerConfig {
            sample_factor: 10,
            ..Default::default()
        },
        1,
    );
    announcer.set_members(members(&["x", "y"]));
    let mut bidders = vec![bidder("x", 4000, 8, &[]), bidder("y", 4000, 8, &[])];
    bidders[1].add_image("app:1");
    announcer.place(0, request(1, 500, 1));
    settle(&mut announcer, &mut bidders, 0, 60_000);
    assert_eq!(announcer.placements("default/web")[&0].0, "y");
}

#[test]
fn a_replica_asks_d_sampled_members_among_those_that_look_able() {
    // 60 members: a third arm64, a third announcing too little free memory, a third able.
    let members: Vec<Candidate> = (0..60)
        .map(|i| Candidate {
            announced: Some(Announced {
                arch: if i % 3 == 0 { "arm64" } else { "amd64" }.to_owned(),
                labels: BTreeMap::new(),
                free: Some(Resources {
                    cpu_millis: 4_000,
                    memory_bytes: if i % 3 == 1 { GIB / 2 } else { 8 * GIB },
                }),
            }),
            ..Candidate::new(format!("n{i}"))
        })
        .collect();
    let mut announcer = Announcer::new(
        "a",
        AnnouncerConfig {
            sample_factor: 2,
            ..Default::default()
        },
        9,
    );
    announcer.set_members(members);
    let mut wanted = request(3, 100, 1);
    wanted.arch = Some("amd64".to_owned());
    announcer.place(0, wanted);
    let asked: Vec<usize> = std::iter::from_fn(|| announcer.poll_transmit())
        .map(|(to, body)| {
            assert!(matches!(body, Body::Cfp(_)));
            to[1..].parse().unwrap()
        })
        .collect();
    assert_eq!(asked.len(), 2, "asked {asked:?} of 60 members with d = 2");
    assert!(
        asked.iter().all(|i| i % 3 == 2),
        "asked {asked:?}: only members announcing amd64 and enough free memory look able"
    );
}

#[test]
fn when_no_member_looks_able_everyone_is_asked_so_their_declines_explain() {
    let members: Vec<Candidate> = (0..5)
        .map(|i| Candidate {
            announced: Some(Announced {
                arch: "amd64".to_owned(),
                labels: BTreeMap::new(),
                free: Some(Resources {
                    cpu_millis: 1_000,
                    memory_bytes: GIB,
                }),
            }),
            ..Candidate::new(format!("n{i}"))
        })
        .collect();
    let mut announcer = Announcer::new("a", AnnouncerConfig::default(), 9);
    announcer.set_members(members);
    announcer.place(0, request(1, 100, 64));
    assert_eq!(std::iter::from_fn(|| announcer.poll_transmit()).count(), 5);
}

#[test]
fn incompatible_members_are_never_asked_and_expired_reservations_are_dropped() {
    let mut announcer = Announcer::new("a", AnnouncerConfig::default(), 1);
    announcer.set_members(vec![
        Candidate {
            compatible: false,
            ..Candidate::new("old")
        },
        Candidate::new("new"),
    ]);
    announcer.place(0, request(1, 100, 1));
    let recipients: Vec<String> = std::iter::from_fn(|| announcer.poll_transmit())
        .map(|(to, _)| to)
        .collect();
    assert_eq!(recipients, ["new"]);

    let mut b = bidder("b", 1000, 1, &[]);
    let cfp = parley_negotiation::messages::Cfp {
        auction: 1,
        workload: "default/x".to_owned(),
        replica: 0,
        epoch: 1,
        image: "i".to_owned(),
        resources: Resources {
            cpu_millis: 600,
            memory_bytes: 1,
        },
        constraints: BTreeMap::new(),
        arch: None,
        spread_label: None,
        scoring: Scoring::Spread,
        bid_deadline_ms: 100,
    };
    b.handle_cfp(0, "a", &cfp);
    assert_eq!(b.free().cpu_millis, 400, "the bid holds its reservation");
    let mut second = cfp.clone();
    second.workload = "default/y".to_owned();
    b.handle_cfp(1, "a", &second);
    assert!(matches!(b.poll_transmit(), Some((_, Body::Bid(_)))));
    assert!(
        matches!(b.poll_transmit(), Some((_, Body::Decline(_)))),
        "free capacity ignored the reservation"
    );
    let expiry = b.poll_timeout().expect("a reservation expires");
    b.handle_timeout(expiry);
    assert_eq!(b.free().cpu_millis, 1000);
    assert!(matches!(b.poll_event(), Some(BidderEvent::Expired(_))));
}

#[test]
fn awards_carry_the_spec_and_removing_a_workload_revokes_its_replicas() {
    let mut announcer = Announcer::new("a", AnnouncerConfig::default(), 1);
    announcer.set_members(members(&["a", "b"]));
    let mut bidders = vec![bidder("a", 4000, 8, &[]), bidder("b", 4000, 8, &[])];
    let spec = parley_negotiation::WorkloadSpec::new(
        parley_negotiation::WorkloadName::new("web").unwrap(),
        "app:1",
        vec!["serve".to_owned()],
        Vec::new(),
    )
    .unwrap();
    announcer.place(
        0,
        PlacementRequest {
            spec: Some(spec.clone()),
            ..request(2, 500, 1)
        },
    );
    let (now, log) = settle(&mut announcer, &mut bidders, 0, 60_000);
    let awards: Vec<_> = log
        .iter()
        .filter_map(|(_, body)| match body {
            Body::Award(award) => Some(award),
            _ => None,
        })
        .collect();
    assert_eq!(awards.len(), 2, "{log:?}");
    assert!(awards.iter().all(|a| a.spec.as_ref() == Some(&spec)));

    announcer.remove("default/web");
    let (_, log) = settle(&mut announcer, &mut bidders, now, now + 1);
    let revoked: Vec<_> = log
        .iter()
        .filter(|(_, body)| matches!(body, Body::Revoke(_)))
        .map(|(to, _)| to.as_str())
        .collect();
    assert_eq!(revoked.len(), 2, "{log:?}");
    assert!(!announcer.owns("default/web"));
    for b in &mut bidders {
        assert_eq!(
            b.committed().count(),
            0,
            "{} still runs a replica",
            b.profile().id
        );
        assert!(
            std::iter::from_fn(|| b.poll_event())
                .any(|e| matches!(e, parley_negotiation::auction::BidderEvent::Revoked(_))),
            "{} was not told to stop",
            b.profile().id
        );
    }
}

#[test]
fn an_adopting_owner_places_nothing_until_its_gathering_ends() {
    let mut announcer = Announcer::new("a", AnnouncerConfig::default(), 1);
    announcer.set_members(members(&["a", "b", "c"]));
    announcer.adopt(10_000, request(2, 100, 1));
    // Other deadlines (membership, other workloads) wake the announcer meanwhile.
    for now in [1, 2_000, 9_999] {
        announcer.handle_timeout(now);
        assert!(
            announcer.poll_transmit().is_none(),
            "an auction started at {now} ms, during the gathering"
        );
    }
    assert_eq!(announcer.poll_timeout(), Some(10_000));
    announcer.handle_timeout(10_000);
    assert!(matches!(announcer.poll_transmit(), Some((_, Body::Cfp(_)))));
}

#[test]
fn a_node_whose_disk_is_below_its_reserve_declines_and_says_so() {
    let mut announcer = Announcer::new("a", AnnouncerConfig::default(), 1);
    announcer.set_members(members(&["full", "roomy"]));
    let mut full = bidder("full", 4_000, 8, &[]);
    full.set_disk(100 << 20, 1 << 30);
    let mut roomy = bidder("roomy", 4_000, 8, &[]);
    roomy.set_disk(50 << 30, 1 << 30);
    let mut bidders = [full, roomy];
    announcer.place(0, request(1, 100, 1));
    settle(&mut announcer, &mut bidders, 0, 60_000);
    assert_eq!(announcer.placements("default/web")[&0].0, "roomy");
    let explained = announcer.explain("default/web");
    assert!(
        matches!(
            explained[&0].answers.get("full"),
            Some(Answer::Declined(parley_negotiation::messages::DeclineReason::DiskFull {
                available_bytes,
                reserve_bytes,
            })) if *available_bytes == 100 << 20 && *reserve_bytes == 1 << 30
        ),
        "{explained:?}"
    );
}

#[test]
fn the_bid_window_closes_as_soon_as_every_member_asked_has_answered() {
    let mut announcer = Announcer::new(
        "a",
        AnnouncerConfig {
            sample_factor: 10,
            ..Default::default()
        },
        1,
    );
    announcer.set_members(members(&["b", "c"]));
    let mut bidders = vec![bidder("b", 4000, 8, &[]), bidder("c", 100, 1, &[])];
    announcer.place(0, request(1, 500, 1));
    // c declines (too small), b bids: nothing is left to wait for, so the replica is
    // placed well within the 300 ms bid window.
    settle(&mut announcer, &mut bidders, 0, 100);
    assert_eq!(
        announcer
            .placements("default/web")
            .get(&0)
            .map(|(n, _)| n.as_str()),
        Some("b")
    );
}

#[test]
fn a_newer_call_for_the_same_workload_supersedes_a_lost_bid_whose_release_is_late() {
    use parley_negotiation::messages::Cfp;
    let mut node = bidder("b", 4000, 8, &[]);
    let cfp = |auction, replica| Cfp {
        auction,
        workload: "default/web".to_owned(),
        replica,
        epoch: auction,
        image: "app:1".to_owned(),
        resources: Resources {
            cpu_millis: 100,
            memory_bytes: GIB,
        },
        constraints: BTreeMap::new(),
        arch: None,
        spread_label: None,
        scoring: Scoring::Spread,
        bid_deadline_ms: 300,
    };
    node.handle_cfp(0, "a", &cfp(1, 0));
    assert!(matches!(node.poll_transmit(), Some((_, Body::Bid(_)))));
    // Replica 0 went elsewhere; the release has not arrived when replica 1's call does.
    node.handle_cfp(10, "a", &cfp(2, 1));
    assert!(
        matches!(node.poll_transmit(), Some((_, Body::Bid(_)))),
        "declined as if it hosted a replica"
    );
    assert_eq!(node.reservations().count(), 1);
    // Another announcer's bid is its own business.
    node.handle_cfp(20, "z", &cfp(1, 2));
    assert!(matches!(node.poll_transmit(), Some((_, Body::Decline(_)))));
}

fn announcing(i: usize, free_memory: u64) -> Candidate {
    Candidate {
        announced: Some(Announced {
            arch: "amd64".to_owned(),
            labels: BTreeMap::new(),
            free: Some(Resources {
                cpu_millis: 4_000,
                memory_bytes: free_memory,
            }),
        }),
        ..Candidate::new(format!("n{i}"))
    }
}

fn asked_by(announcer: &mut Announcer) -> Vec<usize> {
    std::iter::from_fn(|| announcer.poll_transmit())
        .filter(|(_, body)| matches!(body, Body::Cfp(_)))
        .map(|(to, _)| to[1..].parse().unwrap())
        .collect()
}

#[test]
fn a_member_made_able_by_new_metadata_is_the_one_asked() {
    let mut announcer = Announcer::new("a", AnnouncerConfig::default(), 3);
    announcer.set_members((0..20).map(|i| announcing(i, GIB / 2)).collect());
    announcer.update_member(announcing(7, 8 * GIB));
    announcer.place(0, request(1, 100, 1));
    assert_eq!(asked_by(&mut announcer), vec![7]);
    // An update for a member not in the view adds it.
    let mut announcer = Announcer::new("a", AnnouncerConfig::default(), 3);
    announcer.set_members((0..20).map(|i| announcing(i, GIB / 2)).collect());
    announcer.update_member(announcing(42, 8 * GIB));
    announcer.place(0, request(1, 100, 1));
    assert_eq!(asked_by(&mut announcer), vec![42]);
}

#[test]
fn sampling_among_thousands_finds_the_few_able_and_spreads_over_the_many() {
    // Three able members among a thousand: random draws mostly miss, and the
    // announcer falls back to listing the able ones.
    let few_able: Vec<Candidate> = (0..1_000)
        .map(|i| announcing(i, if i % 400 == 123 { 8 * GIB } else { GIB / 2 }))
        .collect();
    let mut announcer = Announcer::new("a", AnnouncerConfig::default(), 5);
    announcer.set_members(few_able);
    announcer.place(0, request(1, 100, 1));
    let asked = asked_by(&mut announcer);
    assert_eq!(asked.len(), 2, "d = 2 of the three able: {asked:?}");
    assert!(asked.iter().all(|i| i % 400 == 123), "{asked:?}");

    // Everyone able: each call asks two distinct members, and the calls of many
    // workloads reach many different members.
    let mut announcer = Announcer::new("a", AnnouncerConfig::default(), 5);
    announcer.set_members((0..1_000).map(|i| announcing(i, 8 * GIB)).collect());
    let mut reached = std::collections::BTreeSet::new();
    for w in 0..200 {
        let mut wanted = request(1, 100, 1);
        wanted.workload = format!("default/w{w}");
        announcer.place(0, wanted);
        let asked = asked_by(&mut announcer);
        assert_eq!(asked.len(), 2, "{asked:?}");
        assert_ne!(asked[0], asked[1]);
        reached.extend(asked);
    }
    assert!(
        reached.len() > 250,
        "400 calls reached only {} distinct members of 1,000",
        reached.len()
    );
}

fn instance(workload: &str, replica: u32, epoch: u64, domain: Option<&str>) -> Instance {
    Instance {
        workload: workload.to_owned(),
        replica,
        epoch,
        reservation: format!("r{replica}.{epoch}"),
        failure_domain: domain.map(str::to_owned),
        grant: None,
        state: None,
        spec_digest: None,
    }
}

#[test]
fn an_owner_taking_a_spread_workload_back_revokes_replicas_that_share_a_domain() {
    // Two owners' histories: the submitter's own replica 0 in rack-0 (epoch 1), and a
    // successor's replica 1 also in rack-0 (epoch 2) plus one of unknown domain (it did
    // not know the workload is spread).
    let mut announcer = Announcer::new("a", AnnouncerConfig::default(), 1);
    announcer.set_members(members(&["a", "b", "c", "d"]));
    let spread = PlacementRequest {
        spread_label: Some("rack".to_owned()),
        ..request(3, 100, 1)
    };
    announcer.adopt(1_000, spread);
    announcer.handle_instance(10, "a", &instance("default/web", 0, 1, Some("rack-0")));
    announcer.handle_instance(10, "b", &instance("default/web", 1, 2, Some("rack-0")));
    announcer.handle_instance(10, "c", &instance("default/web", 2, 3, None));
    assert!(
        announcer.poll_transmit().is_none(),
        "nothing moves while gathering"
    );

    announcer.handle_timeout(1_000);
    let sent: Vec<(String, Body)> = std::iter::from_fn(|| announcer.poll_transmit()).collect();
    let mut revoked: Vec<(&str, u32, u64)> = sent
        .iter()
        .filter_map(|(to, body)| match body {
            Body::Revoke(r) => Some((to.as_str(), r.replica, r.epoch)),
            _ => None,
        })
        .collect();
    revoked.sort_unstable();
    // The newest in rack-0 stays; the older one and the unknown one go.
    assert_eq!(revoked, [("a", 0, 1), ("c", 2, 3)], "{sent:?}");
    let kept = announcer.placements("default/web");
    assert_eq!(kept.keys().copied().collect::<Vec<_>>(), [1]);
    assert!(
        sent.iter().any(|(_, body)| matches!(body, Body::Cfp(_))),
        "the evicted replicas are placed again: {sent:?}"
    );
}

#[test]
fn an_award_that_fell_through_is_retried_soon_not_after_a_grown_backoff() {
    let config = AnnouncerConfig {
        sample_factor: 10,
        ..Default::default()
    };
    let mut announcer = Announcer::new("a", config, 1);
    announcer.set_members(members(&["b"]));
    let mut bidders = vec![bidder("b", 100, 8, &[])];
    // Nobody can host it for a while: the backoff grows.
    announcer.place(0, request(1, 1_000, 1));
    let (now, _) = settle(&mut announcer, &mut bidders, 0, 20_000);
    let backed_off = announcer.poll_timeout().expect("a retry is scheduled") - now;
    assert!(backed_off > config.retry_initial_ms, "{backed_off}");

    // Now b has room and bids, but every award falls through (it lost the reservation,
    // say): how long does the owner wait after each?
    bidders[0] = bidder("b", 4_000, 8, &[]);
    let mut waits = Vec::new();
    for _ in 0..6 {
        let retry_at = announcer.poll_timeout().unwrap();
        announcer.handle_timeout(retry_at);
        let (_, cfp) = announcer.poll_transmit().expect("a call for proposals");
        let Body::Cfp(cfp) = cfp else {
            panic!("{cfp:?}")
        };
        bidders[0].handle_cfp(retry_at, "a", &cfp);
        let Some((_, Body::Bid(bid))) = bidders[0].poll_transmit() else {
            panic!("b bids")
        };
        announcer.handle_bid(retry_at, "b", &bid);
        let window = announcer.poll_timeout().unwrap();
        announcer.handle_timeout(window);
        let Some((_, Body::Award(award))) = announcer.poll_transmit() else {
            panic!("an award")
        };
        announcer.handle_reject(
            window,
            "b",
            &parley_negotiation::messages::Reject {
                auction: award.auction,
                replica: award.replica,
                reservation: award.reservation,
                reason: "no such reservation".to_owned(),
            },
        );
        while announcer.poll_transmit().is_some() {}
        waits.push(announcer.poll_timeout().expect("a retry is scheduled") - window);
    }
    // Mostly soon, but a bidder that keeps failing does not get asked every second for
    // ever: one retry in three waits out the grown backoff.
    let quick = waits
        .iter()
        .filter(|w| **w <= config.retry_initial_ms)
        .count();
    assert!(quick >= 3, "{waits:?}, backoff was {backed_off} ms");
    assert!(quick <= 4, "{waits:?}");
}

#[test]
fn a_report_of_a_workload_not_owned_here_is_ignored_unless_it_was_removed_here() {
    let mut announcer = Announcer::new("a", AnnouncerConfig::default(), 1);
    // A successor whose hand-over is still on its way must not kill the replica it is
    // about to take over.
    announcer.handle_instance(0, "b", &instance("default/web", 0, 3, None));
    assert_eq!(announcer.poll_transmit(), None);

    // Removed here: a node that missed the revocation is told again when it reports.
    let mut bidders = vec![bidder("b", 4000, 8, &[])];
    announcer.set_members(members(&["b"]));
    announcer.place(0, request(1, 100, 1));
    let (now, _) = settle(&mut announcer, &mut bidders, 0, 5_000);
    let (node, epoch) = announcer.placements("default/web")[&0].clone();
    announcer.remove("default/web");
    while announcer.poll_transmit().is_some() {}
    announcer.handle_instance(now, &node, &instance("default/web", 0, epoch, None));
    assert!(matches!(
        announcer.poll_transmit(),
        Some((to, Body::Revoke(r))) if to == node && r.epoch == epoch
    ));
}

/// Class 10 of the zero-trust issue: a bid's score and expiry were trusted. A bidder
/// claiming the top score and a reservation that never lapses, and never accepting,
/// stalled the auction for ever. Now both are bounded on receipt, the auction moves on
/// once the bounded hold passes, and the bidder is struck: its next bids rank lower.
#[test]
fn an_inflated_bid_that_is_never_accepted_is_skipped_and_ranks_lower_next_time() {
    let mut announcer = Announcer::new(
        "a",
        AnnouncerConfig {
            sample_factor: 10,
            ..Default::default()
        },
        1,
    );
    announcer.set_members(members(&["b", "liar"]));
    let mut bidders = vec![bidder("b", 4000, 8, &[])];
    announcer.place(0, request(2, 500, 1));
    let cfps: Vec<_> = std::iter::from_fn(|| announcer.poll_transmit()).collect();
    let lie = |auction, replica| parley_negotiation::messages::Bid {
        auction,
        replica,
        reservation: format!("liar#{auction}"),
        score: u32::MAX,
        expires_at_ms: u64::MAX,
        has_image: true,
        failure_domain: None,
    };
    for (to, body) in &cfps {
        match body {
            Body::Cfp(cfp) if to == "liar" => {
                announcer.handle_bid(0, "liar", &lie(cfp.auction, cfp.replica))
            }
            Body::Cfp(cfp) => bidders[0].handle_cfp(0, "a", cfp),
            _ => {}
        }
    }
    // The liar's bids are seen as the top score, not above it.
    let (_, _) = settle(&mut announcer, &mut bidders, 0, 60_000);
    let placed = announcer.placements("default/web");
    assert!(placed.values().all(|(node, _)| node == "b"), "{placed:?}");
    assert_eq!(
        placed.len(),
        1,
        "b holds one replica; the other waits: {placed:?}"
    );
    let mut struck = 0;
    while let Some(event) = announcer.poll_event() {
        if let AnnouncerEvent::Struck { node, .. } = event {
            assert_eq!(node, "liar");
            struck += 1;
        }
    }
    assert!(struck >= 1, "the silent winner was not struck");
    assert!(announcer.penalty("liar", 60_000) >= 2_500);
    assert_eq!(announcer.penalty("b", 60_000), 0);
}

/// Class 10, last part: any submitter could hold unlimited reservations on every node.
#[test]
fn one_announcer_cannot_hold_more_than_its_share_of_reservations() {
    let mut host = bidder("b", 1_000_000, 1_000, &[]);
    let mut sent = Vec::new();
    for auction in 0..300u64 {
        host.handle_cfp(
            0,
            "greedy",
            &parley_negotiation::messages::Cfp {
                auction,
                workload: format!("default/w{auction}"),
                replica: 0,
                epoch: 1,
                image: "app:1".to_owned(),
                resources: Resources {
                    cpu_millis: 1,
                    memory_bytes: 1,
                },
                constraints: BTreeMap::new(),
                arch: None,
                spread_label: None,
                scoring: Scoring::Spread,
                bid_deadline_ms: 1_000,
            },
        );
        sent.extend(std::iter::from_fn(|| host.poll_transmit()));
    }
    assert_eq!(host.reservations().count(), 256);
    let refused = sent
        .iter()
        .filter(|(_, body)| {
            matches!(body, Body::Decline(d) if d.reason.code() == "too-many-reservations")
        })
        .count();
    assert_eq!(refused, 44);
}

/// Issue #16: a node declared dead while it was only away (a reboot, an agent upgrade)
/// reports its replica back before any replacement was awarded: it keeps it at the same
/// epoch, and the auction for a replacement is dropped. Once a replacement was placed,
/// the same report is revoked.
#[test]
fn a_node_that_was_only_away_keeps_its_replica_unless_it_was_replaced() {
    let mut announcer = Announcer::new("a", AnnouncerConfig::default(), 1);
    announcer.set_members(members(&["b"]));
    let mut bidders = vec![bidder("b", 4000, 8, &[])];
    announcer.place(0, request(1, 500, 1));
    let (now, _) = settle(&mut announcer, &mut bidders, 0, 5_000);
    let placed = announcer.placements("default/web");
    let (node, epoch) = placed.get(&0).cloned().expect("placed on b");
    assert_eq!(node, "b");

    // b is declared dead; nobody else can host, so the replacement's auction waits.
    announcer.set_members(Vec::new());
    announcer.replica_lost(now, "default/web", 0);
    assert!(announcer.placements("default/web").is_empty());
    announcer.handle_timeout(now + 1);
    while announcer.poll_transmit().is_some() {}
    // b is back and reports its replica at the epoch it was placed with.
    announcer.set_members(members(&["b"]));
    announcer.handle_instance(now + 2, "b", &instance("default/web", 0, epoch, None));
    assert_eq!(
        announcer.placements("default/web").get(&0),
        Some(&("b".to_owned(), epoch)),
        "the returning node keeps its replica at the same epoch"
    );
    let sent: Vec<_> = std::iter::from_fn(|| announcer.poll_transmit()).collect();
    assert!(
        !sent
            .iter()
            .any(|(_, body)| matches!(body, Body::Revoke(_) | Body::Award(_))),
        "{sent:?}"
    );

    // Lost again, and this time a replacement is placed on c first: b's report is stale.
    announcer.set_members(members(&["c"]));
    let mut others = vec![bidder("c", 4000, 8, &[])];
    announcer.replica_lost(now + 3, "default/web", 0);
    let (later, _) = settle(&mut announcer, &mut others, now + 3, now + 10_000);
    let (replacement, newer) = announcer.placements("default/web")[&0].clone();
    assert_eq!(replacement, "c");
    assert!(newer > epoch);
    announcer.handle_instance(later, "b", &instance("default/web", 0, epoch, None));
    let sent: Vec<_> = std::iter::from_fn(|| announcer.poll_transmit()).collect();
    assert!(
        sent.iter()
            .any(|(to, body)| to == "b" && matches!(body, Body::Revoke(_))),
        "the stale replica is revoked: {sent:?}"
    );
    assert_eq!(announcer.placements("default/web")[&0].0, "c");
}
