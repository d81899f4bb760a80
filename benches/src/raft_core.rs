//! What raft-rs itself costs per put, with no disk and no network: three replicas of
//! each of `groups` Raft groups in memory, driven round by round the way a store loop
//! drives them (propose, ready, entries kept in memory and encoded as for the log,
//! messages encoded and decoded as on the wire, advance, apply). Puts either share one
//! entry per round (as many clients on one range, whose proposals are batched) or each
//! make an entry of their own (one put in flight per range, as 64 clients over 64
//! ranges). Set beside `shale bench kv --ranges 1,64`, it tells how much of what a store
//! loop spends per put in each shape is raft-rs's own work and how much is the store's
//! around it (issue 3's put benchmark). Logs are compacted as they are applied, as a
//! store truncates them, so memory stays flat however long it runs.

use std::time::Instant;

use raft::eraftpb::{Entry, Message};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole};
use serde::Serialize;

/// One scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RaftCoreResult {
    pub scenario: String,
    pub groups: usize,
    pub puts_per_entry: usize,
    pub puts: u64,
    /// Wall time of the one thread that drives everything, per put.
    pub us_per_put: f64,
    /// Entries appended, over the three replicas, per put.
    pub entries_per_put: f64,
    /// Messages stepped (each encoded and decoded), per put.
    pub messages_per_put: f64,
    /// Entries applied, over the three replicas, per put (3 / puts per entry when
    /// every put committed and applied everywhere).
    pub applied_per_put: f64,
}

type Group = [RawNode<MemStorage>; 3];

fn group(logger: &slog::Logger) -> anyhow::Result<Group> {
    let node = |id: u64| -> anyhow::Result<RawNode<MemStorage>> {
        let storage = MemStorage::new_with_conf_state((vec![1, 2, 3], vec![]));
        // As a store configures its replicas (`replica::Replica`).
        let config = Config {
            id,
            election_tick: 10,
            heartbeat_tick: 3,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            batch_append: true,
            skip_bcast_commit: true,
            ..Config::default()
        };
        Ok(RawNode::new(&config, storage, logger)?)
    };
    Ok([node(1)?, node(2)?, node(3)?])
}

#[derive(Default)]
struct Counts {
    entries: u64,
    messages: u64,
    applied: u64,
}

/// Handles every ready of `g` and delivers its messages until it is quiet.
fn pump(g: &mut Group, counts: &mut Counts) -> anyhow::Result<()> {
    let mut inbox: Vec<Message> = Vec::new();
    loop {
        for m in std::mem::take(&mut inbox) {
            let to = usize::try_from(m.to)? - 1;
            let wire = protobuf::Message::write_to_bytes(&m)?;
            let m: Message = protobuf::Message::parse_from_bytes(&wire)?;
            g[to].step(m)?;
            counts.messages += 1;
        }
        let mut any = false;
        for node in g.iter_mut() {
            if !node.has_ready() {
                continue;
            }
            any = true;
            let mut ready = node.ready();
            inbox.extend(ready.take_messages());
            let entries: Vec<Entry> = ready.entries().clone();
            counts.entries += entries.len() as u64;
            for e in &entries {
                // What a store writes to its log for each entry.
                std::hint::black_box(protobuf::Message::write_to_bytes(e)?);
            }
            node.mut_store().wl().append(&entries)?;
            if let Some(hs) = ready.hs() {
                node.mut_store().wl().set_hardstate(hs.clone());
            }
            inbox.extend(ready.take_persisted_messages());
            counts.applied += data_entries(&ready.take_committed_entries());
            let mut light = node.advance(ready);
            if let Some(commit) = light.commit_index() {
                node.mut_store().wl().mut_hard_state().set_commit(commit);
            }
            inbox.extend(light.take_messages());
            counts.applied += data_entries(&light.take_committed_entries());
            node.advance_apply();
        }
        if !any && inbox.is_empty() {
            return Ok(());
        }
    }
}

/// Rounds between log compactions of a group.
const COMPACT_EVERY_ROUNDS: usize = 64;

/// Drops every replica's log up to what it applied.
fn compact(g: &mut Group) -> anyhow::Result<()> {
    for node in g.iter_mut() {
        // Already compacted that far is no error.
        let applied = node.raft.raft_log.applied;
        node.mut_store().wl().compact(applied)?;
    }
    Ok(())
}

/// Entries that carry a command (not a new leader's empty one).
fn data_entries(entries: &[Entry]) -> u64 {
    entries.iter().filter(|e| !e.data.is_empty()).count() as u64
}

/// Measures `rounds` rounds of `groups` groups, each round proposing one entry of
/// `puts_per_entry` puts of `value_bytes` to every group.
pub fn scenario(
    name: &str,
    groups: usize,
    puts_per_entry: usize,
    rounds: usize,
    value_bytes: usize,
) -> anyhow::Result<RaftCoreResult> {
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let mut all: Vec<Group> = (0..groups)
        .map(|_| group(&logger))
        .collect::<anyhow::Result<_>>()?;
    let mut counts = Counts::default();
    for g in all.iter_mut() {
        g[0].campaign()?;
        pump(g, &mut counts)?;
        anyhow::ensure!(g[0].raft.state == StateRole::Leader, "no leader elected");
    }
    let payload = vec![7u8; value_bytes * puts_per_entry];
    let mut counts = Counts::default();
    let started = Instant::now();
    for round in 0..rounds {
        for g in all.iter_mut() {
            g[0].propose(vec![], payload.clone())?;
            pump(g, &mut counts)?;
            if round % COMPACT_EVERY_ROUNDS == COMPACT_EVERY_ROUNDS - 1 {
                compact(g)?;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (entries, messages) = (counts.entries, counts.messages);
    // Followers learn the last commits from the next heartbeat (as in a store, where
    // commits are not broadcast on their own), outside the timing.
    for g in all.iter_mut() {
        g[0].ping();
        pump(g, &mut counts)?;
    }
    let puts = (rounds * groups * puts_per_entry) as u64;
    let per_put = |n: u64| n as f64 / puts as f64;
    Ok(RaftCoreResult {
        scenario: name.to_string(),
        groups,
        puts_per_entry,
        puts,
        us_per_put: elapsed * 1e6 / puts as f64,
        entries_per_put: per_put(entries),
        messages_per_put: per_put(messages),
        applied_per_put: per_put(counts.applied),
    })
}

/// The baseline (one group, `batched` puts an entry) and many groups of one put an
/// entry, about `puts` puts each.
pub fn run(
    groups: usize,
    batched: usize,
    puts: usize,
    value_bytes: usize,
) -> anyhow::Result<Vec<RaftCoreResult>> {
    anyhow::ensure!(
        groups > 0 && batched > 0,
        "need groups and batching above 0"
    );
    let baseline = format!("1 group, {batched} puts an entry");
    let many = format!("{groups} groups, 1 put an entry");
    Ok(vec![
        scenario(&baseline, 1, batched, (puts / batched).max(1), value_bytes)?,
        scenario(&many, groups, 1, (puts / groups).max(1), value_bytes)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_put_is_committed_and_applied_on_all_three_replicas() {
        let results = run(8, 4, 64, 16).unwrap();
        assert_eq!(results.len(), 2);
        for r in &results {
            let entries = r.puts as f64 / r.puts_per_entry as f64;
            assert_eq!(r.applied_per_put * r.puts as f64, 3.0 * entries, "{r:?}");
            assert_eq!(r.entries_per_put * r.puts as f64, 3.0 * entries, "{r:?}");
            assert!(r.messages_per_put > 0.0, "{r:?}");
        }
    }
}
