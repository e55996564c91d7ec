//! The shapes of durable definitions, in RabbitMQ's JSON format
//! (`rabbitmqctl export_definitions`, `GET /api/definitions`): users with
//! password hashes, vhosts, permissions, policies, exchanges, queues and
//! bindings. Plain data: the store logs them, the broker applies them, the
//! HTTP API shows them.
//!
//! Owns: the serialized form of definitions. May use: `auth` (the default
//! hashing algorithm's name) and `protocol`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::auth::HASHING_ALGORITHM;

/// A whole definitions document.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Definitions {
    /// Producing broker's version (RabbitMQ writes `rabbit_version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbit_version: Option<String>,
    /// Users.
    #[serde(default)]
    pub users: Vec<UserDef>,
    /// Virtual hosts.
    #[serde(default)]
    pub vhosts: Vec<VhostDef>,
    /// Permissions.
    #[serde(default)]
    pub permissions: Vec<PermissionDef>,
    /// Policies.
    #[serde(default)]
    pub policies: Vec<PolicyDef>,
    /// Queues.
    #[serde(default)]
    pub queues: Vec<QueueDef>,
    /// Exchanges.
    #[serde(default)]
    pub exchanges: Vec<ExchangeDef>,
    /// Bindings.
    #[serde(default)]
    pub bindings: Vec<BindingDef>,
    /// Kept for RabbitMQ compatibility; not used by warren.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topic_permissions: Vec<Value>,
    /// Kept for RabbitMQ compatibility; not used by warren.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<Value>,
    /// Kept for RabbitMQ compatibility; not used by warren.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub global_parameters: Vec<Value>,
}

/// Tags as RabbitMQ writes them: a comma-separated string (3.x) or a list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Tags {
    /// "administrator,monitoring"
    Csv(String),
    /// ["administrator", "monitoring"]
    List(Vec<String>),
}

impl Tags {
    /// The individual tags.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Tags::Csv(s) => s
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect(),
            Tags::List(v) => v.clone(),
        }
    }
}

impl Default for Tags {
    fn default() -> Self {
        Tags::List(Vec::new())
    }
}

/// A user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserDef {
    /// Name.
    pub name: String,
    /// Password hash (base64); RabbitMQ's format.
    #[serde(default)]
    pub password_hash: String,
    /// Hashing algorithm name.
    #[serde(default = "default_algorithm")]
    pub hashing_algorithm: String,
    /// Plain password (accepted on import only, hashed at once).
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Tags,
}

fn default_algorithm() -> String {
    HASHING_ALGORITHM.to_owned()
}

/// A vhost.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VhostDef {
    /// Name.
    pub name: String,
}

/// A user's permissions in a vhost.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PermissionDef {
    /// User.
    pub user: String,
    /// Vhost.
    pub vhost: String,
    /// Configure regex.
    pub configure: String,
    /// Write regex.
    pub write: String,
    /// Read regex.
    pub read: String,
}

/// A policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PolicyDef {
    /// Vhost.
    pub vhost: String,
    /// Name.
    pub name: String,
    /// Regex over queue/exchange names.
    pub pattern: String,
    /// "queues", "exchanges" or "all".
    #[serde(rename = "apply-to", default = "default_apply_to")]
    pub apply_to: String,
    /// Keys and values.
    #[serde(default)]
    pub definition: Map<String, Value>,
    /// Priority.
    #[serde(default)]
    pub priority: i64,
}

fn default_apply_to() -> String {
    "all".into()
}

/// A queue.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueueDef {
    /// Name.
    pub name: String,
    /// Vhost.
    pub vhost: String,
    /// Durable flag.
    #[serde(default = "yes")]
    pub durable: bool,
    /// Auto-delete flag.
    #[serde(default)]
    pub auto_delete: bool,
    /// x-arguments.
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

fn yes() -> bool {
    true
}

/// An exchange.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExchangeDef {
    /// Name.
    pub name: String,
    /// Vhost.
    pub vhost: String,
    /// Type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Durable flag.
    #[serde(default = "yes")]
    pub durable: bool,
    /// Auto-delete flag.
    #[serde(default)]
    pub auto_delete: bool,
    /// Internal flag.
    #[serde(default)]
    pub internal: bool,
    /// Arguments.
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

/// A binding.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BindingDef {
    /// Source exchange.
    pub source: String,
    /// Vhost.
    pub vhost: String,
    /// Destination name.
    pub destination: String,
    /// "queue" or "exchange".
    pub destination_type: String,
    /// Routing key.
    #[serde(default)]
    pub routing_key: String,
    /// Arguments.
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

/// Parses a definitions document.
pub fn parse(text: &str) -> Result<Definitions, String> {
    serde_json::from_str(text).map_err(|e| format!("invalid definitions JSON: {e}"))
}
