//! The handshake: PeerProperties, SaslHandshake, SaslAuthenticate (PLAIN,
//! warren's users, the loopback-only rule and failed-login delays as over
//! AMQP), then the server's Tune and the client's, then Open (the vhost
//! must exist and the user have permissions in it). Heartbeat and Close
//! are accepted throughout. The frame max stays at `INITIAL_FRAME_MAX`
//! until Open succeeds.

use std::sync::atomic::Ordering;

use super::codec::{Fields, Out};
use super::connection::{Conn, End, Res};
use super::{code, key};

/// Where the handshake is.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Step {
    Start,
    Authenticated,
    Tuned,
}

impl Conn {
    /// Runs the handshake to a successful Open.
    pub async fn handshake(&mut self) -> Res {
        let mut step = Step::Start;
        let mut client_tune = None;
        loop {
            let frame = self.next_frame().await?;
            let mut f = Fields::new(frame);
            let k = f.u16()?;
            let _version = f.u16()?;
            match (k, step) {
                (key::PEER_PROPERTIES, _) => self.peer_properties(&mut f).await?,
                (key::SASL_HANDSHAKE, _) => self.sasl_handshake(&mut f).await?,
                (key::SASL_AUTHENTICATE, Step::Start) => {
                    if self.sasl_authenticate(&mut f).await? {
                        step = Step::Authenticated;
                    }
                }
                (key::TUNE, Step::Authenticated) => {
                    client_tune = Some((f.u32()?, f.u32()?));
                    step = Step::Tuned;
                }
                (key::OPEN, Step::Tuned) => {
                    let (frame_max, heartbeat) = client_tune.unwrap_or((0, 0));
                    return self.open(&mut f, frame_max, heartbeat).await;
                }
                (key::HEARTBEAT, _) => {}
                (key::CLOSE, _) => return self.close_requested(&mut f).await,
                (k, _) => {
                    return Err(End::Close(
                        code::UNKNOWN_FRAME,
                        format!("command {k:#06x} before the connection is open"),
                    ));
                }
            }
            self.flush().await?;
        }
    }

    async fn peer_properties(&mut self, f: &mut Fields) -> Res {
        let corr = f.u32()?;
        let _client = f.string_map()?;
        let version = crate::protocol::RABBITMQ_COMPAT_VERSION;
        let mut o = Out::response(key::PEER_PROPERTIES, corr, code::OK);
        o.string_map(&[
            ("product", "RabbitMQ"),
            ("version", version),
            ("platform", "warren (Rust)"),
            ("product_name", "warren"),
            ("product_version", env!("CARGO_PKG_VERSION")),
            ("copyright", "warren contributors"),
            (
                "information",
                "Licensed under the MIT or Apache 2.0 licenses",
            ),
        ]);
        self.send(&o.finish()).await
    }

    async fn sasl_handshake(&mut self, f: &mut Fields) -> Res {
        let corr = f.u32()?;
        let mut o = Out::response(key::SASL_HANDSHAKE, corr, code::OK);
        o.u32(1).string("PLAIN");
        self.send(&o.finish()).await
    }

    /// Checks PLAIN credentials; on success sends the response and Tune.
    /// Returns whether the client is authenticated.
    async fn sasl_authenticate(&mut self, f: &mut Fields) -> Res<bool> {
        let corr = f.u32()?;
        let mechanism = f.string()?;
        let data = f.bytes()?;
        if mechanism != "PLAIN" {
            let c = code::SASL_MECHANISM_NOT_SUPPORTED;
            self.send(&Out::response(key::SASL_AUTHENTICATE, corr, c).finish())
                .await?;
            return Ok(false);
        }
        let mut parts = data.split(|b| *b == 0);
        let (Some(_authzid), Some(user), Some(pass), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            let c = code::SASL_ERROR;
            self.send(&Out::response(key::SASL_AUTHENTICATE, corr, c).finish())
                .await?;
            return Ok(false);
        };
        let user = String::from_utf8_lossy(user).into_owned();
        let pass = String::from_utf8_lossy(pass).into_owned();
        let c = self.check_login(&user, &pass).await;
        self.send(&Out::response(key::SASL_AUTHENTICATE, corr, c).finish())
            .await?;
        if c != code::OK {
            self.flush().await?;
            return Err(End::Done);
        }
        self.user = user;
        let s = &self.broker.config.stream;
        let mut t = Out::new(key::TUNE, 1);
        t.u32(s.frame_max).u32(s.heartbeat);
        self.send(&t.finish()).await?;
        Ok(true)
    }

    /// The response code for a login: OK, a wrong user or password, or a
    /// loopback-only user from elsewhere.
    async fn check_login(&self, user: &str, pass: &str) -> u16 {
        let ip = self.peer.ip().to_canonical();
        if self.broker.authenticate(user, pass).is_none() {
            tracing::warn!(peer = %self.peer, user = %user.escape_debug(), "stream protocol: authentication failed (PLAIN)");
            let r = self.broker.failed_logins.record_failure(ip, user);
            if !r.delay.is_zero() {
                tokio::time::sleep(r.delay).await;
            }
            return code::AUTHENTICATION_FAILURE;
        }
        let loopback_only = self
            .broker
            .config
            .auth
            .loopback_users
            .iter()
            .any(|u| u == user);
        if loopback_only && !ip.is_loopback() {
            return code::AUTHENTICATION_FAILURE_LOOPBACK;
        }
        self.broker.failed_logins.record_success(ip, user);
        code::OK
    }

    /// Open: the vhost, with permissions; then the negotiated frame max
    /// and heartbeat apply.
    async fn open(&mut self, f: &mut Fields, frame_max: u32, heartbeat: u32) -> Res {
        let corr = f.u32()?;
        let name = f.string()?;
        let vhost = self.broker.vhost(&name);
        let permitted = self.broker.permissions(&self.user, &name).is_some();
        let Some(vhost) = vhost.filter(|_| permitted) else {
            let c = code::VIRTUAL_HOST_ACCESS_FAILURE;
            self.send(&Out::response(key::OPEN, corr, c).finish())
                .await?;
            self.flush().await?;
            return Err(End::Done);
        };
        self.vhost = Some(vhost);
        let s = &self.broker.config.stream;
        self.frame_max
            .store(negotiate(s.frame_max, frame_max), Ordering::Relaxed);
        self.heartbeat = negotiate(s.heartbeat, heartbeat);
        let (host, port) = super::advertised(&self.broker, self.tls);
        let port = port.to_string();
        let mut o = Out::response(key::OPEN, corr, code::OK);
        o.string_map(&[("advertised_host", &host), ("advertised_port", &port)]);
        self.send(&o.finish()).await?;
        self.flush().await
    }
}

/// The smaller of two settings where 0 means "none".
fn negotiate(server: u32, client: u32) -> u32 {
    match (server, client) {
        (0, c) => c,
        (s, 0) => s,
        (s, c) => s.min(c),
    }
}
