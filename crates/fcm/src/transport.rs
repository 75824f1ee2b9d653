//! One HTTP/2 connection to FCM, on hyper's HTTP/2 client directly.
//!
//! reqwest cost a quarter of the CPU of each push on top of hyper (its request builder, URL
//! handling, pool checkout, redirect and timeout layers; measured in docs/benchmarks.md), and
//! the FCM client already keeps its own pool of connections, so each of them is a hyper
//! `SendRequest` over a socket dialled here: TCP (hyper-util's connector), through an
//! `HTTPS_PROXY` / `HTTP_PROXY` CONNECT tunnel when the environment names one (hyper-util's
//! matcher and tunnel, the rules curl and reqwest follow, `NO_PROXY` included), then TLS
//! (rustls, the system's roots and `fcm.ca_bundle`, verification always on, ALPN `h2`) for
//! `https` endpoints, or HTTP/2 with prior knowledge for plain-text ones (the stand-in).
//! A connection that fails is dialled again by the next request.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::{
    client::{
        legacy::connect::{HttpConnector, proxy::Tunnel},
        proxy::matcher::Matcher,
    },
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tower_service::Service;

/// FCM's answer: its status, `Retry-After` and body.
pub(crate) struct Answer {
    pub(crate) status: http::StatusCode,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connecting to {endpoint}{}: {reason}", via.as_ref().map(|p| format!(" through the proxy {p}")).unwrap_or_default())]
    Connect {
        endpoint: String,
        via: Option<String>,
        reason: String,
    },
    #[error("TLS with {endpoint}: {source}")]
    Tls {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP/2 with {endpoint}: {source}")]
    Handshake {
        endpoint: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{0}")]
    Request(#[source] hyper::Error),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

/// What every connection to one endpoint is dialled with.
pub(crate) struct Dialer {
    endpoint: Uri,
    tcp: HttpConnector,
    proxy: Option<(Uri, Option<HeaderValue>)>,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    request_timeout: Duration,
}

/// A socket a connection runs on, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

impl Dialer {
    /// A dialer for `endpoint` (`https://host[:port]` or `http://host[:port]`), trusting the
    /// system's roots and `extra_roots` (PEM), through the proxy `proxies` choose for it.
    pub(crate) fn new(
        endpoint: &str,
        extra_roots: Option<&[u8]>,
        request_timeout: Duration,
        proxies: &Matcher,
    ) -> Result<Self, String> {
        let endpoint: Uri = endpoint
            .parse()
            .map_err(|e| format!("fcm.endpoint {endpoint}: {e}"))?;
        let host = endpoint
            .host()
            .ok_or_else(|| format!("fcm.endpoint {endpoint} names no host"))?
            .to_owned();
        let tls = match endpoint.scheme_str() {
            Some("https") => Some((
                tokio_rustls::TlsConnector::from(Arc::new(tls_config(extra_roots)?)),
                rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                    .map_err(|e| format!("fcm.endpoint {endpoint}: {e}"))?,
            )),
            Some("http") => None,
            _ => return Err(format!("fcm.endpoint {endpoint}: not http:// or https://")),
        };
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(Duration::from_secs(5)));
        let proxy = proxies
            .intercept(&endpoint)
            .map(|p| (p.uri().clone(), p.basic_auth().cloned()));
        Ok(Self {
            endpoint,
            tcp,
            proxy,
            tls,
            request_timeout,
        })
    }

    fn connect_error(&self, reason: impl std::fmt::Display) -> TransportError {
        TransportError::Connect {
            endpoint: self.endpoint.to_string(),
            via: self.proxy.as_ref().map(|(p, _)| redacted(p)),
            reason: reason.to_string(),
        }
    }

    async fn socket(&self) -> Result<Box<dyn Io>, TransportError> {
        let tcp = match &self.proxy {
            None => self
                .tcp
                .clone()
                .call(self.endpoint.clone())
                .await
                .map_err(|e| {
                    self.connect_error(
                        std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string()),
                    )
                })?,
            Some((proxy, auth)) => {
                let mut tunnel = Tunnel::new(proxy.clone(), self.tcp.clone());
                if let Some(auth) = auth {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                tunnel
                    .call(self.endpoint.clone())
                    .await
                    .map_err(|e| self.connect_error(e))?
            }
        };
        let tcp = tcp.into_inner();
        Ok(match &self.tls {
            None => Box::new(tcp),
            Some((tls, server_name)) => {
                let stream = tls
                    .connect(server_name.clone(), tcp)
                    .await
                    .map_err(|source| TransportError::Tls {
                        endpoint: self.endpoint.to_string(),
                        source,
                    })?;
                if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err(self.connect_error("the server does not speak HTTP/2 (ALPN)"));
                }
                Box::new(stream)
            }
        })
    }

    /// Opens a connection: its requests are sent through the returned handle.
    async fn dial(&self) -> Result<http2::SendRequest<Full<Bytes>>, TransportError> {
        let socket = self.socket().await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(socket))
            .await
            .map_err(|source| TransportError::Handshake {
                endpoint: self.endpoint.to_string(),
                source,
            })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "an FCM connection ended");
            }
        });
        Ok(sender)
    }
}

/// A proxy's address without its credentials, for messages.
fn redacted(proxy: &Uri) -> String {
    let host = proxy.host().unwrap_or_default();
    match proxy.port_u16() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

fn tls_config(extra_roots: Option<&[u8]>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A system certificate rustls cannot read is skipped, as reqwest does.
        let _ = roots.add(cert);
    }
    if let Some(pem) = extra_roots {
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("fcm.ca_bundle: {e}"))?;
            roots.add(cert).map_err(|e| format!("fcm.ca_bundle: {e}"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// One HTTP/2 connection, dialled when first needed and again after it fails.
pub(crate) struct Connection {
    dialer: Arc<Dialer>,
    sender: std::sync::Mutex<Option<http2::SendRequest<Full<Bytes>>>>,
    dialing: tokio::sync::Mutex<()>,
}

impl Connection {
    pub(crate) fn new(dialer: Arc<Dialer>) -> Self {
        Self {
            dialer,
            sender: std::sync::Mutex::new(None),
            dialing: tokio::sync::Mutex::new(()),
        }
    }

    fn open(&self) -> Option<http2::SendRequest<Full<Bytes>>> {
        let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        sender.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    async fn sender(&self) -> Result<http2::SendRequest<Full<Bytes>>, TransportError> {
        if let Some(sender) = self.open() {
            return Ok(sender);
        }
        // One request dials; the others waiting here take its connection.
        let _dialing = self.dialing.lock().await;
        if let Some(sender) = self.open() {
            return Ok(sender);
        }
        let sender = self.dialer.dial().await?;
        *self.sender.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender.clone());
        Ok(sender)
    }

    /// Sends `request` and reads the whole answer, within the request timeout (the dialling
    /// included).
    pub(crate) async fn send(
        &self,
        request: http::Request<Full<Bytes>>,
    ) -> Result<Answer, TransportError> {
        let timeout = self.dialer.request_timeout;
        let exchange = async {
            let mut sender = self.sender().await?;
            let response = sender
                .send_request(request)
                .await
                .map_err(TransportError::Request)?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(TransportError::Request)?
                .to_bytes();
            let retry_after = parts
                .headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            Ok(Answer {
                status: parts.status,
                retry_after,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| TransportError::TimedOut(timeout))?
    }
}

#[cfg(test)]
mod tests {
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
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
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
        let request =
            http::Request::post(format!("{endpoint}/v1/projects/xibaar-local/messages:send"))
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
        let (front, ca) =
            tls_front(standin.url().trim_start_matches("http://").parse().unwrap()).await;
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
        let (front, ca) =
            tls_front(standin.url().trim_start_matches("http://").parse().unwrap()).await;
        let (proxy, asked) = connect_proxy().await;
        let endpoint = format!("https://localhost:{}", front.port());
        let timeout = Duration::from_secs(10);

        let proxies = Matcher::builder()
            .https(format!("http://xibaar:secret@{proxy}"))
            .build();
        let dialer =
            Arc::new(Dialer::new(&endpoint, Some(ca.as_bytes()), timeout, &proxies).unwrap());
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
}
