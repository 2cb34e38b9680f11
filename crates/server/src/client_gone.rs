//! Noticing clients that went away: actix-web keeps running a handler after its client
//! disconnects (actix/actix-web#3462), so a request waiting for a model checks the socket.

use crate::RequestError;
use actix_web::dev::Extensions;
use actix_web::HttpRequest;
use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

/// A duplicate of a client connection's socket, used only to notice that the client went away.
#[derive(Clone)]
pub struct ClientConnection(Arc<std::net::TcpStream>);

impl ClientConnection {
    /// Whether the peer has closed or reset the connection; never blocks or consumes data.
    /// Asks the kernel whether the peer shut its side (`POLLRDHUP`), which holds even when
    /// unread bytes wait in the socket (a TLS client's close_notify, a pipelined request).
    pub fn is_gone(&self) -> bool {
        use rustix::event::{poll, PollFd, PollFlags};
        let mut fds = [PollFd::new(&*self.0, PollFlags::RDHUP)];
        match poll(&mut fds, Some(&rustix::event::Timespec::default())) {
            Ok(0) => false,
            Ok(_) => fds[0]
                .revents()
                .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
            Err(e) => e != rustix::io::Errno::INTR,
        }
    }
}

/// `HttpServer::on_connect` hook that records each connection for [`until_client_gone`].
pub fn on_connect(conn: &dyn Any, ext: &mut Extensions) {
    use std::os::fd::AsFd;
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
    let stream = match conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        Some(plain) => plain,
        None => match conn.downcast_ref::<Tls>() {
            Some(tls) => tls.get_ref().0,
            None => return,
        },
    };
    if let Ok(fd) = stream.as_fd().try_clone_to_owned() {
        ext.insert(ClientConnection(Arc::new(std::net::TcpStream::from(fd))));
    }
}

/// Runs `work`, giving up with [`RequestError::ClientGone`] if the client disconnects first.
/// Giving up drops `work`, which drops the request's place in a batch queue.
pub async fn until_client_gone<T, E: From<RequestError>>(
    req: &HttpRequest,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let Some(conn) = req.conn_data::<ClientConnection>().cloned() else {
        return work.await;
    };
    let gone = async move {
        // The first check comes one period in: most requests are answered before it.
        let period = Duration::from_millis(20);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tick.tick().await;
            if conn.is_gone() {
                return;
            }
        }
    };
    tokio::select! {
        result = work => result,
        () = gone => Err(RequestError::ClientGone.into()),
    }
}
