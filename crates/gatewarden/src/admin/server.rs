//! The HTTP server: axum's router on hyper's HTTP/1 connections, with what a
//! box reachable from the LAN needs and `axum::serve` lacks:
//! - a header-read timeout: a socket that does not send a whole request head
//!   in `http.header_read_timeout` (idle keep-alive included) is closed;
//! - a cap on open connections (`http.max_connections`): one more is closed at
//!   once, so idle sockets can never take the file descriptors that webhooks,
//!   MQTT and the store need;
//! - an accept loop that survives `EMFILE` without spinning;
//! - a graceful stop on the daemon's cancellation token.

use crate::telemetry::Metrics;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

pub async fn serve(listener: TcpListener, app: Router, limits: Limits, metrics: Arc<Metrics>, cancel: CancellationToken) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut conns = tokio::task::JoinSet::new();
    let mut full_logged = false;
    loop {
        let (sock, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE/ENFILE: the connection stays in the backlog; retrying at once would spin.
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.reject("http_connection_cap");
            if !full_logged {
                tracing::warn!(max = limits.max_connections, %peer, "http.max_connections reached: new connections are closed until some end");
                full_logged = true;
            }
            drop(sock);
            continue;
        };
        full_logged = false;
        let _ = sock.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone().layer(axum::Extension(ConnectInfo(peer))));
        let (cancel, timeout) = (cancel.clone(), limits.header_read_timeout);
        conns.spawn(async move {
            let _slot = slot;
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new()).header_read_timeout(timeout).keep_alive(true);
            let conn = b.serve_connection(TokioIo::new(sock), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async { while conns.join_next().await.is_some() {} }).await;
}

/// The client's address for rate limits and lockouts: the peer, or, when the
/// peer is a trusted proxy (`http.trusted_proxies`, e.g. the TLS proxy the
/// README recommends), the nearest address in `X-Forwarded-For` that is not
/// itself a trusted proxy. Untrusted peers cannot choose their address.
pub fn client_ip(peer: SocketAddr, forwarded_for: Option<&str>, trusted: &[std::net::IpAddr]) -> std::net::IpAddr {
    if !trusted.contains(&peer.ip()) {
        return peer.ip();
    }
    let hops = forwarded_for.unwrap_or("").split(',').rev().map(str::trim).filter(|s| !s.is_empty());
    for h in hops {
        match h.parse::<std::net::IpAddr>() {
            Ok(ip) if trusted.contains(&ip) => continue,
            Ok(ip) => return ip,
            // A malformed hop: stop trusting the header here.
            Err(_) => return peer.ip(),
        }
    }
    peer.ip()
}

/// Extracts the client address as `client_ip` decides it.
pub struct ClientIp(pub std::net::IpAddr);

#[axum::async_trait]
impl axum::extract::FromRequestParts<Arc<super::Shared>> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, sh: &Arc<super::Shared>) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
        let xff = parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
        Ok(ClientIp(client_ip(peer, xff, &sh.cfg.http.trusted_proxies)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_trusted_proxy_can_name_the_client() {
        let proxy: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let peer = |ip: &str| SocketAddr::new(ip.parse().unwrap(), 4000);
        let t = [proxy];
        assert_eq!(client_ip(peer("192.168.1.9"), Some("10.0.0.1"), &t).to_string(), "192.168.1.9", "an untrusted peer's header is ignored");
        assert_eq!(client_ip(peer("127.0.0.1"), Some("10.0.0.1"), &t).to_string(), "10.0.0.1");
        // A client that sends its own X-Forwarded-For cannot hide behind it: the proxy appends the real address.
        assert_eq!(client_ip(peer("127.0.0.1"), Some("1.2.3.4, 10.0.0.7"), &t).to_string(), "10.0.0.7");
        assert_eq!(client_ip(peer("127.0.0.1"), Some("10.0.0.7, 127.0.0.1"), &t).to_string(), "10.0.0.7");
        assert_eq!(client_ip(peer("127.0.0.1"), Some("garbage"), &t).to_string(), "127.0.0.1");
        assert_eq!(client_ip(peer("127.0.0.1"), None, &t).to_string(), "127.0.0.1");
        assert_eq!(client_ip(peer("127.0.0.1"), Some("10.0.0.1"), &[]).to_string(), "127.0.0.1", "no proxy trusted by default");
    }
}
