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

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

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
            .handshake(TokioIo::new(Gathered::new(socket)))
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

/// The socket as h2 should see it: its writes gathered, one system call for the requests of
/// a moment.
///
/// h2 writes after each turn of the connection's task, and a busy sender wakes that task for
/// every request: at 0 ms FCM each push took a system call of its own (about 0.9 per push,
/// a fifth of the dispatcher's CPU; docs/benchmarks.md). Two things gather them:
///
/// - The first write of a flush yields once to the runtime: the tasks already woken (the
///   senders whose answers came) run first and hand the connection their requests, which
///   join the same write. With nothing else to run, the write follows at once.
/// - The socket says it writes no vectors. h2 adds a frame to its 16 KB buffer only while
///   the next could still fit, and a DATA payload above 256 bytes for a socket that writes
///   vectors (1 KB for one that does not) is chained behind the buffer instead of copied
///   into it, ending what one write carries. An FCM request's body is 0.4–0.8 KB: copied,
///   the requests of a turn share one buffer.
///
/// No h2 or hyper setting does either.
struct Gathered {
    socket: Box<dyn Io>,
    /// This flush has yielded once already.
    yielded: bool,
}

impl Gathered {
    fn new(socket: Box<dyn Io>) -> Self {
        Self {
            socket,
            yielded: false,
        }
    }
}

impl tokio::io::AsyncRead for Gathered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Gathered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if !self.yielded {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.yielded = false;
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }

    // `poll_write_vectored` and `is_write_vectored` keep their defaults: one slice a write,
    // and `false`.
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
mod tests;
