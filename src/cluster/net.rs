//! The links between the nodes of a cluster: openraft's RPCs (append
//! entries, vote, install snapshot) for every Raft group the node runs,
//! and proposals forwarded to a group's leader, over TCP.
//!
//! Each node listens on its inter-node address (`serve`) and answers for
//! the groups registered in its `Groups`, each request naming its group. A link is one
//! TCP connection per openraft client, opened on first use and again after
//! any error. A connection starts with a challenge: the server sends 16
//! random bytes, the client answers SHA-256(secret ‖ those bytes), and a
//! wrong answer closes the connection, so only nodes that share the
//! cluster's secret take part. Then each request is one frame
//! (`[u32 length][bincode]`) answered by one frame. Frames over `FRAME_MAX`
//! close the connection.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::TypeConfig;

/// The largest frame a link takes (a snapshot is sent in chunks well below).
const FRAME_MAX: usize = 64 << 20;

/// How long a link waits to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What a node proves to its peers: the cluster's secret, over TLS when
/// `[cluster] tls` is on.
#[derive(Debug)]
pub struct Peering {
    /// The shared secret.
    pub secret: Vec<u8>,
    /// TLS for every inter-node connection.
    pub tls: Option<super::tls::Tls>,
}

impl Peering {
    /// The secret alone, over plain TCP.
    pub fn plain(secret: Vec<u8>) -> Peering {
        Peering { secret, tls: None }
    }
}

/// A byte stream between two nodes (TCP, or TLS over TCP).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static> Io for T {}

/// An inter-node connection, its challenge passed.
pub type Conn = Box<dyn Io>;

/// Takes over a data connection from node `from` (after the challenge):
/// the broker's message links (see broker/link.rs).
pub type DataHandler = Arc<
    dyn Fn(Conn, u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// The Raft groups a node runs, by name (`meta` for the definitions), and
/// who takes its data connections.
#[derive(Clone, Default)]
pub struct Groups {
    rafts: Arc<RwLock<HashMap<String, Raft<TypeConfig>>>>,
    data: Arc<std::sync::OnceLock<DataHandler>>,
}

impl Groups {
    /// Registers (or replaces) group `name`.
    pub fn insert(&self, name: &str, raft: Raft<TypeConfig>) {
        self.rafts.write().insert(name.to_owned(), raft);
    }

    /// Unregisters group `name`.
    pub fn remove(&self, name: &str) -> Option<Raft<TypeConfig>> {
        self.rafts.write().remove(name)
    }

    /// The names of the groups registered.
    pub fn names(&self) -> Vec<String> {
        self.rafts.read().keys().cloned().collect()
    }

    /// Group `name`, if this node runs it.
    pub fn get(&self, name: &str) -> Option<Raft<TypeConfig>> {
        self.rafts.read().get(name).cloned()
    }

    /// Sets who takes data connections (once).
    pub fn set_data_handler(&self, h: DataHandler) {
        let _ = self.data.set(h);
    }
}

/// Where each node of the cluster is reached: the addresses in this node's
/// config, then those learnt from the definitions group's membership (a
/// node that joined later). Shared by every group's links and the data
/// links.
#[derive(Clone, Debug, Default)]
pub struct AddressBook(Arc<RwLock<BTreeMap<u64, (String, bool)>>>);

impl AddressBook {
    /// A book holding the configured addresses.
    pub fn configured(nodes: impl IntoIterator<Item = (u64, String)>) -> AddressBook {
        AddressBook(Arc::new(RwLock::new(
            nodes.into_iter().map(|(id, a)| (id, (a, true))).collect(),
        )))
    }

    /// Where node `id` is reached.
    pub fn get(&self, id: u64) -> Option<String> {
        self.0.read().get(&id).map(|(a, _)| a.clone())
    }

    /// Learns node `id`'s address from a membership (a configured address
    /// wins over it).
    pub fn learn(&self, id: u64, addr: &str) {
        let mut book = self.0.write();
        match book.get(&id) {
            Some((_, true)) => {}
            Some((a, false)) if a == addr => {}
            _ => {
                book.insert(id, (addr.to_owned(), false));
            }
        }
    }

    /// Every node's address, by id.
    pub fn all(&self) -> BTreeMap<u64, String> {
        self.0
            .read()
            .iter()
            .map(|(id, (a, _))| (*id, a.clone()))
            .collect()
    }
}

/// A change of a group's members.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MemberChange {
    /// Adds node `id` at `addr` as a voter (first as a learner, until it
    /// has caught up).
    Add(u64, String),
    /// Removes node `id`.
    Remove(u64),
}

/// Makes `change` to `raft` if this node leads it.
pub async fn change_here(raft: &Raft<TypeConfig>, change: MemberChange) -> Proposal {
    use openraft::ChangeMembers;
    use openraft::error::ClientWriteError;
    let leader = {
        let m = raft.metrics().borrow().clone();
        if m.current_leader != Some(m.id) {
            let hint = m.current_leader.and_then(|l| {
                m.membership_config
                    .nodes()
                    .find(|(id, _)| **id == l)
                    .map(|(_, n)| (l, n.addr.clone()))
            });
            return Proposal::NotLeader(hint);
        }
        m
    };
    let voters: BTreeSet<u64> = leader.membership_config.membership().voter_ids().collect();
    let result = match change {
        MemberChange::Add(id, addr) => {
            if voters.contains(&id) {
                return Proposal::Applied(0, Vec::new());
            }
            match raft.add_learner(id, BasicNode::new(addr), true).await {
                Ok(_) => {
                    raft.change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                        .await
                }
                Err(e) => Err(e),
            }
        }
        MemberChange::Remove(id) => {
            let known = leader.membership_config.nodes().any(|(n, _)| *n == id);
            if !known {
                return Proposal::Applied(0, Vec::new());
            }
            if voters.contains(&id) {
                if voters.len() == 1 {
                    return Proposal::Failed(format!("node {id} is the group's last member"));
                }
                raft.change_membership(ChangeMembers::RemoveVoters([id].into()), false)
                    .await
            } else {
                raft.change_membership(ChangeMembers::RemoveNodes([id].into()), false)
                    .await
            }
        }
    };
    match result {
        Ok(r) => Proposal::Applied(r.log_id.index, Vec::new()),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Proposal::NotLeader(f.leader_id.zip(f.leader_node.map(|n| n.addr)))
        }
        Err(e) => Proposal::Failed(e.to_string()),
    }
}

#[derive(Serialize, Deserialize)]
pub(super) enum Request {
    Append(String, AppendEntriesRequest<TypeConfig>),
    Vote(String, VoteRequest<u64>),
    Snapshot(String, InstallSnapshotRequest<TypeConfig>),
    /// A command for the group, to be written if this node leads it.
    Propose(String, Vec<u8>),
    /// The connection becomes a data link from this node (no reply).
    Data(u64),
    /// A change of the group's members, to be made if this node leads it.
    Members(String, MemberChange),
    /// Which node leads the group, as far as this node knows.
    Leader(String),
    /// Answer once this node has applied the group's log up to the index
    /// (or after the milliseconds given): whether it has.
    Applied(String, u64, u64),
}

#[derive(Serialize, Deserialize)]
enum Reply {
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    Snapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    Propose(Proposal),
    /// The node does not run the group named.
    NoGroup,
    /// The leader this node knows of.
    Leader(Option<u64>),
    /// Whether the node has applied up to the index asked.
    Applied(bool),
}

/// What became of a proposal.
#[derive(Debug, Serialize, Deserialize)]
pub enum Proposal {
    /// Committed and applied at this log index, with the machine's reply.
    Applied(u64, Vec<u8>),
    /// This node does not lead the group; the leader it knows of, if any.
    NotLeader(Option<(u64, String)>),
    /// The group refused it (shutting down, a storage failure).
    Failed(String),
}

/// Writes `cmd` to `raft` if it leads: the proposal's outcome.
pub async fn propose_here(raft: &Raft<TypeConfig>, cmd: Vec<u8>) -> Proposal {
    use openraft::error::ClientWriteError;
    match raft.client_write(cmd).await {
        Ok(r) => Proposal::Applied(r.log_id.index, r.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Proposal::NotLeader(f.leader_id.zip(f.leader_node.map(|n| n.addr)))
        }
        Err(e) => Proposal::Failed(e.to_string()),
    }
}

fn proof(secret: &[u8], challenge: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(secret);
    h.update(challenge);
    h.finalize().to_vec()
}

async fn write_frame<S: AsyncWrite + Unpin + ?Sized>(s: &mut S, body: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(body);
    s.write_all(&buf).await
}

async fn read_frame<S: AsyncRead + Unpin + ?Sized>(s: &mut S) -> io::Result<Vec<u8>> {
    let len = s.read_u32().await? as usize;
    if len > FRAME_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("inter-node frame of {len} bytes is over the limit of {FRAME_MAX}"),
        ));
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).await?;
    Ok(body)
}

/// Serves openraft's RPCs for `raft` on `listener` until this future is
/// dropped (its task aborted), which also closes every connection it
/// accepted: a stopped node leaves no connection answering for it. Only
/// peers that prove they know `secret` are answered.
pub async fn serve(listener: TcpListener, groups: Groups, secret: Arc<Peering>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let (groups, secret) = (groups.clone(), secret.clone());
                conns.spawn(async move {
                    if let Err(e) = answer(stream, groups, &secret).await
                        && e.kind() != io::ErrorKind::UnexpectedEof
                    {
                        tracing::debug!("inter-node connection from {peer} ended: {e}");
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn answer(s: TcpStream, groups: Groups, peering: &Peering) -> io::Result<()> {
    s.set_nodelay(true)?;
    let mut s: Conn = match &peering.tls {
        Some(tls) => Box::new(
            tokio::time::timeout(CONNECT_TIMEOUT, tls.acceptor.accept(s))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??,
        ),
        None => Box::new(s),
    };
    let secret = &peering.secret[..];
    let mut challenge = [0u8; 16];
    getrandom::fill(&mut challenge).map_err(io::Error::other)?;
    s.write_all(&challenge).await?;
    let mut answer = [0u8; 32];
    s.read_exact(&mut answer).await?;
    if answer[..] != proof(secret, &challenge)[..] {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "a peer did not prove it knows the cluster secret",
        ));
    }
    loop {
        let req: Request = super::decode(&read_frame(&mut s).await?)?;
        if let Request::Data(from) = req {
            return match groups.data.get() {
                Some(h) => {
                    h(s, from).await;
                    Ok(())
                }
                None => Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "this node takes no data connections",
                )),
            };
        }
        let group = match &req {
            Request::Append(g, _)
            | Request::Vote(g, _)
            | Request::Snapshot(g, _)
            | Request::Propose(g, _)
            | Request::Members(g, _)
            | Request::Leader(g)
            | Request::Applied(g, _, _) => groups.get(g),
            Request::Data(_) => None,
        };
        let reply = match (group, req) {
            (None, _) => Reply::NoGroup,
            (Some(raft), Request::Append(_, r)) => Reply::Append(raft.append_entries(r).await),
            (Some(raft), Request::Vote(_, r)) => Reply::Vote(raft.vote(r).await),
            (Some(raft), Request::Snapshot(_, r)) => {
                Reply::Snapshot(raft.install_snapshot(r).await)
            }
            (Some(raft), Request::Propose(_, cmd)) => {
                Reply::Propose(propose_here(&raft, cmd).await)
            }
            (Some(raft), Request::Members(_, change)) => {
                Reply::Propose(change_here(&raft, change).await)
            }
            (Some(raft), Request::Leader(_)) => {
                Reply::Leader(raft.metrics().borrow().current_leader)
            }
            (Some(raft), Request::Applied(_, index, ms)) => Reply::Applied(
                raft.wait(Some(Duration::from_millis(ms)))
                    .applied_index_at_least(Some(index), "a change to be applied")
                    .await
                    .is_ok(),
            ),
            (Some(_), Request::Data(_)) => Reply::NoGroup,
        };
        write_frame(&mut s, &super::encode(&reply)?).await?;
    }
}

/// Opens a data connection to the node at `addr` as node `from`: the
/// challenge answered, the connection is the caller's (broker/link.rs).
pub async fn connect_data(addr: &str, peering: &Peering, from: u64) -> io::Result<Conn> {
    let mut s = dial(addr, peering).await?;
    let hello = super::encode(&Request::Data(from))?;
    write_frame(&mut s, &hello).await?;
    Ok(s)
}

/// Connects to the node at `addr`: TCP, TLS if the cluster uses it, then
/// the challenge answered with the secret.
async fn dial(addr: &str, peering: &Peering) -> io::Result<Conn> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    tcp.set_nodelay(true)?;
    let mut s: Conn = match &peering.tls {
        Some(tls) => {
            let name = super::tls::Tls::server_name(addr)?;
            Box::new(
                tokio::time::timeout(CONNECT_TIMEOUT, tls.connector.connect(name, tcp))
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                    })??,
            )
        }
        None => Box::new(tcp),
    };
    let mut challenge = [0u8; 16];
    s.read_exact(&mut challenge).await?;
    s.write_all(&proof(&peering.secret, &challenge)).await?;
    Ok(s)
}

/// Makes links to the other nodes of a group.
#[derive(Clone)]
pub struct Network {
    secret: Arc<Peering>,
    group: String,
    /// Where this node reaches each node, which wins over the address in
    /// the group's membership (another node's view).
    addrs: AddressBook,
}

impl Network {
    /// Links for group `group` that prove `secret` to their peers.
    pub fn new(secret: Arc<Peering>, group: &str) -> Network {
        Self::with_addrs(secret, group, AddressBook::default())
    }

    /// `new`, reaching nodes at `addrs` where it has them.
    pub fn with_addrs(secret: Arc<Peering>, group: &str, addrs: AddressBook) -> Network {
        Network {
            secret,
            group: group.to_owned(),
            addrs,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Link;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Link {
        let addr = self.addrs.get(target).unwrap_or_else(|| node.addr.clone());
        Link::new(target, &addr, self.secret.clone(), &self.group)
    }
}

/// One link to one peer, for one group.
pub struct Link {
    target: u64,
    addr: String,
    secret: Arc<Peering>,
    group: String,
    conn: Option<Conn>,
}

impl Link {
    /// A link to node `target` at `addr` for `group` (it connects on first use).
    pub fn new(target: u64, addr: &str, secret: Arc<Peering>, group: &str) -> Link {
        Link {
            target,
            addr: addr.to_owned(),
            secret,
            group: group.to_owned(),
            conn: None,
        }
    }

    /// Asks the peer to write `cmd` to the group if it leads it.
    pub async fn propose(&mut self, cmd: Vec<u8>, ttl: Duration) -> io::Result<Proposal> {
        match self
            .call(&Request::Propose(self.group.clone(), cmd), ttl)
            .await?
        {
            Reply::Propose(p) => Ok(p),
            Reply::NoGroup => Ok(Proposal::NotLeader(None)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the peer answered another request",
            )),
        }
    }

    /// Asks the peer to make `change` to the group if it leads it.
    pub async fn change_members(
        &mut self,
        change: MemberChange,
        ttl: Duration,
    ) -> io::Result<Proposal> {
        match self
            .call(&Request::Members(self.group.clone(), change), ttl)
            .await?
        {
            Reply::Propose(p) => Ok(p),
            Reply::NoGroup => Ok(Proposal::NotLeader(None)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the peer answered another request",
            )),
        }
    }

    /// Asks the peer to answer once it has applied the group's log up to
    /// `index` (waiting `wait` at most): whether it has.
    pub async fn applied(&mut self, index: u64, wait: Duration) -> io::Result<bool> {
        let req = Request::Applied(self.group.clone(), index, wait.as_millis() as u64);
        match self.call(&req, wait + Duration::from_millis(500)).await? {
            Reply::Applied(done) => Ok(done),
            Reply::NoGroup => Ok(false),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the peer answered another request",
            )),
        }
    }

    /// Asks the peer which node leads the group (None: it knows of none,
    /// or does not run the group).
    pub async fn leader(&mut self, ttl: Duration) -> io::Result<Option<u64>> {
        match self.call(&Request::Leader(self.group.clone()), ttl).await? {
            Reply::Leader(l) => Ok(l),
            Reply::NoGroup => Ok(None),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the peer answered another request",
            )),
        }
    }

    /// Sends one request and reads its reply, connecting first if needed;
    /// any failure drops the connection (the next call connects again).
    async fn call(&mut self, req: &Request, ttl: Duration) -> io::Result<Reply> {
        let body = super::encode(req)?;
        let result = tokio::time::timeout(ttl, async {
            if self.conn.is_none() {
                self.conn = Some(self.connect().await?);
            }
            let s = self.conn.as_mut().expect("connected above");
            write_frame(s, &body).await?;
            read_frame(s).await
        })
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "no reply in time")));
        match result {
            Ok(reply) => super::decode(&reply),
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    async fn connect(&self) -> io::Result<Conn> {
        dial(&self.addr, &self.secret).await
    }

    fn unreachable<E: std::error::Error>(e: io::Error) -> RPCError<u64, BasicNode, E> {
        RPCError::Unreachable(Unreachable::new(&e))
    }

    fn mismatch<E: std::error::Error>() -> RPCError<u64, BasicNode, E> {
        Self::unreachable(io::Error::new(
            io::ErrorKind::InvalidData,
            "the peer answered another request",
        ))
    }
}

impl RaftNetwork<TypeConfig> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        match self
            .call(&Request::Append(self.group.clone(), rpc), option.hard_ttl())
            .await
        {
            Ok(Reply::Append(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(Reply::NoGroup) => Err(Self::unreachable(io::Error::new(
                io::ErrorKind::NotFound,
                format!("the peer does not run group {}", self.group),
            ))),
            Ok(_) => Err(Self::mismatch()),
            Err(e) => Err(Self::unreachable(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        match self
            .call(
                &Request::Snapshot(self.group.clone(), rpc),
                option.hard_ttl(),
            )
            .await
        {
            Ok(Reply::Snapshot(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(Reply::NoGroup) => Err(Self::unreachable(io::Error::new(
                io::ErrorKind::NotFound,
                format!("the peer does not run group {}", self.group),
            ))),
            Ok(_) => Err(Self::mismatch()),
            Err(e) => Err(Self::unreachable(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        match self
            .call(&Request::Vote(self.group.clone(), rpc), option.hard_ttl())
            .await
        {
            Ok(Reply::Vote(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(Reply::NoGroup) => Err(Self::unreachable(io::Error::new(
                io::ErrorKind::NotFound,
                format!("the peer does not run group {}", self.group),
            ))),
            Ok(_) => Err(Self::mismatch()),
            Err(e) => Err(Self::unreachable(e)),
        }
    }
}
