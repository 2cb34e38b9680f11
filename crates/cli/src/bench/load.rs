//! The load itself: keep-alive HTTP/1.1 connections, one per request in flight, driven either
//! closed loop (each connection sends its next request when the answer arrives) or open loop
//! (requests are due at a fixed rate, whatever the answers' pace, and a request that could not be
//! sent when due, because every connection was busy, is timed from when it was due, so a server
//! that falls behind shows its queueing, not a lower rate).

use super::body::Body;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Where the requests go and what they carry.
pub struct Target {
    /// The server's address.
    pub addr: SocketAddr,
    /// The `Host` header: the server's host and port as the user wrote them.
    pub authority: String,
    /// The request.
    pub body: Body,
    /// Longest wait for one answer.
    pub timeout: Duration,
    /// For an https:// server: the TLS connector and the name its certificate is checked for.
    pub tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// The `Authorization` header, when an API key is sent.
    pub authorization: Option<HeaderValue>,
}

/// How requests are paced.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// This many requests in flight, each sent when the one before it on its connection ends.
    Closed { concurrency: usize },
    /// `rate` requests a second, on up to `connections` connections.
    Open { rate: f64, connections: usize },
}

/// When a phase ends.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// After this many requests.
    Requests(u64),
    /// After this long.
    Duration(Duration),
}

/// What one phase measured.
#[derive(Debug)]
pub struct Measured {
    /// Latency of the successful (2xx) requests, in nanoseconds.
    pub latency: Histogram<u64>,
    /// Requests that ended, whatever their outcome.
    pub requests: u64,
    /// Failures by HTTP status (`"503"`) or by what went wrong (`"connect"`, `"tls"`, `"timeout"`,
    /// `"io"`).
    pub errors: BTreeMap<String, u64>,
    /// From the first request to the last answer.
    pub elapsed: Duration,
}

/// Counters a progress line reads while a phase runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Requests that ended.
    pub done: AtomicU64,
    /// Of which failed.
    pub failed: AtomicU64,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 1 hour at 3 significant digits, in nanoseconds.
    Histogram::new_with_bounds(1_000, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// One keep-alive connection, opened when first needed and again after a failure.
struct Connection {
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    async fn send(&mut self, target: &Target) -> Result<u16, &'static str> {
        let sender = match &mut self.sender {
            Some(s) => s,
            None => {
                let stream = TcpStream::connect(target.addr)
                    .await
                    .map_err(|_| "connect")?;
                let _ = stream.set_nodelay(true);
                let sender = match &target.tls {
                    Some((connector, name)) => {
                        let stream = connector
                            .connect(name.clone(), stream)
                            .await
                            .map_err(|_| "tls")?;
                        handshake(stream).await?
                    }
                    None => handshake(stream).await?,
                };
                self.sender.insert(sender)
            }
        };
        sender.ready().await.map_err(|_| "io")?;
        let mut request = hyper::Request::post(target.body.path.as_str())
            .header(HOST, target.authority.as_str())
            .header(CONTENT_TYPE, target.body.content_type);
        if let Some(n) = target.body.header_length {
            request = request.header(vatic_schema::v2::HEADER_LENGTH, n);
        }
        if let Some(auth) = &target.authorization {
            request = request.header(AUTHORIZATION, auth);
        }
        let request = request
            .body(Full::new(target.body.next()))
            .expect("a well-formed request");
        let response = sender.send_request(request).await.map_err(|_| "io")?;
        let status = response.status().as_u16();
        // The whole answer counts: latency ends with its last byte.
        response.into_body().collect().await.map_err(|_| "io")?;
        Ok(status)
    }
}

/// Starts HTTP/1.1 on a connected stream, its I/O driven by a task of its own.
async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, &'static str>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| "connect")?;
    tokio::spawn(connection);
    Ok(sender)
}

/// The shared state of one phase's connections.
struct Phase {
    target: Arc<Target>,
    pace: Pace,
    stop: Stop,
    start: Instant,
    /// Requests handed out so far (closed loop), or tickets taken (open loop).
    issued: AtomicU64,
    progress: Arc<Progress>,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Phase {
    /// The next request to send, and when it is due; `None` once the phase is over.
    fn next(&self) -> Option<Instant> {
        let i = self.issued.fetch_add(1, Ordering::Relaxed);
        match (self.pace, self.stop) {
            (_, Stop::Requests(n)) if i >= n => None,
            (Pace::Open { rate, .. }, stop) => {
                let due = self.start + Duration::from_secs_f64(i as f64 / rate);
                match stop {
                    Stop::Duration(d) if due >= self.start + d => None,
                    _ => Some(due),
                }
            }
            (Pace::Closed { .. }, Stop::Duration(d)) => {
                let now = Instant::now();
                (now < self.start + d).then_some(now)
            }
            (Pace::Closed { .. }, Stop::Requests(_)) => Some(Instant::now()),
        }
    }

    fn failed(&self, what: String) {
        *self.errors.lock().unwrap().entry(what).or_default() += 1;
        self.progress.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// One connection's loop: take the next request, wait until it is due, send it, record it.
async fn drive(phase: Arc<Phase>, mut connection: Connection) -> (Connection, Histogram<u64>) {
    let mut latency = histogram();
    while let Some(due) = phase.next() {
        // A request whose connection was free before it was due is timed from when it is sent
        // (the timer may wake a little late; that is not the server's doing). One that is
        // overdue because every connection was busy is timed from when it was due.
        let sent = if due > Instant::now() {
            tokio::time::sleep_until(due).await;
            Instant::now()
        } else {
            due
        };
        let answer =
            tokio::time::timeout(phase.target.timeout, connection.send(&phase.target)).await;
        let took = sent.elapsed();
        match answer {
            Ok(Ok(status)) if (200..300).contains(&status) => {
                latency.saturating_record(took.as_nanos() as u64);
            }
            Ok(Ok(status)) => phase.failed(status.to_string()),
            Ok(Err(what)) => {
                connection.sender = None;
                phase.failed(what.to_string());
                if what == "connect" {
                    // A refused connection fails at once: do not spin on it.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Err(_) => {
                connection.sender = None;
                phase.failed("timeout".to_string());
            }
        }
        phase.progress.done.fetch_add(1, Ordering::Relaxed);
    }
    (connection, latency)
}

/// The connections of a level, kept from its warm-up to its measurement.
pub struct Pool {
    connections: Vec<Connection>,
    /// Tasks that keep the load's threads polling while a phase runs, one per thread (0: none).
    pollers: usize,
}

/// Keeps its thread from sleeping until `done`: it gives the thread back to the runtime at
/// once each time, which then checks its sockets without waiting, and lets any other thread
/// of the CPU run first.
async fn poll_until(done: Arc<AtomicBool>) {
    while !done.load(Ordering::Relaxed) {
        std::thread::yield_now();
        tokio::task::yield_now().await;
    }
}

impl Pool {
    /// Connections for `pace`, opened as they are first used; `pollers` tasks poll instead of
    /// letting the load's threads sleep (`--busy-poll`: one per thread).
    pub fn new(pace: Pace, pollers: usize) -> Pool {
        let n = match pace {
            Pace::Closed { concurrency } => concurrency,
            Pace::Open { connections, .. } => connections,
        };
        Pool {
            connections: (0..n).map(|_| Connection { sender: None }).collect(),
            pollers,
        }
    }

    /// Runs one phase on these connections.
    pub async fn run(
        &mut self,
        target: &Arc<Target>,
        pace: Pace,
        stop: Stop,
        progress: Arc<Progress>,
    ) -> Measured {
        let phase = Arc::new(Phase {
            target: target.clone(),
            pace,
            stop,
            start: Instant::now(),
            issued: AtomicU64::new(0),
            progress,
            errors: Mutex::new(BTreeMap::new()),
        });
        let done = Arc::new(AtomicBool::new(false));
        let pollers: Vec<_> = (0..self.pollers)
            .map(|_| tokio::spawn(poll_until(done.clone())))
            .collect();
        let tasks: Vec<_> = self
            .connections
            .drain(..)
            .map(|c| tokio::spawn(drive(phase.clone(), c)))
            .collect();
        let mut latency = histogram();
        for task in tasks {
            let (connection, h) = task.await.expect("a load task panicked");
            latency.add(h).expect("histograms of the same bounds");
            self.connections.push(connection);
        }
        done.store(true, Ordering::Relaxed);
        for poller in pollers {
            poller.await.expect("a polling task panicked");
        }
        let elapsed = phase.start.elapsed();
        let errors = std::mem::take(&mut *phase.errors.lock().unwrap());
        Measured {
            requests: phase.progress.done.load(Ordering::Relaxed),
            latency,
            errors,
            elapsed,
        }
    }
}
