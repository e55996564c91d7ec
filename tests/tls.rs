//! The TLS ("amqps") listener, client certificates and SASL EXTERNAL.
//!
//! Each test makes its own CA, server certificate (SAN 127.0.0.1 and
//! localhost) and client certificates with rcgen, writes them to a temporary
//! directory and starts warren with `[tls]` pointing at them.

mod common;
mod raw;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::protocol::{AMQPClass, connection};
use lapin::options::BasicAckOptions;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Connection, ConnectionProperties, DefaultConnectionBuilder};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use common::{Warren, reply_code, reply_text, unique};
use raw::{PROTOCOL_HEADER, plain, read_method, send_raw, start_ok};
use support::*;

/// A certificate and its key, PEM.
struct Identity {
    cert: String,
    key: String,
}

/// A test CA that issues server and client certificates.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).expect("self-sign CA").pem();
        Ca { params, key, pem }
    }

    fn issue(&self, cn: &str, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose) -> Identity {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        dn.push(DnType::OrganizationName, "warren tests");
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("sign");
        Identity {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn server(&self) -> Identity {
        self.issue(
            "localhost",
            vec![
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress([127, 0, 0, 1].into()),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client(&self, cn: &str) -> Identity {
        self.issue(cn, vec![], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// Certificates on disk for one broker.
struct Pki {
    ca: Ca,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let ca = Ca::new("warren test CA");
        let dir = tempfile::tempdir().expect("temp dir");
        let server = ca.server();
        std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
        std::fs::write(dir.path().join("server.pem"), &server.cert).unwrap();
        std::fs::write(dir.path().join("server.key"), &server.key).unwrap();
        Pki { ca, dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// `[tls]` with the server certificate, plus `extra` lines.
    fn config(&self, extra: &str) -> String {
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n{extra}",
            self.path("server.pem"),
            self.path("server.key"),
            self.path("ca.pem"),
        )
    }

    /// lapin's TLS settings: trust the test CA, optionally present `id`.
    fn lapin_tls(&self, id: Option<&Identity>) -> OwnedTLSConfig {
        OwnedTLSConfig {
            identity: id.map(|i| OwnedIdentity::PKCS8 {
                pem: i.cert.as_bytes().to_vec(),
                key: i.key.as_bytes().to_vec(),
            }),
            cert_chain: Some(self.ca.pem.clone()),
        }
    }
}

fn tls_port(w: &Warren) -> u16 {
    w.tls_port.expect("warren started with TLS")
}

async fn connect_tls(uri: &str, tls: OwnedTLSConfig) -> lapin::Result<Connection> {
    let builder = DefaultConnectionBuilder::new()?
        .with_uri_str(uri.to_owned())
        .with_properties(ConnectionProperties::default())
        .with_tls_config(tls);
    match tokio::time::timeout(WAIT, builder.connect()).await {
        Ok(r) => r,
        Err(_) => panic!("connecting to {uri} timed out"),
    }
}

/// The connections the HTTP API lists.
fn api_connections(w: &Warren) -> Vec<serde_json::Value> {
    let (status, v) = w.api("GET", "/api/connections", None);
    assert_eq!(status, 200, "{v}");
    v.as_array().expect("a list").clone()
}

/// Waits for the HTTP API to list a connection satisfying `f`.
fn wait_for_connection(w: &Warren, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(c) = api_connections(w).into_iter().find(|c| f(c)) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "no such connection: {:?}",
            api_connections(w)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn create_user(w: &Warren, user: &str) {
    let (s, v) = w.api(
        "PUT",
        &format!("/api/users/{user}"),
        Some(&serde_json::json!({"password": "not-used-with-external", "tags": ""})),
    );
    assert!(s == 201 || s == 204, "create user {user}: {s} {v}");
    let (s, v) = w.api(
        "PUT",
        &format!("/api/permissions/%2f/{user}"),
        Some(&serde_json::json!({"configure": "^ext-.*", "write": ".*", "read": ".*"})),
    );
    assert!(s == 201 || s == 204, "permissions for {user}: {s} {v}");
}

#[tokio::test]
async fn amqps_carries_messages_with_the_test_ca_trusted() {
    let pki = Pki::new();
    let w = Warren::start_tls(&pki.config(""));
    let uri = format!("amqps://guest:guest@127.0.0.1:{}/%2f", tls_port(&w));
    let conn = connect_tls(&uri, pki.lapin_tls(None))
        .await
        .expect("amqps connection");
    let ch = within("channel.open-ok", conn.create_channel())
        .await
        .expect("channel");
    let q = unique("tls");
    declare(&ch, &q).await;
    let mut consumer = consume(&ch, &q, false).await;
    // A small message and one spanning many frames and TLS records.
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    publish(&ch, "", &q, b"over tls").await;
    publish(&ch, "", &q, &big).await;
    let d = next(&mut consumer).await;
    assert_eq!(d.data, b"over tls");
    d.acker.ack(BasicAckOptions::default()).await.unwrap();
    let d = next(&mut consumer).await;
    assert!(d.data == big, "the large body came back changed");
    d.acker.ack(BasicAckOptions::default()).await.unwrap();

    let c = wait_for_connection(&w, |c| c["ssl"] == true);
    assert_eq!(c["user"], "guest");
    assert_eq!(c["auth_mechanism"], "PLAIN");
    assert_eq!(c["port"], tls_port(&w));
    assert!(
        c["ssl_protocol"] == "tlsv1.3" || c["ssl_protocol"] == "tlsv1.2",
        "{c}"
    );
    assert!(c["peer_cert_subject"].is_null(), "{c}");
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn the_plain_tcp_listener_works_alongside_tls() {
    let pki = Pki::new();
    let w = Warren::start_tls(&pki.config(""));
    let (plain_conn, plain_ch) = w.channel().await;
    let uri = format!("amqps://guest:guest@localhost:{}/%2f", tls_port(&w));
    let tls_conn = connect_tls(&uri, pki.lapin_tls(None))
        .await
        .expect("amqps connection to localhost");
    let tls_ch = within("channel.open-ok", tls_conn.create_channel())
        .await
        .expect("channel");
    // A message published over TCP is consumed over TLS and back.
    let q = unique("both");
    declare(&plain_ch, &q).await;
    publish(&plain_ch, "", &q, b"from tcp").await;
    // The publish and the get travel on different connections: the get may
    // arrive first, so look until the message is there.
    let m = get_eventually(&tls_ch, &q).await;
    assert_eq!(m.delivery.data, b"from tcp");
    publish(&tls_ch, "", &q, b"from tls").await;
    let m = get_eventually(&plain_ch, &q).await;
    assert_eq!(m.delivery.data, b"from tls");

    let conns = api_connections(&w);
    assert_eq!(conns.len(), 2, "{conns:?}");
    assert_eq!(conns.iter().filter(|c| c["ssl"] == true).count(), 1);
    let plain = conns.iter().find(|c| c["ssl"] == false).unwrap();
    assert_eq!(plain["port"], w.port);
    assert!(plain["ssl_protocol"].is_null());
    let (_, o) = w.api("GET", "/api/overview", None);
    let listeners = o["listeners"].as_array().unwrap();
    assert!(
        listeners
            .iter()
            .any(|l| l["protocol"] == "amqp/ssl" && l["port"] == tls_port(&w)),
        "{listeners:?}"
    );
    for (protocol, port) in [
        ("stream", w.stream_port),
        ("stream/ssl", w.stream_tls_port.unwrap()),
    ] {
        assert!(
            listeners
                .iter()
                .any(|l| l["protocol"] == protocol && l["port"] == port),
            "no {protocol} listener on {port}: {listeners:?}"
        );
    }
    let _ = tls_conn.close(200, "".into()).await;
    let _ = plain_conn.close(200, "".into()).await;
}

#[tokio::test]
async fn external_logs_in_as_the_client_certificate_cn() {
    let pki = Pki::new();
    let w = Warren::start_tls(&pki.config("verify_peer = true"));
    let user = "ext-app";
    create_user(&w, user);
    let id = pki.ca.client(user);
    let uri = format!(
        "amqps://127.0.0.1:{}/%2f?auth_mechanism=external",
        tls_port(&w)
    );
    let conn = connect_tls(&uri, pki.lapin_tls(Some(&id)))
        .await
        .expect("EXTERNAL login with a client certificate");
    let c = wait_for_connection(&w, |c| c["ssl"] == true);
    assert_eq!(c["user"], user, "{c}");
    assert_eq!(c["auth_mechanism"], "EXTERNAL");
    let subject = c["peer_cert_subject"].as_str().unwrap_or_default();
    assert!(subject.contains("CN=ext-app"), "{c}");
    assert!(
        c["peer_cert_issuer"]
            .as_str()
            .unwrap_or_default()
            .contains("warren test CA"),
        "{c}"
    );

    // The user's own permissions apply: configure only on ^ext-.*
    let ch = within("channel.open-ok", conn.create_channel())
        .await
        .expect("channel");
    declare(&ch, "ext-mine").await;
    let err = within(
        "queue.declare reply",
        ch.queue_declare(
            "other".into(),
            lapin::options::QueueDeclareOptions::default(),
            lapin::types::FieldTable::default(),
        ),
    )
    .await
    .expect_err("configure outside ^ext-.* must be refused");
    assert_eq!(reply_code(&err), Some(403), "{err:?}");
    assert!(reply_text(&err).contains("user 'ext-app'"), "{err:?}");
    let _ = conn.close(200, "".into()).await;
}

#[tokio::test]
async fn external_with_a_cn_that_is_no_user_is_refused_with_403() {
    let pki = Pki::new();
    let w = Warren::start_tls(&pki.config("verify_peer = true"));
    let id = pki.ca.client("nobody-here");
    let uri = format!(
        "amqps://127.0.0.1:{}/%2f?auth_mechanism=external",
        tls_port(&w)
    );
    let err = connect_tls(&uri, pki.lapin_tls(Some(&id)))
        .await
        .expect_err("an unknown CN must not log in");
    assert_eq!(reply_code(&err), Some(403), "{err:?}");
    assert!(
        reply_text(&err).contains("authentication mechanism EXTERNAL"),
        "{err:?}"
    );
    assert!(api_connections(&w).is_empty());
}

/// A blocking TLS client socket to warren's TLS port.
type TlsSocket = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_socket(port: u16, pki: &Pki, id: Option<&Identity>) -> std::io::Result<TlsSocket> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.ca.pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match id {
        Some(id) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(id.cert.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(id.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("127.0.0.1").unwrap())
            .unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(raw::READ_TIMEOUT))?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// Sends the protocol header and returns connection.start's mechanisms.
fn mechanisms(s: &mut (impl Read + Write)) -> String {
    send_raw(s, PROTOCOL_HEADER);
    match read_method(s) {
        (0, AMQPClass::Connection(connection::AMQPMethod::Start(st))) => {
            String::from_utf8_lossy(st.mechanisms.as_bytes()).into_owned()
        }
        other => panic!("expected connection.start, got {other:?}"),
    }
}

#[test]
fn external_is_offered_only_to_clients_with_a_verified_certificate() {
    let pki = Pki::new();
    let w = Warren::start_tls(&pki.config("verify_peer = true"));
    let port = tls_port(&w);
    let id = pki.ca.client("guest");

    let mut s = tls_socket(port, &pki, Some(&id)).expect("TLS with a certificate");
    assert_eq!(mechanisms(&mut s), "PLAIN AMQPLAIN EXTERNAL");

    let mut s = tls_socket(port, &pki, None).expect("TLS without a certificate");
    assert_eq!(mechanisms(&mut s), "PLAIN AMQPLAIN");
    // Asking for it anyway is refused like RabbitMQ: 503 COMMAND_INVALID.
    start_ok(&mut s, "EXTERNAL", b"");
    let c = raw::expect_close_full(&mut s);
    assert_eq!(c.reply_code, 503, "{c:?}");
    assert!(
        c.reply_text
            .as_str()
            .contains("invalid authentication mechanism 'EXTERNAL'"),
        "{c:?}"
    );

    let (_s, st) = raw::start(w.port);
    assert_eq!(st.mechanisms.to_string(), "PLAIN AMQPLAIN", "plain TCP");

    // A client with a certificate may still log in with PLAIN.
    let mut s = tls_socket(port, &pki, Some(&id)).unwrap();
    mechanisms(&mut s);
    start_ok(&mut s, "PLAIN", &plain("guest", "guest"));
    match read_method(&mut s) {
        (0, AMQPClass::Connection(connection::AMQPMethod::Tune(_))) => {}
        other => panic!("expected connection.tune, got {other:?}"),
    }
}

#[tokio::test]
async fn fail_if_no_peer_cert_refuses_clients_without_a_trusted_certificate() {
    let pki = Pki::new();
    let w = Warren::start_tls(&pki.config("verify_peer = true\nfail_if_no_peer_cert = true"));
    let uri = format!("amqps://guest:guest@127.0.0.1:{}/%2f", tls_port(&w));

    let r = connect_tls(&uri, pki.lapin_tls(None)).await;
    assert!(r.is_err(), "a client without a certificate got in");

    // A certificate from another CA is no better.
    let stranger = Ca::new("some other CA").client("guest");
    let r = connect_tls(&uri, pki.lapin_tls(Some(&stranger))).await;
    assert!(r.is_err(), "a certificate from an unknown CA was accepted");

    let id = pki.ca.client("guest");
    let conn = connect_tls(&uri, pki.lapin_tls(Some(&id)))
        .await
        .expect("a client with a certificate from the CA connects");
    let c = wait_for_connection(&w, |c| c["ssl"] == true);
    assert_eq!(c["auth_mechanism"], "PLAIN");
    assert!(
        c["peer_cert_subject"]
            .as_str()
            .unwrap_or_default()
            .contains("CN=guest"),
        "{c}"
    );
    assert_eq!(api_connections(&w).len(), 1);
    let _ = conn.close(200, "".into()).await;

    // The plain TCP listener is unaffected by the TLS options.
    let (conn, _ch) = w.channel().await;
    let _ = conn.close(200, "".into()).await;
}

#[test]
fn a_raw_tls_client_without_a_certificate_gets_no_amqp_when_one_is_required() {
    let pki = Pki::new();
    let w = Warren::start_tls(&pki.config("verify_peer = true\nfail_if_no_peer_cert = true"));
    // TLS 1.3: the client may finish its side of the handshake before the
    // server's alert arrives; either way no connection.start comes back.
    if let Ok(mut s) = tls_socket(tls_port(&w), &pki, None) {
        let _ = s.write_all(PROTOCOL_HEADER);
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("the server answered {:?}", &buf[..n]),
        }
    }
}

/// Runs warren with `config` and waits for it to exit; returns its exit
/// code and standard error.
fn run_to_exit(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warren.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--stream-port", "0"])
        .arg("--config")
        .arg(&path)
        .arg("--port")
        .arg(common::free_port().to_string())
        .arg("--http-port")
        .arg(common::free_port().to_string())
        .arg("--tls-port")
        .arg(common::free_port().to_string())
        .arg("--data-dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn warren");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("warren kept running with config:\n{config}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), err)
}

#[test]
fn bad_certificate_or_key_files_stop_warren_with_a_message_naming_the_file() {
    let pki = Pki::new();
    let missing = pki.path("no-such-cert.pem");
    let garbage = pki.path("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let other_key = pki.path("other.key");
    std::fs::write(&other_key, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let cases = [
        (
            format!(
                "[tls]\ncert = {missing:?}\nkey = {:?}\n",
                pki.path("server.key")
            ),
            missing.clone(),
        ),
        (
            format!(
                "[tls]\ncert = {:?}\nkey = {garbage:?}\n",
                pki.path("server.pem")
            ),
            garbage.clone(),
        ),
        (
            format!(
                "[tls]\ncert = {garbage:?}\nkey = {:?}\n",
                pki.path("server.key")
            ),
            garbage.clone(),
        ),
        (
            format!(
                "[tls]\ncert = {:?}\nkey = {other_key:?}\n",
                pki.path("server.pem")
            ),
            other_key.clone(),
        ),
        (
            pki.config(&format!("verify_peer = true\nca = {missing:?}"))
                .replacen(&format!("ca = {:?}\n", pki.path("ca.pem")), "", 1),
            missing.clone(),
        ),
    ];
    for (config, file) in cases {
        let (code, err) = run_to_exit(&config);
        assert!(
            code.is_some_and(|c| c != 0),
            "exit {code:?} for\n{config}\n{err}"
        );
        assert!(err.contains(&file), "stderr does not name {file}:\n{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // Half a configuration is refused too.
    let (code, err) = run_to_exit(&format!("[tls]\ncert = {:?}\n", pki.path("server.pem")));
    assert!(code.is_some_and(|c| c != 0), "{err}");
    assert!(err.contains("tls.key"), "{err}");
}

/// A stream-protocol environment over TLS trusting the test CA.
async fn stream_env_tls(
    w: &Warren,
    pki: &Pki,
) -> Result<rabbitmq_stream_client::Environment, rabbitmq_stream_client::error::ClientError> {
    let tls = rabbitmq_stream_client::TlsConfiguration::builder()
        .add_root_certificates(pki.path("ca.pem"))
        .build()
        .expect("stream TLS configuration");
    within(
        "stream TLS connection",
        rabbitmq_stream_client::Environment::builder()
            .host("127.0.0.1")
            .port(w.stream_tls_port.expect("warren started with TLS"))
            .tls(tls)
            .build(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_protocol_over_tls_publishes_and_consumes_with_the_test_ca_trusted() {
    use rabbitmq_stream_client::types::{Message, OffsetSpecification};
    let pki = Pki::new();
    let w = Warren::start_tls(&pki.config(""));
    let env = stream_env_tls(&w, &pki).await.expect("connect over TLS");
    within("create", env.stream_creator().create("tls-s"))
        .await
        .expect("create stream");
    // The producer connects to the leader the Metadata command names: over
    // TLS that must be the TLS port, or the client's TLS handshake fails.
    let producer = within("producer", env.producer().build("tls-s"))
        .await
        .expect("producer over TLS");
    let batch = (0..100)
        .map(|i| Message::builder().body(format!("t{i}")).build())
        .collect();
    let st = within("confirms", producer.batch_send_with_confirm(batch))
        .await
        .expect("publish");
    assert_eq!(st.len(), 100);
    assert!(st.iter().all(|s| s.confirmed()));
    producer.close().await.expect("close producer");

    // Read back over TLS, and over the plain port: the same stream.
    let plain = within(
        "plain stream connection",
        rabbitmq_stream_client::Environment::builder()
            .host("127.0.0.1")
            .port(w.stream_port)
            .build(),
    )
    .await
    .expect("connect to the plain port");
    for e in [&env, &plain] {
        let mut c = within(
            "consumer",
            e.consumer()
                .offset(OffsetSpecification::First)
                .build("tls-s"),
        )
        .await
        .expect("consumer");
        for i in 0..100u64 {
            let d = within("delivery", futures_lite::StreamExt::next(&mut c))
                .await
                .expect("consumer open")
                .expect("delivery");
            assert_eq!(d.offset(), i);
            let body = d.message().data().unwrap_or_default().to_vec();
            assert_eq!(String::from_utf8(body).unwrap(), format!("t{i}"));
        }
        c.handle().close().await.expect("close consumer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_tls_port_refuses_plain_text_and_untrusted_server_certificates_fail() {
    let pki = Pki::new();
    let w = Warren::start_tls(&pki.config(""));
    let port = w.stream_tls_port.expect("TLS");
    // A plain-text client on the TLS port gets no stream protocol.
    let plain = within(
        "plain text on the TLS port",
        rabbitmq_stream_client::Environment::builder()
            .host("127.0.0.1")
            .port(port)
            .build(),
    )
    .await;
    assert!(
        plain.is_err(),
        "a plain-text client logged in on the TLS port"
    );
    // A client that trusts another CA refuses warren's certificate.
    let other = Pki::new();
    let tls = rabbitmq_stream_client::TlsConfiguration::builder()
        .add_root_certificates(other.path("ca.pem"))
        .build()
        .unwrap();
    let r = within(
        "TLS with another CA",
        rabbitmq_stream_client::Environment::builder()
            .host("127.0.0.1")
            .port(port)
            .tls(tls)
            .build(),
    )
    .await;
    assert!(
        r.is_err(),
        "the client accepted a certificate of an untrusted CA"
    );
    // And the broker goes on serving TLS clients that trust it.
    stream_env_tls(&w, &pki).await.expect("a trusting client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fail_if_no_peer_cert_the_stream_tls_port_refuses_clients_without_a_certificate() {
    let pki = Pki::new();
    let w = Warren::start_tls(&pki.config("verify_peer = true\nfail_if_no_peer_cert = true\n"));
    let r = stream_env_tls(&w, &pki).await;
    assert!(r.is_err(), "a client without a certificate logged in");
    // With a certificate from the trusted CA it logs in (PLAIN, as guest).
    let id = pki.ca.client("stream-app");
    std::fs::write(pki.dir.path().join("client.pem"), &id.cert).unwrap();
    std::fs::write(pki.dir.path().join("client.key"), &id.key).unwrap();
    let tls = rabbitmq_stream_client::TlsConfiguration::builder()
        .add_root_certificates(pki.path("ca.pem"))
        .add_client_certificates_keys(pki.path("client.pem"), pki.path("client.key"))
        .build()
        .unwrap();
    within(
        "stream TLS connection with a client certificate",
        rabbitmq_stream_client::Environment::builder()
            .host("127.0.0.1")
            .port(w.stream_tls_port.unwrap())
            .tls(tls)
            .build(),
    )
    .await
    .expect("a client with a trusted certificate");
}
