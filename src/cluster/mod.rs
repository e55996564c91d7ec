//! Clustering on openraft: the pieces a Raft group of warren needs, first
//! the durable ones. A group (the definitions of a cluster, or one quorum
//! queue) is an openraft `Raft` whose log is kept by `log::RaftLog` and
//! whose state machine is `machine::StateMachine` around the group's own
//! `Machine` (what a committed command does). Both keep their files in one
//! directory through the store's `Disk` (so tests run them on the simulated
//! disk that loses unsynced bytes at a crash):
//!
//! - `log-<generation>.wal`: the vote, the entries, truncations, purges and
//!   the committed id, as checksummed records; every write is synced
//!   before openraft is told it is done.
//! - `snapshot-<n>.bin`: the newest complete snapshot of the machine.
//!
//! Nodes talk over TCP (`net`): openraft's RPCs as framed bincode, on
//! connections that prove the cluster's shared secret first.
//!
//! Not here yet (issue 16): cluster configuration and membership commands,
//! and the groups themselves (definitions, quorum queues).
//!
//! May use `store` (its `Disk`), `ops` and `protocol`.

pub mod log;
pub mod machine;
pub mod net;
pub mod node;
pub mod tls;

use std::io::Cursor;

openraft::declare_raft_types!(
    /// The types of every warren Raft group: commands and replies are
    /// bytes (each group encodes its own), nodes are numbered.
    pub TypeConfig:
        D = Vec<u8>,
        R = Vec<u8>,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A Raft log id of a warren group.
pub type LogId = openraft::LogId<u64>;

/// A storage error of a warren group.
pub type StorageError = openraft::StorageError<u64>;

/// Encodes a value for the log, snapshots and links: bincode (compact
/// binary; message bytes stay bytes), at most 1 GiB.
pub fn encode<T: serde::Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    use bincode::Options;
    codec().serialize(value).map_err(std::io::Error::other)
}

/// Decodes what `encode` wrote (lengths beyond the limit are refused
/// before anything is allocated for them).
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> std::io::Result<T> {
    use bincode::Options;
    codec()
        .deserialize(bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn codec() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new().with_limit(1 << 30)
}

/// One checksummed record: `[u32 length][u32 crc32 of body][body]`.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The bodies of the whole records at the start of `data`, and where the
/// first torn or damaged one starts (`data.len()` if none is).
fn unframe(data: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while data.len() - at >= 8 {
        let len = u32::from_be_bytes(data[at..at + 4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_be_bytes(data[at + 4..at + 8].try_into().unwrap_or_default());
        let Some(body) = data.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        out.push(body);
        at += 8 + len;
    }
    (out, at)
}

/// Files in `dir` named `<prefix><n><suffix>`, by n, newest first.
fn numbered(
    disk: &dyn crate::store::disk::Disk,
    dir: &std::path::Path,
    prefix: &str,
    suffix: &str,
) -> std::io::Result<Vec<u64>> {
    let mut found: Vec<u64> = disk
        .list(dir)?
        .iter()
        .filter_map(|f| f.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok())
        .collect();
    found.sort_unstable_by(|a, b| b.cmp(a));
    Ok(found)
}

#[cfg(test)]
mod tests;
