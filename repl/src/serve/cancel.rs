//! Stopping a connection's running query from outside it: a cancel request (psql's Ctrl-C,
//! a driver's `cancel_query`, sent on a new connection with the backend key), or the client
//! going away while its query runs (its connection is not read until the query ends, so a
//! duplicate of its socket is watched for the peer's close). Both set the session's
//! [`Interrupt`], which the running query checks between batches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use changeflow_engine::interrupt::Interrupt;
use pgwire::api::ConnectionManager;
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::startup::SecretKey;
use tokio::net::TcpStream;

/// A connection's backend key: process id and secret.
pub type BackendKey = (i32, Vec<u8>);

pub fn backend_key(pid: i32, secret: &SecretKey) -> BackendKey {
    (pid, secret.to_bytes().to_vec())
}

/// The interrupts of the open connections, by backend key.
#[derive(Default)]
pub struct CancelRegistry {
    interrupts: Mutex<HashMap<BackendKey, Weak<Interrupt>>>,
}

impl CancelRegistry {
    pub fn register(&self, key: BackendKey, interrupt: &Arc<Interrupt>) {
        if let Ok(mut interrupts) = self.interrupts.lock() {
            interrupts.insert(key, Arc::downgrade(interrupt));
        }
    }

    pub fn unregister(&self, key: &BackendKey) {
        if let Ok(mut interrupts) = self.interrupts.lock() {
            interrupts.remove(key);
        }
    }

    fn cancel(&self, key: &BackendKey) -> bool {
        let interrupt = self.interrupts.lock().ok().and_then(|i| i.get(key).and_then(Weak::upgrade));
        interrupt.map(|i| i.cancel()).is_some()
    }
}

/// Answers cancel requests: the connection's interrupt stops a query that is computing,
/// and pgwire's own handle stops one that is waiting.
pub struct CancelRequests {
    registry: Arc<CancelRegistry>,
    waiting: DefaultCancelHandler,
}

impl CancelRequests {
    pub fn new(registry: Arc<CancelRegistry>, connections: Arc<ConnectionManager>) -> Self {
        Self { registry, waiting: DefaultCancelHandler::new(connections) }
    }
}

#[async_trait]
impl CancelHandler for CancelRequests {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let key = backend_key(request.pid, &request.secret_key);
        // An unknown key is ignored, as PostgreSQL does: the requester learns nothing.
        if self.registry.cancel(&key) {
            tracing::debug!(pid = request.pid, "cancel request");
        }
        self.waiting.on_cancel_request(request).await;
    }
}

/// Watches clients' sockets for the peer's close from one thread of its own: a query may
/// keep every runtime worker busy (DataFusion runs a query's partitions in parallel), so a
/// watch on the runtime could wait until the query ends. Every [`WATCH_INTERVAL`] each
/// watched socket is peeked without blocking: the end of the stream means the client is
/// gone. Data the client sent meanwhile (a pipelined message) is left for the connection.
pub struct DisconnectWatch {
    sockets: Arc<Mutex<Vec<Watched>>>,
}

struct Watched {
    socket: std::net::TcpStream,
    interrupt: Weak<Interrupt>,
}

const WATCH_INTERVAL: Duration = Duration::from_millis(100);

impl DisconnectWatch {
    /// Starts the watching thread (it ends with the process).
    pub fn start() -> Self {
        let sockets: Arc<Mutex<Vec<Watched>>> = Arc::default();
        let watched = Arc::clone(&sockets);
        let started = std::thread::Builder::new().name("changeflow-disconnects".into()).spawn(move || {
            loop {
                std::thread::sleep(WATCH_INTERVAL);
                let Ok(mut sockets) = watched.lock() else { return };
                sockets.retain(|watched| {
                    let Some(interrupt) = watched.interrupt.upgrade() else { return false };
                    let mut probe = [0u8; 1];
                    match watched.socket.peek(&mut probe) {
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => true,
                        Ok(n) if n > 0 => true,
                        _ => {
                            tracing::debug!("a client went away; its running statement is stopped");
                            interrupt.client_gone();
                            false
                        }
                    }
                });
            }
        });
        if let Err(error) = started {
            tracing::warn!(%error, "cannot start watching for clients that go away; their queries run to the end");
        }
        Self { sockets }
    }

    /// Watches a client's socket (through a duplicate of it) until its connection's
    /// interrupt is dropped.
    pub fn watch(&self, socket: &TcpStream, interrupt: &Arc<Interrupt>) {
        use std::os::fd::AsFd;
        let duplicate = socket.as_fd().try_clone_to_owned().map(std::net::TcpStream::from);
        let duplicate = duplicate.and_then(|s| s.set_nonblocking(true).map(|()| s));
        match (duplicate, self.sockets.lock()) {
            (Ok(socket), Ok(mut sockets)) => sockets.push(Watched { socket, interrupt: Arc::downgrade(interrupt) }),
            (Err(error), _) => {
                tracing::warn!(%error, "cannot watch a client's socket; a query it leaves runs to its end")
            }
            (_, Err(_)) => {}
        }
    }
}
