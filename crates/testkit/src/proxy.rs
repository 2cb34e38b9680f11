//! A loopback TCP proxy that can cut its connections, to stage a database outage.

use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinSet;

/// Most connections relayed at once; more are accepted and closed.
const MAX_CONNECTIONS: usize = 64;
/// Longest wait for the upstream to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Relays connections from `127.0.0.1:<port>` to a loopback upstream, on its own thread and
/// tokio runtime, so it works from sync and async tests alike. Stops when dropped.
pub struct TcpProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    cut: watch::Sender<bool>,
    /// Connections being relayed.
    live: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Starts relaying to `upstream`, which must be a loopback address.
    pub fn start(upstream: SocketAddr) -> TcpProxy {
        assert!(
            upstream.ip().is_loopback(),
            "the test proxy relays to loopback addresses only, not {upstream}"
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the test proxy");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("proxy address");
        let (cut, cut_rx) = watch::channel(false);
        let (stop, stop_rx) = oneshot::channel();
        let live = Arc::new(AtomicUsize::new(0));
        let counted = live.clone();
        let thread = std::thread::Builder::new()
            .name("test-proxy".into())
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime")
                    .block_on(serve(listener, upstream, cut_rx, counted, stop_rx));
            })
            .expect("proxy thread");
        TcpProxy {
            addr,
            upstream,
            cut,
            live,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Starts relaying to the `host:port` of a URL such as `postgres://user@127.0.0.1:5432/db`.
    pub fn for_url(url: &str) -> TcpProxy {
        let authority = &url[authority(url)];
        let upstream = authority
            .to_socket_addrs()
            .unwrap_or_else(|e| panic!("resolve {authority}: {e}"))
            .find(|a| a.ip().is_loopback())
            .unwrap_or_else(|| panic!("{authority} is not a loopback address"));
        TcpProxy::start(upstream)
    }

    /// `url` with its `host:port` replaced by the proxy's address.
    pub fn url(&self, url: &str) -> String {
        let at = authority(url);
        format!("{}{}{}", &url[..at.start], self.addr, &url[at.end..])
    }

    /// The address to connect to instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address relayed to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Closes every live connection (they are closed when this returns) and, until `restore`,
    /// closes new ones as soon as they are accepted.
    pub fn cut(&self) {
        self.cut.send_replace(true);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.live.load(Ordering::SeqCst) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the test proxy did not close its connections within 10 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Where the `host:port` part of a URL is.
fn authority(url: &str) -> Range<usize> {
    let scheme = url
        .find("://")
        .unwrap_or_else(|| panic!("{url} is not a URL"))
        + 3;
    let end = url[scheme..]
        .find(['/', '?'])
        .map_or(url.len(), |i| scheme + i);
    let start = url[scheme..end]
        .rfind('@')
        .map_or(scheme, |i| scheme + i + 1);
    start..end
}

/// Counts a relayed connection while it lives.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(count: &Arc<AtomicUsize>) -> Live {
        count.fetch_add(1, Ordering::SeqCst);
        Live(count.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(
    listener: std::net::TcpListener,
    upstream: SocketAddr,
    cut: watch::Receiver<bool>,
    live: Arc<AtomicUsize>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = TcpListener::from_std(listener).expect("tokio listener");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut relays = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
            Some(_) = relays.join_next(), if !relays.is_empty() => continue,
        };
        let Ok((client, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // Counted before looking at the flag, so `cut` waits for any connection that missed it.
        let counted = Live::new(&live);
        if *cut.borrow() {
            drop(client);
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(client);
            continue;
        };
        let mut cut = cut.clone();
        relays.spawn(async move {
            // Declared first, dropped last: after both sockets are closed.
            let _counted = counted;
            let _slot = slot;
            let mut client = client;
            let Ok(Ok(mut server)) =
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream)).await
            else {
                return;
            };
            tokio::select! {
                biased;
                _ = cut.wait_for(|cut| *cut) => {}
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
            }
        });
    }
    // Dropping the set aborts every relay, closing its sockets.
    relays.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn echo_server() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(16) {
                let Ok(mut stream) = stream else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn echoes(stream: &mut std::net::TcpStream) -> bool {
        let mut buf = [0u8; 4];
        stream.write_all(b"ping").is_ok() && stream.read_exact(&mut buf).is_ok() && &buf == b"ping"
    }

    fn connect(proxy: &TcpProxy) -> std::net::TcpStream {
        let s = std::net::TcpStream::connect(proxy.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    #[test]
    fn relays_cuts_and_restores() {
        let proxy = TcpProxy::start(echo_server());
        let mut live = connect(&proxy);
        assert!(echoes(&mut live));
        proxy.cut();
        assert!(!echoes(&mut live), "a live connection is closed by cut");
        assert!(!echoes(&mut connect(&proxy)), "new connections are refused");
        proxy.restore();
        assert!(echoes(&mut connect(&proxy)));
    }

    #[test]
    fn rewrites_the_host_and_port_of_a_url() {
        let proxy = TcpProxy::for_url("postgres://postgres@127.0.0.1:5432/x");
        assert_eq!(proxy.upstream(), "127.0.0.1:5432".parse().unwrap());
        assert_eq!(
            proxy.url("postgres://postgres@127.0.0.1:5432/vatic_test?sslmode=disable"),
            format!(
                "postgres://postgres@{}/vatic_test?sslmode=disable",
                proxy.addr()
            )
        );
    }
}
