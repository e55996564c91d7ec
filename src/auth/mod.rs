//! Users, password hashes, tags and per-vhost permissions, as RabbitMQ
//! defines them.
//!
//! Passwords are stored only as `rabbit_password_hashing_sha256` hashes:
//! base64(salt ++ sha256(salt ++ password)) with a 4-byte random salt, the
//! format RabbitMQ exports in definitions, so users moved from RabbitMQ keep
//! their passwords. Permissions are three regexes (configure, write, read)
//! matched against resource names, checked by `Permissions::check`.
//!
//! Owns: users, permissions and failed-login throttling (`login_limit`).
//! May use: `protocol` only.

pub mod login_limit;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use regex::Regex;
use sha2::{Digest, Sha256};

use crate::protocol::error::{AmqpError, AmqpResult, code};

/// The hashing algorithm name RabbitMQ writes in definitions.
pub const HASHING_ALGORITHM: &str = "rabbit_password_hashing_sha256";

/// Hashes a password with a fresh random salt.
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 4];
    if getrandom::fill(&mut salt).is_err() {
        // No OS randomness: fall back to a time-derived salt rather than fail.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        salt = (t as u32).to_be_bytes();
    }
    hash_with_salt(&salt, password)
}

fn hash_with_salt(salt: &[u8], password: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    let mut out = salt.to_vec();
    out.extend_from_slice(&h.finalize());
    B64.encode(out)
}

/// Checks a password against a stored hash (constant-time comparison).
pub fn verify_password(hash: &str, password: &str) -> bool {
    let Ok(raw) = B64.decode(hash) else {
        return false;
    };
    if raw.len() != 4 + 32 {
        return false;
    }
    let expected = hash_with_salt(&raw[..4], password);
    let (a, b) = (expected.as_bytes(), hash.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A user.
#[derive(Debug, Clone)]
pub struct User {
    /// User name.
    pub name: String,
    /// `rabbit_password_hashing_sha256` hash; empty means "no password login".
    pub password_hash: String,
    /// Tags: administrator, management, monitoring, policymaker, ...
    pub tags: Vec<String>,
}

impl User {
    /// Whether the user has a tag.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

/// What an operation needs on a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Declare, delete.
    Configure,
    /// Publish, bind to (queue side).
    Write,
    /// Consume, get, purge, bind from (exchange side).
    Read,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Configure => "configure",
            Access::Write => "write",
            Access::Read => "read",
        }
    }
}

/// A resource that permissions apply to.
#[derive(Debug, Clone, Copy)]
pub enum Resource<'a> {
    /// An exchange by name ("" is checked as "amq.default", as RabbitMQ).
    Exchange(&'a str),
    /// A queue by name.
    Queue(&'a str),
}

/// A user's permissions in one vhost.
#[derive(Debug, Clone)]
pub struct Permissions {
    /// Regex source for configure.
    pub configure: String,
    /// Regex source for write.
    pub write: String,
    /// Regex source for read.
    pub read: String,
    compiled: [Regex; 3],
}

fn anchored(src: &str) -> Result<Regex, String> {
    // RabbitMQ matches with re:run, which is unanchored unless the pattern
    // anchors itself; an empty pattern matches nothing.
    if src.is_empty() {
        return Regex::new("^$a").map_err(|e| e.to_string());
    }
    Regex::new(src).map_err(|e| format!("invalid permission regex '{src}': {e}"))
}

impl Permissions {
    /// Compiles the three regexes.
    pub fn new(configure: &str, write: &str, read: &str) -> Result<Permissions, String> {
        Ok(Permissions {
            configure: configure.to_owned(),
            write: write.to_owned(),
            read: read.to_owned(),
            compiled: [anchored(configure)?, anchored(write)?, anchored(read)?],
        })
    }

    /// Full access (".*" for all three).
    pub fn all() -> Permissions {
        Self::new(".*", ".*", ".*").expect("'.*' is a valid regex")
    }

    /// Whether `access` to a resource named `name` is allowed.
    pub fn allows(&self, access: Access, name: &str) -> bool {
        let re = match access {
            Access::Configure => &self.compiled[0],
            Access::Write => &self.compiled[1],
            Access::Read => &self.compiled[2],
        };
        re.is_match(name)
    }
}

/// Checks `perms` (None: no permissions in the vhost) and builds RabbitMQ's
/// 403 text when refused.
pub fn check(
    perms: Option<&Permissions>,
    user: &str,
    vhost: &str,
    access: Access,
    resource: Resource<'_>,
) -> Result<(), AmqpError> {
    let (kind, name) = match resource {
        Resource::Exchange("") => ("exchange", "amq.default"),
        Resource::Exchange(n) => ("exchange", n),
        Resource::Queue(n) => ("queue", n),
    };
    if perms.is_some_and(|p| p.allows(access, name)) {
        return Ok(());
    }
    Err(AmqpError::channel(
        code::ACCESS_REFUSED,
        format!(
            "{} access to {kind} '{name}' in vhost '{vhost}' refused for user '{user}'",
            access.as_str()
        ),
    ))
}

/// The permissions RabbitMQ requires, beyond configure, of a declaration
/// whose arguments name another exchange (a queue's
/// `x-dead-letter-exchange`, an exchange's `alternate-exchange`): read on
/// the declared queue or exchange and write on the exchange named, since
/// messages will be published to it on the user's behalf. A value of the
/// wrong type is left to the arguments' validation (406).
pub fn check_exchange_argument(
    perms: Option<&Permissions>,
    user: &str,
    vhost: &str,
    declared: Resource<'_>,
    arguments: &amq_protocol::types::FieldTable,
) -> Result<(), AmqpError> {
    let key = match declared {
        Resource::Queue(_) => "x-dead-letter-exchange",
        Resource::Exchange(_) => "alternate-exchange",
    };
    let Some(target) = arguments
        .inner()
        .get(key)
        .and_then(crate::protocol::fields::string)
    else {
        return Ok(());
    };
    check(perms, user, vhost, Access::Read, declared)?;
    check(
        perms,
        user,
        vhost,
        Access::Write,
        Resource::Exchange(&target),
    )
}

/// RabbitMQ's user_id validation: a message may name only the user who
/// publishes it in its user_id property, unless that user is tagged
/// `impersonator` (406 PRECONDITION_FAILED otherwise). `user` is the
/// publishing user as stored (absent if deleted meanwhile), `name` the name
/// it logged in with.
pub fn check_user_id(user: Option<&User>, name: &str, claimed: &str) -> AmqpResult<()> {
    if claimed == name || user.is_some_and(|u| u.has_tag("impersonator")) {
        return Ok(());
    }
    Err(AmqpError::channel(
        code::PRECONDITION_FAILED,
        format!("user_id property set to '{claimed}' but authenticated user was '{name}'"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = hash_password("s3cret");
        assert!(verify_password(&h, "s3cret"));
        assert!(!verify_password(&h, "s3cret "));
        assert!(!verify_password("not base64!", "s3cret"));
    }

    #[test]
    fn rabbitmq_hashes_are_understood() {
        // salt 0x908dc60a, password "test12", as rabbitmqctl hash_password makes it.
        let salt = [0x90, 0x8d, 0xc6, 0x0a];
        let h = hash_with_salt(&salt, "test12");
        assert!(verify_password(&h, "test12"));
        assert_eq!(B64.decode(&h).unwrap().len(), 36);
    }

    #[test]
    fn permissions_match_like_rabbitmq() {
        let p = Permissions::new("^app-.*", "", ".*").unwrap();
        assert!(p.allows(Access::Configure, "app-orders"));
        assert!(!p.allows(Access::Configure, "orders"));
        assert!(!p.allows(Access::Write, "anything"));
        assert!(p.allows(Access::Read, "x"));
    }

    #[test]
    fn refusals_name_the_permission_resource_and_user() {
        let p = Permissions::new("", "", "").unwrap();
        let e = check(Some(&p), "bob", "/", Access::Write, Resource::Exchange("")).unwrap_err();
        assert_eq!(
            e.text,
            "ACCESS_REFUSED - write access to exchange 'amq.default' in vhost '/' refused for user 'bob'"
        );
    }
}
