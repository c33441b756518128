//! A PostgreSQL replication connection (`replication=database`): TLS as `sslmode` asks,
//! startup and authentication (trust, cleartext, MD5, SCRAM-SHA-256), simple queries for the replication commands
//! (`IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT`), and the CopyBoth
//! stream of `START_REPLICATION`. Messages are written with `postgres-protocol`'s codecs;
//! backend messages are framed here because that crate does not know CopyBothResponse.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::Host;

use super::endpoint::Endpoint;
use super::error::PgError;
use super::tls::SslMode;

/// Asks the server for TLS (SSLRequest); true when it agrees ('S'), false when not ('N').
async fn server_accepts_tls(stream: &mut TcpStream, target: &str) -> Result<bool, PgError> {
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    let io = |e: std::io::Error| PgError::Connect { target: target.to_string(), message: e.to_string() };
    stream.write_all(&request).await.map_err(io)?;
    match stream.read_u8().await.map_err(io)? {
        b'S' => Ok(true),
        b'N' => Ok(false),
        other => Err(PgError::protocol(format!("the server answered the TLS request with {other:#04x}"))),
    }
}

/// Session settings that make text values unambiguous to parse.
pub const SESSION_SETTINGS: [(&str, &str); 5] = [
    ("DateStyle", "ISO, MDY"),
    ("TimeZone", "UTC"),
    ("IntervalStyle", "iso_8601"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
];

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One backend message: its tag and body.
pub struct BackendMessage {
    pub tag: u8,
    pub body: Bytes,
}

pub struct ReplicationConnection {
    stream: Box<dyn Stream>,
    read: BytesMut,
    write: BytesMut,
    /// Where the connection goes, for error messages (never the password).
    target: String,
}

impl ReplicationConnection {
    /// Opens a replication connection to an endpoint (TLS as its `sslmode` says).
    pub async fn connect(endpoint: &Endpoint) -> Result<Self, PgError> {
        let config = endpoint.config()?;
        let host = config.get_hosts().first().cloned().unwrap_or(Host::Tcp("localhost".into()));
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let (stream, target): (Box<dyn Stream>, String) = match &host {
            Host::Tcp(name) => {
                let target = format!("{name}:{port}");
                let mut stream = TcpStream::connect((name.as_str(), port))
                    .await
                    .map_err(|e| PgError::Connect { target: target.clone(), message: e.to_string() })?;
                stream.set_nodelay(true).ok();
                if endpoint.tls.mode != SslMode::Disable && server_accepts_tls(&mut stream, &target).await? {
                    (Box::new(endpoint.tls.wrap(stream, name, &target).await?), target)
                } else if endpoint.tls.required() {
                    return Err(PgError::Connect {
                        target,
                        message: "the server does not accept TLS connections, and sslmode requires TLS".into(),
                    });
                } else {
                    (Box::new(stream), target)
                }
            }
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                let target = path.display().to_string();
                let stream = UnixStream::connect(&path)
                    .await
                    .map_err(|e| PgError::Connect { target: target.clone(), message: e.to_string() })?;
                (Box::new(stream), target)
            }
        };
        let mut connection = Self { stream, read: BytesMut::with_capacity(1 << 16), write: BytesMut::new(), target };
        connection.startup(&config).await?;
        Ok(connection)
    }

    async fn startup(&mut self, config: &tokio_postgres::Config) -> Result<(), PgError> {
        let user = config.get_user().unwrap_or("postgres").to_string();
        let database = config.get_dbname().unwrap_or(&user).to_string();
        let mut parameters: Vec<(&str, &str)> = vec![
            ("user", &user),
            ("database", &database),
            ("replication", "database"),
            ("application_name", "changeflow"),
            ("client_encoding", "UTF8"),
        ];
        parameters.extend(SESSION_SETTINGS);
        frontend::startup_message(parameters, &mut self.write).map_err(PgError::io)?;
        self.flush().await?;
        let password = config.get_password().map(<[u8]>::to_vec);
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            let message = self.read_message().await?;
            match message.tag {
                b'R' => {
                    let mut body = message.body.clone();
                    let code = body.try_get_i32().map_err(|_| PgError::protocol("short authentication request"))?;
                    match code {
                        0 => {}
                        3 => {
                            let password = self.password(&password, &user)?;
                            frontend::password_message(&password, &mut self.write).map_err(PgError::io)?;
                            self.flush().await?;
                        }
                        5 => {
                            let password = self.password(&password, &user)?;
                            let mut salt = [0u8; 4];
                            body.try_copy_to_slice(&mut salt)
                                .map_err(|_| PgError::protocol("an MD5 request without its salt"))?;
                            let hashed = md5_hash(user.as_bytes(), &password, salt);
                            frontend::password_message(hashed.as_bytes(), &mut self.write).map_err(PgError::io)?;
                            self.flush().await?;
                        }
                        10 => {
                            let password = self.password(&password, &user)?;
                            let mechanisms: Vec<&[u8]> = body.split(|b| *b == 0).collect();
                            if !mechanisms.contains(&&b"SCRAM-SHA-256"[..]) {
                                return Err(PgError::Auth(format!(
                                    "{} offers no SASL mechanism changeflow supports (SCRAM-SHA-256)",
                                    self.target
                                )));
                            }
                            let state = sasl::ScramSha256::new(&password, sasl::ChannelBinding::unsupported());
                            frontend::sasl_initial_response("SCRAM-SHA-256", state.message(), &mut self.write)
                                .map_err(PgError::io)?;
                            scram = Some(state);
                            self.flush().await?;
                        }
                        11 => {
                            let state =
                                scram.as_mut().ok_or_else(|| PgError::protocol("SASL continue before start"))?;
                            state.update(&body).map_err(|e| PgError::Auth(e.to_string()))?;
                            frontend::sasl_response(state.message(), &mut self.write).map_err(PgError::io)?;
                            self.flush().await?;
                        }
                        12 => {
                            let state = scram.as_mut().ok_or_else(|| PgError::protocol("SASL final before start"))?;
                            state.finish(&body).map_err(|e| PgError::Auth(e.to_string()))?;
                        }
                        other => {
                            return Err(PgError::Auth(format!(
                                "{} asks for an authentication method changeflow does not support (code {other})",
                                self.target
                            )));
                        }
                    }
                }
                b'E' => return Err(server_error(&message.body)),
                b'Z' => return Ok(()),
                // ParameterStatus, BackendKeyData, NoticeResponse.
                _ => {}
            }
        }
    }

    fn password(&self, password: &Option<Vec<u8>>, user: &str) -> Result<Vec<u8>, PgError> {
        password.clone().ok_or_else(|| {
            PgError::Auth(format!("{} asks user \"{user}\" for a password, and the url gives none", self.target))
        })
    }

    /// Runs one replication command; returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PgError> {
        frontend::query(sql, &mut self.write).map_err(PgError::io)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let message = self.read_message().await?;
            match message.tag {
                b'D' => rows.push(data_row(&message.body)?),
                b'E' => error = Some(server_error(&message.body)),
                b'Z' => break,
                _ => {}
            }
        }
        match error {
            Some(error) => Err(error),
            None => Ok(rows),
        }
    }

    /// Sends a `START_REPLICATION` command and waits for the CopyBoth stream to open.
    pub async fn start_replication(&mut self, sql: &str) -> Result<(), PgError> {
        frontend::query(sql, &mut self.write).map_err(PgError::io)?;
        self.flush().await?;
        loop {
            let message = self.read_message().await?;
            match message.tag {
                b'W' => return Ok(()),
                b'E' => {
                    let error = server_error(&message.body);
                    // Drain to ReadyForQuery so the connection stays usable.
                    while self.read_message().await?.tag != b'Z' {}
                    return Err(error);
                }
                _ => {}
            }
        }
    }

    /// The next CopyData payload of the replication stream; `None` when the server ends it.
    pub async fn next_copy_data(&mut self) -> Result<Option<Bytes>, PgError> {
        loop {
            let message = self.read_message().await?;
            match message.tag {
                b'd' => return Ok(Some(message.body)),
                b'c' | b'C' | b'Z' => return Ok(None),
                b'E' => return Err(server_error(&message.body)),
                _ => {}
            }
        }
    }

    /// Whether a whole message is already buffered (reading it will not wait).
    pub fn has_buffered_message(&self) -> bool {
        self.read.len() >= 5
            && self.read.len() > u32::from_be_bytes([self.read[1], self.read[2], self.read[3], self.read[4]]) as usize
    }

    /// Sends a standby status update: `written` received, `flushed` applied and durable.
    pub async fn send_status(&mut self, written: u64, flushed: u64, reply: bool) -> Result<(), PgError> {
        let mut payload = BytesMut::with_capacity(34);
        payload.put_u8(b'r');
        payload.put_u64(written);
        payload.put_u64(flushed);
        payload.put_u64(flushed);
        payload.put_i64(postgres_epoch_micros());
        payload.put_u8(reply as u8);
        frontend::CopyData::new(payload.freeze()).map_err(PgError::io)?.write(&mut self.write);
        self.flush().await
    }

    /// Ends the session politely.
    pub async fn terminate(mut self) {
        frontend::terminate(&mut self.write);
        let _ = self.flush().await;
    }

    async fn flush(&mut self) -> Result<(), PgError> {
        self.stream.write_all(&self.write).await.map_err(|e| self.lost(e))?;
        self.write.clear();
        self.stream.flush().await.map_err(|e| self.lost(e))
    }

    async fn read_message(&mut self) -> Result<BackendMessage, PgError> {
        loop {
            if self.read.len() >= 5 {
                let length = u32::from_be_bytes([self.read[1], self.read[2], self.read[3], self.read[4]]) as usize;
                if length < 4 {
                    return Err(PgError::protocol(format!("message length {length} from {}", self.target)));
                }
                if self.read.len() > length {
                    let mut frame = self.read.split_to(1 + length);
                    let tag = frame[0];
                    frame.advance(5);
                    return Ok(BackendMessage { tag, body: frame.freeze() });
                }
                self.read.reserve(1 + length - self.read.len());
            }
            let read = self.stream.read_buf(&mut self.read).await.map_err(|e| self.lost(e))?;
            if read == 0 {
                return Err(PgError::Connect {
                    target: self.target.clone(),
                    message: "the server closed the connection".into(),
                });
            }
        }
    }

    fn lost(&self, error: std::io::Error) -> PgError {
        PgError::Connect { target: self.target.clone(), message: error.to_string() }
    }
}

/// Microseconds since 2000-01-01, PostgreSQL's epoch.
fn postgres_epoch_micros() -> i64 {
    const UNIX_TO_POSTGRES_MICROS: i64 = 946_684_800_000_000;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    now.as_micros() as i64 - UNIX_TO_POSTGRES_MICROS
}

fn data_row(body: &Bytes) -> Result<Vec<Option<String>>, PgError> {
    let mut body = body.clone();
    if body.remaining() < 2 {
        return Err(PgError::protocol("short DataRow"));
    }
    let count = body.get_i16();
    let mut values = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count {
        if body.remaining() < 4 {
            return Err(PgError::protocol("short DataRow"));
        }
        let length = body.get_i32();
        if length < 0 {
            values.push(None);
            continue;
        }
        let length = length as usize;
        if body.remaining() < length {
            return Err(PgError::protocol("short DataRow"));
        }
        values.push(Some(String::from_utf8_lossy(&body.split_to(length)).into_owned()));
    }
    Ok(values)
}

/// An ErrorResponse as an error carrying its SQLSTATE, message, detail and hint.
fn server_error(body: &Bytes) -> PgError {
    let (mut code, mut message, mut detail, mut hint) = (String::new(), String::new(), None, None);
    for field in body.split(|b| *b == 0) {
        let Some((&kind, value)) = field.split_first() else { continue };
        let value = String::from_utf8_lossy(value).into_owned();
        match kind {
            b'C' => code = value,
            b'M' => message = value,
            b'D' => detail = Some(value),
            b'H' => hint = Some(value),
            _ => {}
        }
    }
    let mut text = message;
    if let Some(detail) = detail {
        text = format!("{text} ({detail})");
    }
    if let Some(hint) = hint {
        text = format!("{text}; hint: {hint}");
    }
    PgError::Server { code, message: text }
}
