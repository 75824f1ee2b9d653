//! The transport against the stand-in behind a TLS front, a CONNECT proxy and a relay
//! whose connections can be cut.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};
use xibaar_fcm_standin::{StandIn, StandInConfig};

use super::*;

/// A TLS front (ALPN `h2`, a certificate for `localhost` of its own) to the plain-text
/// `backend`; returns its address and its certificate in PEM.
async fn tls_front(backend: SocketAddr) -> (SocketAddr, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let (Ok(mut tls), Ok(mut plain)) = (
                    acceptor.accept(tcp).await,
                    TcpStream::connect(backend).await,
                ) else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (addr, certified.cert.pem())
}

/// A CONNECT proxy; each tunnel's request line and `Proxy-Authorization`, as asked.
async fn connect_proxy() -> (SocketAddr, Arc<Mutex<Vec<(String, Option<String>)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let record = asked.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut client = BufReader::new(tcp);
                let mut line = String::new();
                client.read_line(&mut line).await.unwrap();
                let target = line.split_whitespace().nth(1).unwrap().to_owned();
                let mut auth = None;
                loop {
                    let mut header = String::new();
                    client.read_line(&mut header).await.unwrap();
                    if header.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = header.strip_prefix("Proxy-Authorization: ") {
                        auth = Some(v.trim().to_owned());
                    }
                }
                record.lock().unwrap().push((target.clone(), auth));
                let port = target.rsplit(':').next().unwrap();
                let mut upstream = TcpStream::connect(format!("127.0.0.1:{port}"))
                    .await
                    .unwrap();
                let mut client = client.into_inner();
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, asked)
}

fn no_proxy() -> Matcher {
    Matcher::builder().build()
}

/// A send without an access token: the stand-in's 401 shows the request crossed.
async fn unauthenticated_send(connection: &Connection, endpoint: &str) -> Answer {
    let request = http::Request::post(format!("{endpoint}/v1/projects/xibaar-local/messages:send"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(
            b"{\"message\":{\"token\":\"t\"}}",
        )))
        .unwrap();
    connection.send(request).await.unwrap()
}

#[tokio::test]
async fn a_tls_endpoint_is_reached_over_http2_only_when_its_certificate_is_trusted() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let (front, ca) = tls_front(standin.url().trim_start_matches("http://").parse().unwrap()).await;
    let endpoint = format!("https://localhost:{}", front.port());
    let timeout = Duration::from_secs(10);

    let trusted = Dialer::new(&endpoint, Some(ca.as_bytes()), timeout, &no_proxy()).unwrap();
    let connection = Connection::new(Arc::new(trusted));
    let answer = unauthenticated_send(&connection, &endpoint).await;
    assert_eq!(answer.status, http::StatusCode::UNAUTHORIZED);
    assert!(
        String::from_utf8_lossy(&answer.body).contains("UNAUTHENTICATED"),
        "{answer_body:?}",
        answer_body = answer.body
    );

    // The same server with only the system's roots: verification refuses it.
    let untrusted = Dialer::new(&endpoint, None, timeout, &no_proxy()).unwrap();
    let request = http::Request::post(format!("{endpoint}/v1/projects/p/messages:send"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let refused = Connection::new(Arc::new(untrusted)).send(request).await;
    assert!(
        matches!(refused, Err(TransportError::Tls { .. })),
        "{:?}",
        refused.err()
    );
}

#[tokio::test]
async fn each_connection_is_its_own_tunnel_through_the_proxy_unless_no_proxy_names_the_host() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let (front, ca) = tls_front(standin.url().trim_start_matches("http://").parse().unwrap()).await;
    let (proxy, asked) = connect_proxy().await;
    let endpoint = format!("https://localhost:{}", front.port());
    let timeout = Duration::from_secs(10);

    let proxies = Matcher::builder()
        .https(format!("http://xibaar:secret@{proxy}"))
        .build();
    let dialer = Arc::new(Dialer::new(&endpoint, Some(ca.as_bytes()), timeout, &proxies).unwrap());
    let (first, second) = (Connection::new(dialer.clone()), Connection::new(dialer));
    for connection in [&first, &second, &first] {
        let answer = unauthenticated_send(connection, &endpoint).await;
        assert_eq!(answer.status, http::StatusCode::UNAUTHORIZED);
    }
    let tunnels = asked.lock().unwrap().clone();
    let expected = (
        format!("localhost:{}", front.port()),
        // base64("xibaar:secret")
        Some("Basic eGliYWFyOnNlY3JldA==".to_owned()),
    );
    assert_eq!(tunnels, vec![expected.clone(), expected]);

    let bypassed = Matcher::builder()
        .https(format!("http://{proxy}"))
        .no("localhost")
        .build();
    let dialer = Dialer::new(&endpoint, Some(ca.as_bytes()), timeout, &bypassed).unwrap();
    let answer = unauthenticated_send(&Connection::new(Arc::new(dialer)), &endpoint).await;
    assert_eq!(answer.status, http::StatusCode::UNAUTHORIZED);
    assert_eq!(asked.lock().unwrap().len(), 2, "NO_PROXY names the host");
}

#[tokio::test]
async fn a_connection_that_fails_is_dialled_again_by_the_next_request() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let backend: SocketAddr = standin.url().trim_start_matches("http://").parse().unwrap();
    // A plain relay to the stand-in whose connections can be cut, as FCM closes one.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let relays: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
    let accepted = relays.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            accepted.lock().unwrap().push(tokio::spawn(async move {
                let mut plain = TcpStream::connect(backend).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tcp, &mut plain).await;
            }));
        }
    });
    let dialer = Dialer::new(&endpoint, None, Duration::from_secs(10), &no_proxy()).unwrap();
    let connection = Connection::new(Arc::new(dialer));
    for _ in 0..2 {
        let answer = unauthenticated_send(&connection, &endpoint).await;
        assert_eq!(answer.status, http::StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        relays.lock().unwrap().len(),
        1,
        "one connection carries both"
    );

    for relay in relays.lock().unwrap().iter() {
        relay.abort();
    }
    // The cut is seen by the connection's task; a request racing it may fail, the next
    // one dials again.
    let mut answered = None;
    for _ in 0..100 {
        let request =
            http::Request::post(format!("{endpoint}/v1/projects/xibaar-local/messages:send"))
                .body(Full::new(Bytes::new()))
                .unwrap();
        if let Ok(answer) = connection.send(request).await {
            answered = Some(answer.status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(answered, Some(http::StatusCode::UNAUTHORIZED));
    assert_eq!(relays.lock().unwrap().len(), 2, "dialled again");
}

/// A socket that counts the writes reaching it.
struct Counted {
    tcp: TcpStream,
    writes: Arc<std::sync::atomic::AtomicUsize>,
}

impl Counted {
    fn count<T>(&self, written: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if let Poll::Ready(Ok(_)) = &written {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        written
    }
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.tcp).poll_write(cx, buf);
        self.count(written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        self.count(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// The writes `requests` requests sent at once take on one HTTP/2 connection to the stand-in,
/// its socket `gathered` as the transport's are, or not.
async fn writes_for(requests: usize, gathered: bool) -> usize {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let address = standin.url().trim_start_matches("http://").to_owned();
    let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let socket: Box<dyn Io> = Box::new(Counted {
        tcp: TcpStream::connect(address).await.unwrap(),
        writes: writes.clone(),
    });
    let socket = if gathered {
        Box::new(Gathered::new(socket))
    } else {
        socket
    };
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(socket))
        .await
        .unwrap();
    tokio::spawn(connection);
    // An FCM request's body, about 0.5 KB.
    let body = Bytes::from(format!(
        "{{\"message\":{{\"token\":\"{}\",\"notification\":{{\"title\":\"Facture\",\"body\":\"{}\"}}}}}}",
        "t".repeat(160),
        "b".repeat(300)
    ));
    let before = writes.load(std::sync::atomic::Ordering::Relaxed);
    let answers = futures::future::join_all((0..requests).map(|_| {
        let mut sender = sender.clone();
        let request = http::Request::post(format!("{}/v1/projects/p/messages:send", standin.url()))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()))
            .unwrap();
        async move { sender.send_request(request).await }
    }))
    .await;
    for answer in answers {
        assert_eq!(answer.unwrap().status(), http::StatusCode::UNAUTHORIZED);
    }
    writes.load(std::sync::atomic::Ordering::Relaxed) - before
}

#[tokio::test]
async fn requests_sent_at_once_share_their_writes_where_each_took_its_own() {
    let requests = 100;
    // The socket as h2 would use it: each request's body chained behind its headers, a write
    // each.
    let plain = writes_for(requests, false).await;
    assert!(plain >= requests, "{plain} writes for {requests} requests");
    // Gathered: a hundred requests of half a kilobyte fill h2's 16 KB buffer about four times.
    let gathered = writes_for(requests, true).await;
    assert!(
        gathered <= requests / 10,
        "{gathered} writes for {requests} requests"
    );
}
