//! The links between the nodes of a Raft group: openraft's RPCs (append
//! entries, vote, install snapshot) over TCP.
//!
//! Each node listens on its inter-node address (`serve`). A link is one
//! TCP connection per openraft client, opened on first use and again after
//! any error. A connection starts with a challenge: the server sends 16
//! random bytes, the client answers SHA-256(secret ‖ those bytes), and a
//! wrong answer closes the connection, so only nodes that share the
//! cluster's secret take part. Then each request is one frame
//! (`[u32 length][JSON]`) answered by one frame. Frames over `FRAME_MAX`
//! close the connection.

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
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::TypeConfig;

/// The largest frame a link takes (a snapshot is sent in chunks well below).
const FRAME_MAX: usize = 64 << 20;

/// How long a link waits to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, Deserialize)]
enum Request {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

#[derive(Serialize, Deserialize)]
enum Reply {
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    Snapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
}

fn proof(secret: &[u8], challenge: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(secret);
    h.update(challenge);
    h.finalize().to_vec()
}

async fn write_frame(s: &mut TcpStream, body: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(body);
    s.write_all(&buf).await
}

async fn read_frame(s: &mut TcpStream) -> io::Result<Vec<u8>> {
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
pub async fn serve(listener: TcpListener, raft: Raft<TypeConfig>, secret: Arc<Vec<u8>>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let (raft, secret) = (raft.clone(), secret.clone());
                conns.spawn(async move {
                    if let Err(e) = answer(stream, raft, &secret).await
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

async fn answer(mut s: TcpStream, raft: Raft<TypeConfig>, secret: &[u8]) -> io::Result<()> {
    s.set_nodelay(true)?;
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
        let req: Request = serde_json::from_slice(&read_frame(&mut s).await?)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let reply = match req {
            Request::Append(r) => Reply::Append(raft.append_entries(r).await),
            Request::Vote(r) => Reply::Vote(raft.vote(r).await),
            Request::Snapshot(r) => Reply::Snapshot(raft.install_snapshot(r).await),
        };
        write_frame(
            &mut s,
            &serde_json::to_vec(&reply).map_err(io::Error::other)?,
        )
        .await?;
    }
}

/// Makes links to the other nodes of a group.
#[derive(Clone)]
pub struct Network {
    secret: Arc<Vec<u8>>,
}

impl Network {
    /// Links that prove `secret` to their peers.
    pub fn new(secret: Arc<Vec<u8>>) -> Network {
        Network { secret }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Link;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Link {
        Link {
            target,
            addr: node.addr.clone(),
            secret: self.secret.clone(),
            conn: None,
        }
    }
}

/// One link to one peer.
pub struct Link {
    target: u64,
    addr: String,
    secret: Arc<Vec<u8>>,
    conn: Option<TcpStream>,
}

impl Link {
    /// Sends one request and reads its reply, connecting first if needed;
    /// any failure drops the connection (the next call connects again).
    async fn call(&mut self, req: &Request, ttl: Duration) -> io::Result<Reply> {
        let body = serde_json::to_vec(req).map_err(io::Error::other)?;
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
            Ok(reply) => serde_json::from_slice(&reply)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    async fn connect(&self) -> io::Result<TcpStream> {
        let mut s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        s.set_nodelay(true)?;
        let mut challenge = [0u8; 16];
        s.read_exact(&mut challenge).await?;
        s.write_all(&proof(&self.secret, &challenge)).await?;
        Ok(s)
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
        match self.call(&Request::Append(rpc), option.hard_ttl()).await {
            Ok(Reply::Append(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
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
        match self.call(&Request::Snapshot(rpc), option.hard_ttl()).await {
            Ok(Reply::Snapshot(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(Self::mismatch()),
            Err(e) => Err(Self::unreachable(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        match self.call(&Request::Vote(rpc), option.hard_ttl()).await {
            Ok(Reply::Vote(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(Self::mismatch()),
            Err(e) => Err(Self::unreachable(e)),
        }
    }
}
