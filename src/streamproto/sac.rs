//! Single active consumer: subscriptions with `single-active-consumer:
//! true` and the same `name` on a stream form a group in which only the
//! first (the oldest) receives messages. The broker tells a member it is
//! active with ConsumerUpdate (active = 1); the client answers with the
//! offset specification to start from, and deliveries begin. When the
//! active member goes (Unsubscribe, its connection closing, its stream
//! deleted), the next one is activated the same way, on its own
//! connection's task (through the channel each connection has for this).

use std::collections::HashMap;
use std::sync::LazyLock;

use parking_lot::Mutex;
use tokio::sync::mpsc::UnboundedSender;

/// A group: vhost, stream and consumer name.
pub type GroupKey = (String, String, String);

/// "Your subscription `sub` (with `token`) is now the active one."
#[derive(Debug, Clone, Copy)]
pub struct Activate {
    pub sub: u8,
    pub token: u64,
}

struct Member {
    tx: UnboundedSender<Activate>,
    activate: Activate,
}

static GROUPS: LazyLock<Mutex<HashMap<GroupKey, Vec<Member>>>> = LazyLock::new(Default::default);

/// Adds a subscription to its group; whether it is the active one.
pub fn join(key: GroupKey, tx: UnboundedSender<Activate>, sub: u8, token: u64) -> bool {
    let mut groups = GROUPS.lock();
    let members = groups.entry(key).or_default();
    members.push(Member {
        tx,
        activate: Activate { sub, token },
    });
    members.len() == 1
}

/// Removes a subscription from its group; if it was the active one, the
/// next member (whose connection is still there) is told it is active.
pub fn leave(key: &GroupKey, token: u64) {
    let mut groups = GROUPS.lock();
    let Some(members) = groups.get_mut(key) else {
        return;
    };
    let Some(i) = members.iter().position(|m| m.activate.token == token) else {
        return;
    };
    members.remove(i);
    if i == 0 {
        // Members whose connection went without leaving are dropped.
        while let Some(m) = members.first() {
            if m.tx.send(m.activate).is_ok() {
                break;
            }
            members.remove(0);
        }
    }
    if members.is_empty() {
        groups.remove(key);
    }
}
