//! Who gets in, and what the accept loop does when it cannot take more: past
//! `--max-connections`, a client gets PostgreSQL's own refusal (SQLSTATE 53300 after its
//! startup packet) instead of a session; when the process is out of file descriptors
//! (EMFILE, ENFILE) or memory, accepting backs off instead of spinning, and says so once per
//! interval rather than once per attempt.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest a refused client may take to send its startup packet.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest startup packet read from a refused client (PostgreSQL's own limit is 10,000).
const MAX_STARTUP_PACKET: usize = 10_000;
/// The request codes a client sends before its startup packet, answered `N` (not here).
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

/// Tells a client past the connection limit why, as PostgreSQL does: reads its startup
/// packet (declining TLS or GSS encryption first) and answers with a FATAL 53300 error.
pub async fn refuse(mut socket: TcpStream, max_connections: usize) {
    let refusal = async {
        loop {
            let code = read_packet_code(&mut socket).await?;
            if code != SSL_REQUEST && code != GSSENC_REQUEST {
                break;
            }
            socket.write_all(b"N").await?;
        }
        let message = format!("sorry, too many clients already (--max-connections is {max_connections})");
        socket.write_all(&fatal_error("53300", &message)).await?;
        socket.shutdown().await
    };
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, refusal).await;
}

/// Reads one length-prefixed packet of the startup phase and returns its first word (the
/// protocol version or request code).
async fn read_packet_code(socket: &mut TcpStream) -> std::io::Result<u32> {
    let length = socket.read_u32().await? as usize;
    if !(8..=MAX_STARTUP_PACKET).contains(&length) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "bad startup packet length"));
    }
    let mut rest = vec![0; length - 4];
    socket.read_exact(&mut rest).await?;
    Ok(u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]))
}

/// An ErrorResponse message of severity FATAL.
fn fatal_error(code: &str, message: &str) -> Vec<u8> {
    let mut fields = Vec::new();
    for (tag, value) in [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', code), (b'M', message)] {
        fields.push(tag);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut out = vec![b'E'];
    out.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(&fields);
    out
}

/// Whether an accept error means the process is out of a resource (so retrying at once
/// would only fail again), rather than one connection having failed.
pub fn out_of_resources(error: &std::io::Error) -> bool {
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    const ENOBUFS: i32 = 105;
    const ENOMEM: i32 = 12;
    matches!(error.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS | ENOMEM))
}

/// The accept loop's pacing after errors: waits that double up to a second while the
/// process is out of resources, and one log line per interval with how many failed since.
pub struct AcceptBackoff {
    wait: Duration,
    failures_unlogged: u64,
    last_logged: Option<Instant>,
}

/// How often a run of accept failures is logged.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Default for AcceptBackoff {
    fn default() -> Self {
        Self { wait: Duration::from_millis(10), failures_unlogged: 0, last_logged: None }
    }
}

impl AcceptBackoff {
    /// A connection was accepted: the next failure starts with a short wait again.
    pub fn accepted(&mut self) {
        self.wait = Duration::from_millis(10);
    }

    /// An accept failed; returns how long to wait before the next one.
    pub fn failed(&mut self, error: &std::io::Error) -> Duration {
        self.failures_unlogged += 1;
        if self.last_logged.is_none_or(|at| at.elapsed() >= LOG_INTERVAL) {
            tracing::warn!(
                %error,
                failures = self.failures_unlogged,
                "accepting connections failed (logged at most every {} s)",
                LOG_INTERVAL.as_secs()
            );
            self.failures_unlogged = 0;
            self.last_logged = Some(Instant::now());
        }
        if !out_of_resources(error) {
            return Duration::ZERO;
        }
        let wait = self.wait;
        self.wait = (self.wait * 2).min(Duration::from_secs(1));
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_descriptors_backs_off_and_logs_once_per_interval() {
        let mut backoff = AcceptBackoff::default();
        let emfile = std::io::Error::from_raw_os_error(24);
        let waits: Vec<Duration> = (0..10).map(|_| backoff.failed(&emfile)).collect();
        assert_eq!(waits[0], Duration::from_millis(10));
        assert_eq!(waits[9], Duration::from_secs(1));
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(backoff.failures_unlogged, 9, "only the first failure was logged");
        backoff.accepted();
        assert_eq!(backoff.failed(&emfile), Duration::from_millis(10));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(backoff.failed(&reset), Duration::ZERO, "one connection's failure does not slow the rest");
    }

    #[test]
    fn the_refusal_is_a_fatal_error_response() {
        let bytes = fatal_error("53300", "too many");
        assert_eq!(bytes[0], b'E');
        let length = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(length, bytes.len() - 1);
        let text = String::from_utf8_lossy(&bytes[5..]);
        assert!(text.contains("C53300\0") && text.contains("SFATAL\0") && text.contains("Mtoo many\0"), "{text}");
    }
}
