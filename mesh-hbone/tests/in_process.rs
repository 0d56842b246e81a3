//! The HBONE data path in one process over 127.0.0.1, with no root and no
//! network namespace: `Client::open` through a real mTLS and HTTP/2
//! connection to `server::serve_connection`, whose handler relays to a
//! loopback echo server. Certificates are made here by a test root.
mod support;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream, client::SendRequest};
use http::{Method, Request, StatusCode};
use mesh_hbone::{HboneError, server::Refused, stream};
use support::{
    App, Bed, Ca, Counter, Echo, HboneServer, LoopbackDial, Mode, Source, TRAILER, WAIT, client,
    raw_h2, tcp_pair, within,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::{Barrier, Semaphore},
    task::JoinSet,
    time::Instant,
};

fn hbone_port_of(dst: SocketAddr) -> SocketAddr {
    SocketAddr::new(dst.ip(), mesh_common::HBONE_PORT)
}

/// Bytes that are not all alike, so a reordering or a duplicate shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

#[tokio::test]
async fn a_tunnel_carries_early_data_both_directions_and_a_half_close() {
    let ca = Ca::new("mesh root");
    let db = ca.svid("shop", "db");
    let server = HboneServer::start(&ca.bundle(), &db, Mode::Relay, WAIT).await;
    let echo = Echo::start().await;
    let web = Source::new(
        "web-0",
        ca.svid("shop", "web"),
        LoopbackDial::to(server.addr),
    );
    let web_identity = web.svid.identity.clone();
    let client = client(ca.bundle());

    // The app wrote before its connection was accepted: peeked, as the
    // agent does, and sent with the CONNECT.
    let (mut socket, accepted) = tcp_pair().await;
    socket.write_all(b"early hello").await.unwrap();
    within("the early bytes", accepted.readable())
        .await
        .unwrap();
    let early = stream::early_data(&accepted);
    assert_eq!(&early[..], b"early hello");
    let src = socket.local_addr().unwrap();
    let tunnel = within(
        "the tunnel to open",
        client.open(&web.origin(), src, echo.addr, db.identity.clone(), &early),
    )
    .await
    .unwrap();
    assert_eq!(tunnel.early, early.len());
    assert_eq!(tunnel.trace_id.len(), 32, "{}", tunnel.trace_id);
    // Nothing relays the socket yet: what the upstream has came with the
    // request.
    assert_eq!(echo.wait_received(0, early.len()).await, early);

    let mut app = App::relay(socket, accepted, tunnel);
    let mut back = vec![0u8; early.len()];
    within("the early bytes' echo", app.socket.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(back, early);
    app.echo(b"ping").await;
    let bulk = pattern(3 * 1024 * 1024);
    app.echo(&bulk).await;

    // The upstream sees the app's FIN and answers after it; the app still
    // reads that answer and then the end of the stream.
    let (rest, moved) = app.finish().await;
    assert_eq!(rest, TRAILER);
    let sent = early.len() + 4 + bulk.len();
    assert_eq!(moved.downstream_to_upstream, sent as u64);
    assert_eq!(moved.upstream_to_downstream, (sent + TRAILER.len()) as u64);
    // Every byte reached the upstream once, in order: the early ones were
    // skipped in the socket, not sent twice.
    let mut expected = early.to_vec();
    expected.extend_from_slice(b"ping");
    expected.extend_from_slice(&bulk);
    assert!(echo.wait_received(0, sent).await == expected);
    assert_eq!(echo.connections(), 1);

    let seen = server.handler.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].source, web_identity);
    assert_eq!(
        seen[0].source.to_string(),
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    assert_eq!(seen[0].dst, echo.addr);
    assert!(seen[0].peer.ip().is_loopback());
    // The client asked for the destination's HBONE port.
    assert_eq!(*web.dial.asked.lock().unwrap(), [hbone_port_of(echo.addr)]);
}

#[tokio::test]
async fn tunnels_from_one_origin_to_one_destination_share_a_connection() {
    let Bed {
        ca,
        db,
        server,
        echo,
        web,
        client,
    } = Bed::start(Mode::Relay, WAIT).await;

    let mut a = App::open(&client, &web, echo.addr, &db.identity).await;
    let mut b = App::open(&client, &web, echo.addr, &db.identity).await;
    a.echo(b"from a").await;
    b.echo(b"from b").await;
    assert_eq!(server.accepts(), 1);
    assert_eq!(web.dial.dials(), 1);
    let seen = server.handler.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].peer, seen[1].peer, "both streams on one connection");
    assert_eq!(a.finish().await.0, TRAILER);
    assert_eq!(b.finish().await.0, TRAILER);

    // With no stream left, the connection stays pooled for the next one.
    let mut c = App::open(&client, &web, echo.addr, &db.identity).await;
    c.echo(b"from c").await;
    assert_eq!(server.accepts(), 1);
    assert_eq!(server.handler.seen()[2].peer, seen[0].peer);

    // Another workload on the node leaves from its own address: its own
    // connection, though the client and destination are the same.
    let cart = Source::new(
        "cart-0",
        ca.svid("shop", "cart"),
        LoopbackDial::to(server.addr),
    );
    let mut d = App::open(&client, &cart, echo.addr, &db.identity).await;
    d.echo(b"from d").await;
    assert_eq!(server.accepts(), 2);
    assert_eq!(cart.dial.dials(), 1);
    assert_ne!(server.handler.seen()[3].peer, seen[0].peer);
    assert_eq!(
        server.handler.seen()[3].source.to_string(),
        "spiffe://cluster.local/ns/shop/sa/cart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_tunnels_make_one_connection() {
    const TUNNELS: usize = 8;
    let ca = Ca::new("mesh root");
    let db = ca.svid("shop", "db");
    let server = HboneServer::start(&ca.bundle(), &db, Mode::Relay, WAIT).await;
    let echo = Echo::start().await;
    // The first dial is held until every open has started, so a second
    // connection attempt, if any, is made while the first is pending.
    let gate = Arc::new(Semaphore::new(0));
    let web = Arc::new(Source::new(
        "web-0",
        ca.svid("shop", "web"),
        LoopbackDial::gated(server.addr, gate.clone()),
    ));
    let client = Arc::new(client(ca.bundle()));
    let start = Arc::new(Barrier::new(TUNNELS + 1));
    let opened = Arc::new(Counter::default());
    let mut opens = JoinSet::new();
    for _ in 0..TUNNELS {
        let (client, web, start, opened) =
            (client.clone(), web.clone(), start.clone(), opened.clone());
        let (dst, expected) = (echo.addr, db.identity.clone());
        opens.spawn(async move {
            start.wait().await;
            let app = App::open(&client, &web, dst, &expected).await;
            opened.add();
            app
        });
    }
    within("every open to start", start.wait()).await;
    // Time for the others to reach the dial if single flight did not hold
    // them back.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(web.dial.dials(), 1, "one dial while the first connects");
    assert_eq!(opened.get(), 0, "no tunnel before its connection");
    gate.add_permits(TUNNELS);

    let mut apps = Vec::new();
    while let Some(app) = within("the tunnels to open", opens.join_next()).await {
        apps.push(app.unwrap());
    }
    assert_eq!(apps.len(), TUNNELS);
    for (i, app) in apps.iter_mut().enumerate() {
        app.echo(format!("tunnel {i}").as_bytes()).await;
    }
    assert_eq!(server.accepts(), 1);
    assert_eq!(web.dial.dials(), 1);
    let seen = server.handler.seen();
    assert_eq!(seen.len(), TUNNELS);
    assert!(seen.iter().all(|s| s.peer == seen[0].peer));
}

#[tokio::test]
async fn a_server_proving_another_identity_than_expected_is_refused() {
    let ca = Ca::new("mesh root");
    let impostor = ca.svid("shop", "impostor");
    let server = HboneServer::start(&ca.bundle(), &impostor, Mode::Relay, WAIT).await;
    let echo = Echo::start().await;
    let web = Source::new(
        "web-0",
        ca.svid("shop", "web"),
        LoopbackDial::to(server.addr),
    );
    let client = client(ca.bundle());
    let db = ca.svid("shop", "db").identity;

    let src = "127.0.0.1:40000".parse().unwrap();
    let err = within(
        "the open to fail",
        client.open(&web.origin(), src, echo.addr, db, &Bytes::new()),
    )
    .await
    .err()
    .expect("the tunnel opened");
    let text = err.to_string();
    assert!(matches!(err, HboneError::Tls { .. }), "{text}");
    assert!(
        text.contains("IdentityMismatch") && text.contains("ns/shop/sa/impostor"),
        "{text}"
    );
    // The server's side of the connection ends without a stream.
    server.wait_ended(1).await;
    assert_eq!(server.accepts(), 1);
    assert!(server.handler.seen().is_empty());
    assert_eq!(echo.connections(), 0);
}

#[tokio::test]
async fn a_client_certificate_from_another_root_is_refused() {
    let ca = Ca::new("mesh root");
    let other = Ca::new("another root");
    let db = ca.svid("shop", "db");
    let server = HboneServer::start(&ca.bundle(), &db, Mode::Relay, WAIT).await;
    let echo = Echo::start().await;
    // Trusts the mesh root, so it accepts the server; its own certificate
    // chains to the other root.
    let stranger = Source::new(
        "web-0",
        other.svid("shop", "web"),
        LoopbackDial::to(server.addr),
    );
    let client = client(ca.bundle());

    let src = "127.0.0.1:40000".parse().unwrap();
    let err = within(
        "the open to fail",
        client.open(
            &stranger.origin(),
            src,
            echo.addr,
            db.identity.clone(),
            &Bytes::new(),
        ),
    )
    .await
    .err()
    .expect("the tunnel opened");
    // TLS 1.3 clients finish before the server has checked them: the
    // server's alert arrives on the first read, which is HTTP/2's.
    assert!(
        matches!(err, HboneError::Tls { .. } | HboneError::H2(_)),
        "{err}"
    );
    assert!(err.to_string().contains("UnknownCA"), "{err}");
    server.wait_ended(1).await;
    assert!(server.handler.seen().is_empty());
    assert!(server.handler.refusals().is_empty());
    assert_eq!(echo.connections(), 0);
}

#[tokio::test]
async fn a_handler_refusal_reaches_the_client_as_its_status() {
    let ca = Ca::new("mesh root");
    let db = ca.svid("shop", "db");
    let server =
        HboneServer::start(&ca.bundle(), &db, Mode::Refuse(StatusCode::FORBIDDEN), WAIT).await;
    let echo = Echo::start().await;
    let web = Source::new(
        "web-0",
        ca.svid("shop", "web"),
        LoopbackDial::to(server.addr),
    );
    let client = client(ca.bundle());

    let src = "127.0.0.1:40000".parse().unwrap();
    for attempt in 1..=2 {
        let err = within(
            "the refusal",
            client.open(
                &web.origin(),
                src,
                echo.addr,
                db.identity.clone(),
                &Bytes::new(),
            ),
        )
        .await
        .err()
        .expect("the tunnel opened");
        assert!(
            matches!(err, HboneError::Refused(StatusCode::FORBIDDEN)),
            "{err}"
        );
        assert_eq!(server.handler.seen().len(), attempt);
    }
    // A refusal answers a stream; the connection stays and is reused.
    assert_eq!(server.accepts(), 1);
    assert_eq!(echo.connections(), 0);
}

/// Sends `request` on a bare connection and waits for the response head.
async fn raw_request(
    sender: &SendRequest<Bytes>,
    request: Request<()>,
) -> (StatusCode, SendStream<Bytes>, RecvStream) {
    let mut sender = within("the connection to be ready", sender.clone().ready())
        .await
        .unwrap();
    let (response, send) = sender.send_request(request, false).unwrap();
    let response = within("the response", response).await.unwrap();
    (response.status(), send, response.into_body())
}

fn connect_to(dst: SocketAddr) -> Request<()> {
    Request::builder()
        .method(Method::CONNECT)
        .uri(dst.to_string())
        .body(())
        .unwrap()
}

/// Sends `data` on a bare stream and reads as many bytes back.
async fn raw_echo(send: &mut SendStream<Bytes>, recv: &mut RecvStream, data: &[u8]) {
    send.send_data(Bytes::copy_from_slice(data), false).unwrap();
    let got = read_stream(recv, data.len()).await;
    assert_eq!(got, data);
}

/// Reads `len` bytes from a bare stream, or to its end if `len` is `usize::MAX`.
async fn read_stream(recv: &mut RecvStream, len: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < len {
        let Some(chunk) = within("stream data", recv.data()).await else {
            break;
        };
        let chunk = chunk.unwrap();
        let _ = recv.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    got
}

#[tokio::test]
async fn requests_other_than_connect_to_an_address_never_reach_the_handler() {
    let ca = Ca::new("mesh root");
    let db = ca.svid("shop", "db");
    let server = HboneServer::start(&ca.bundle(), &db, Mode::Relay, WAIT).await;
    let echo = Echo::start().await;
    let web = ca.svid("shop", "web");
    let (sender, _conn) = raw_h2(&ca.bundle(), &web, &db.identity, server.addr).await;

    let get = Request::builder()
        .method(Method::GET)
        .uri(format!("http://{}/", echo.addr))
        .body(())
        .unwrap();
    let (status, _, _) = raw_request(&sender, get).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let by_name = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("localhost:{}", echo.addr.port()))
        .body(())
        .unwrap();
    let (status, _, _) = raw_request(&sender, by_name).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(server.handler.seen().is_empty());

    // The same connection still serves a CONNECT: the handler was not
    // simply unreachable.
    let (status, mut send, mut recv) = raw_request(&sender, connect_to(echo.addr)).await;
    assert_eq!(status, StatusCode::OK);
    raw_echo(&mut send, &mut recv, b"still served").await;
    let seen = server.handler.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].dst, echo.addr);
    assert_eq!(seen[0].source, web.identity);
    assert_eq!(server.accepts(), 1);
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_handshake_deadline() {
    const DEADLINE: Duration = Duration::from_millis(300);
    let Bed {
        ca: _ca,
        db,
        server,
        echo,
        web,
        client,
    } = Bed::start(Mode::Relay, DEADLINE).await;
    // A tunnel made within the deadline is not bound by it afterwards.
    let mut app = App::open(&client, &web, echo.addr, &db.identity).await;

    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let connected = Instant::now();
    let mut buf = [0u8; 1];
    let read = within("the server to close", silent.read(&mut buf)).await;
    let waited = connected.elapsed();
    assert_eq!(read.unwrap(), 0, "closed without a byte");
    // Some slack below: the server's clock starts before the client's.
    assert!(
        waited >= DEADLINE - Duration::from_millis(50),
        "closed after {waited:?}, before the deadline"
    );
    assert!(waited < 3 * DEADLINE, "closed only after {waited:?}");
    server.handler.wait_refused(Refused::HandshakeTimeout).await;
    assert_eq!(server.handler.refusals(), [Refused::HandshakeTimeout]);

    // The tunnel has outlived the deadline and still carries bytes.
    app.echo(b"after the deadline").await;
    assert_eq!(app.finish().await.0, TRAILER);
    assert_eq!(server.handler.seen().len(), 1);
    assert_eq!(server.handler.refusals().len(), 1);
}

#[tokio::test]
async fn draining_sends_goaway_and_open_tunnels_run_to_their_end() {
    let Bed {
        ca,
        db,
        server,
        echo,
        web,
        client,
    } = Bed::start(Mode::Relay, WAIT).await;

    // Two connections, each with a tunnel open before the drain: one from
    // the mesh client, one on a bare connection whose state is visible.
    let mut app = App::open(&client, &web, echo.addr, &db.identity).await;
    app.echo(b"before").await;
    let (sender, conn) = raw_h2(&ca.bundle(), &web.svid, &db.identity, server.addr).await;
    let (status, mut send, mut recv) = raw_request(&sender, connect_to(echo.addr)).await;
    assert_eq!(status, StatusCode::OK);
    raw_echo(&mut send, &mut recv, b"before").await;
    assert_eq!(server.accepts(), 2);

    server.draining.send_replace(true);
    // The bare client learns of the GOAWAY and opens no stream after it.
    let goaway = within("GOAWAY", async {
        loop {
            match sender.clone().ready().await {
                Err(e) => break e,
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    })
    .await;
    assert!(goaway.is_go_away() && goaway.is_remote(), "{goaway}");
    assert_eq!(goaway.reason(), Some(Reason::NO_ERROR));
    assert!(
        sender
            .clone()
            .send_request(connect_to(echo.addr), false)
            .is_err(),
        "a stream after GOAWAY"
    );

    // Both open tunnels keep working, and end as usual.
    app.echo(b"after").await;
    raw_echo(&mut send, &mut recv, b"after").await;
    assert_eq!(app.finish().await.0, TRAILER);
    send.send_data(Bytes::new(), true).unwrap();
    assert_eq!(read_stream(&mut recv, usize::MAX).await, TRAILER);
    assert!(recv.is_end_stream());

    // With their last stream done, the server closes both connections.
    server.wait_ended(2).await;
    within("the bare connection to end", conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(server.handler.seen().len(), 2);
    assert_eq!(echo.connections(), 2);
}

#[tokio::test]
async fn a_peer_that_goes_away_is_replaced_by_a_new_connection_while_old_tunnels_finish() {
    let Bed {
        ca,
        db,
        server,
        echo,
        web,
        client,
    } = Bed::start(Mode::Relay, WAIT).await;
    let mut old = App::open(&client, &web, echo.addr, &db.identity).await;
    old.echo(b"before").await;
    // A bare connection shows when the GOAWAY is out: a request on it
    // first, so the server has taken it up.
    let (sender, _conn) = raw_h2(&ca.bundle(), &web.svid, &db.identity, server.addr).await;
    let (status, mut send, mut recv) = raw_request(&sender, connect_to(echo.addr)).await;
    assert_eq!(status, StatusCode::OK);
    // The peer sends GOAWAY on its connections (as a draining agent does)
    // and then serves new connections again.
    server.draining.send_replace(true);
    within("the GOAWAY", async {
        while sender.clone().ready().await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    server.draining.send_replace(false);
    // The pooled connection still carries `old`, so it has not ended; a new
    // tunnel must not be put on it but on a new connection.
    let mut new = App::open(&client, &web, echo.addr, &db.identity).await;
    new.echo(b"after").await;
    assert_eq!(
        server.accepts(),
        3,
        "the pooled one, the bare one, a new one"
    );
    old.echo(b"still").await;
    assert_eq!(old.finish().await.0, TRAILER);
    assert_eq!(new.finish().await.0, TRAILER);
    send.send_data(Bytes::new(), true).unwrap();
    assert_eq!(read_stream(&mut recv, usize::MAX).await, TRAILER);
}
