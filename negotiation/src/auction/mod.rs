//! The contract-net auction (Smith 1980; FIPA SC00029H) as two sans-IO state machines:
//! the [`Announcer`] that places a workload's replicas and the [`Bidder`] every node runs.
//!
//! Both take inputs through `handle_*(now, …)` and give outputs through `poll_*()`; they
//! never read a clock or touch the network, so a whole cluster of them runs in a unit
//! test (see [`crate::sim`]).

mod announcer;
mod bidder;

pub use announcer::{
    Announced, Announcer, AnnouncerConfig, AnnouncerEvent, Answer, Candidate, Explanation,
    PlacementRequest,
};
pub use bidder::{Bidder, BidderConfig, BidderEvent, Committed, NodeProfile, Reservation};
