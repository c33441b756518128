//! Who may connect: trust (the default, for a server on 127.0.0.1), or SCRAM-SHA-256
//! passwords from a users file (`user:password` per line) or `CHANGEFLOW_USERS`; and TLS
//! from a PEM certificate and key.

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use async_trait::async_trait;
use futures_util::Sink;
use pgwire::api::auth::driver::AuthDriver;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::{ScramAuth, ScramSecret, gen_salted_password};
use pgwire::api::auth::{AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler};
use pgwire::api::{ClientInfo, ConnectionManager};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::TlsAcceptor;
use pgwire::tokio::tokio_rustls::rustls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const SCRAM_ITERATIONS: usize = 4096;

/// Users and their SCRAM verifiers (computed once, at start; the passwords are not kept).
///
/// Only verifiers are held, as PostgreSQL's `pg_authid` does: a client's proof is checked
/// by comparing `SHA-256(ClientProof XOR HMAC(StoredKey, AuthMessage))` with `StoredKey`.
/// The compared value is a hash of something the client cannot steer without knowing
/// `StoredKey`, so how long the comparison takes tells it nothing about the secret.
pub struct Users {
    verifiers: HashMap<String, Verifier>,
    /// Makes the salt of the challenge an unknown user gets, the same each time for a name.
    mock_secret: [u8; 32],
    /// The keys of unknown users: random, so no proof matches them.
    mock_keys: ([u8; 32], [u8; 32]),
}

/// One user's SCRAM-SHA-256 verifier.
struct Verifier {
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: key material is never rendered.
        f.debug_struct("Users").field("names", &self.verifiers.keys().collect::<Vec<_>>()).finish()
    }
}

impl Users {
    /// What an unknown user is challenged with, as PostgreSQL does: a salt that looks like
    /// a real user's (stable per name, so probing twice tells nothing), and keys no
    /// password matches. The client fails at its proof, exactly as with a wrong password.
    fn mock_secret(&self, user: &str) -> ScramSecret {
        use std::hash::{Hash, Hasher};
        let mut salt = Vec::with_capacity(16);
        for half in 0u8..2 {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (self.mock_secret, user, half).hash(&mut hasher);
            salt.extend_from_slice(&hasher.finish().to_le_bytes());
        }
        ScramSecret::Verifier {
            salt,
            iterations: SCRAM_ITERATIONS,
            stored_key: self.mock_keys.0.to_vec(),
            server_key: self.mock_keys.1.to_vec(),
        }
    }

    /// Parses `user:password` lines; blank lines and `#` comments are skipped.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        let mut verifiers = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, password)) = line.split_once(':') else {
                bail!("{origin}:{}: expected user:password", number + 1);
            };
            if user.is_empty() || password.is_empty() {
                bail!("{origin}:{}: the user name and the password must not be empty", number + 1);
            }
            let salt: [u8; 16] = rand::random();
            let salted = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
            let ScramSecret::Verifier { salt, stored_key, server_key, .. } =
                ScramSecret::verifier_from_salted_password(salt.to_vec(), salted, SCRAM_ITERATIONS)
            else {
                bail!("{origin}:{}: could not derive the SCRAM verifier", number + 1);
            };
            verifiers.insert(user.to_string(), Verifier { salt, stored_key, server_key });
        }
        if verifiers.is_empty() {
            bail!("{origin} names no users");
        }
        Ok(Self { verifiers, mock_secret: rand::random(), mock_keys: (rand::random(), rand::random()) })
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read users file {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }
}

#[async_trait]
impl AuthSource for Users {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        // Only SCRAM is offered, and it asks `get_scram_secret`: no password is held.
        Err(PgWireError::InvalidPassword(login.user().unwrap_or_default().to_string()))
    }

    async fn get_scram_secret(&self, login: &LoginInfo) -> PgWireResult<(ScramSecret, Option<()>)> {
        let user = login.user().unwrap_or_default();
        let secret = match self.verifiers.get(user) {
            Some(verifier) => ScramSecret::Verifier {
                salt: verifier.salt.clone(),
                iterations: SCRAM_ITERATIONS,
                stored_key: verifier.stored_key.clone(),
                server_key: verifier.server_key.clone(),
            },
            // Unknown users are challenged and fail at the proof, like a wrong password:
            // which names exist is not told.
            None => self.mock_secret(user),
        };
        Ok((secret, None))
    }
}

/// What the server tells a client at startup: PostgreSQL's defaults, with the version
/// changeflow answers as (psql warns about a server newer than itself, and picks its
/// catalog queries by the version).
fn server_parameters() -> DefaultServerParameterProvider {
    let mut parameters = DefaultServerParameterProvider::default();
    parameters.server_version = changeflow_sql::postgres_functions::SERVER_VERSION.to_string();
    parameters
}

/// Accepts everyone (no users configured).
pub struct Trust {
    driver: AuthDriver<DefaultServerParameterProvider>,
}

impl Trust {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let PgWireFrontendMessage::Startup(startup) = &message {
            pgwire::api::auth::protocol_negotiation(client, startup).await?;
            pgwire::api::auth::save_startup_parameters_to_metadata(client, startup);
            self.driver.complete_authentication(client, None).await?;
        }
        Ok(())
    }
}

/// How clients authenticate.
enum Authentication {
    Trust(Trust),
    Scram(SASLAuthStartupHandler<DefaultServerParameterProvider>),
}

/// The startup handler in use: authentication, and whether TLS is required first.
pub struct Startup {
    authentication: Authentication,
    tls_required: bool,
}

impl Startup {
    pub fn new(users: Option<Arc<Users>>, connections: Arc<ConnectionManager>, tls_required: bool) -> Self {
        let authentication = match users {
            None => Authentication::Trust(Trust {
                driver: AuthDriver::new(server_parameters()).with_connection_manager(connections),
            }),
            Some(users) => {
                let mut scram = ScramAuth::new(users);
                scram.set_iterations(SCRAM_ITERATIONS);
                let parameters = Arc::new(server_parameters());
                Authentication::Scram(
                    SASLAuthStartupHandler::new(parameters).with_scram(scram).with_connection_manager(connections),
                )
            }
        };
        Self { authentication, tls_required }
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if self.tls_required && !client.is_secure() && matches!(message, PgWireFrontendMessage::Startup(_)) {
            return Err(PgWireError::UserError(Box::new(pgwire::error::ErrorInfo::new(
                "FATAL".into(),
                "28000".into(),
                "this server requires TLS (--tls-required): connect with sslmode=require".into(),
            ))));
        }
        match &self.authentication {
            Authentication::Trust(trust) => trust.on_startup(client, message).await,
            Authentication::Scram(scram) => scram.on_startup(client, message).await,
        }
    }
}

/// A TLS acceptor from PEM files.
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read TLS certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("bad PEM in TLS certificate {}", cert.display()))?;
    if certs.is_empty() {
        bail!("TLS certificate file {} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("cannot read TLS key {}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not make a valid pair")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
