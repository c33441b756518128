//! Where a PostgreSQL source or sink connects, and with what credentials: the `url`, the
//! password (in the url, `password = SECRET name`, `password_env` or `password_file`, the
//! last two read again at every connection so rotated credentials are picked up), and TLS
//! (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`, in the url or as options).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

pub use crate::HostCredentials;

use super::config::redact;
use super::error::PgError;
use super::tls::{SslMode, TlsSettings};

/// The options an endpoint reads (the source and the sink add their own).
pub const ENDPOINT_OPTIONS: [&str; 8] =
    ["url", "password", "password_env", "password_file", "sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Where the password comes from.
#[derive(Debug, Clone)]
enum Password {
    /// In the url, or given (through a secret) as `password`; already in the config.
    Given,
    Env(String),
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    config: tokio_postgres::Config,
    password: Password,
    pub tls: TlsSettings,
    /// The connection string without its password, for messages.
    pub display_url: String,
}

impl Endpoint {
    /// Reads the endpoint's options; nothing is connected to and no credential file read.
    pub fn from_options(options: &BTreeMap<String, String>, host_credentials: HostCredentials) -> Result<Self, String> {
        let url = options.get("url").ok_or("option 'url' is required (postgres://user@host:port/database)")?;
        let (url, mut tls_options) = take_tls_parameters(url)?;
        for key in ["sslmode", "sslrootcert", "sslcert", "sslkey"] {
            if let Some(value) = options.get(key) {
                tls_options.insert(key.to_string(), value.clone());
            }
        }
        let mut config = tokio_postgres::Config::from_str(&url)
            .map_err(|e| format!("option 'url' is not a PostgreSQL connection string: {e}"))?;
        if config.get_user().is_none() {
            // As libpq: $PGUSER, else the name of the user running changeflow (shown in
            // messages, so nobody wonders which user was tried).
            let user =
                ["PGUSER", "USER", "LOGNAME"].iter().find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()));
            config.user(user.as_deref().unwrap_or("postgres"));
        }
        let given: Vec<&str> = ["password", "password_env", "password_file"]
            .into_iter()
            .filter(|key| options.contains_key(*key))
            .chain(config.get_password().map(|_| "a password in the url"))
            .collect();
        if given.len() > 1 {
            return Err(format!("the password is given more than once ({}): give one", given.join(", ")));
        }
        if host_credentials == HostCredentials::Refused
            && let Some(key) = ["password_env", "password_file"].into_iter().find(|k| options.contains_key(*k))
        {
            return Err(format!(
                "option '{key}' reads the server's environment or files, which clients of `changeflow serve` may \
                 not do (the operator allows it with --allow-host-credentials); use password = SECRET <name> \
                 (CREATE SECRET <name> AS '...')"
            ));
        }
        let password = if let Some(password) = options.get("password") {
            config.password(password.as_bytes());
            Password::Given
        } else if let Some(variable) = options.get("password_env") {
            Password::Env(variable.clone())
        } else if let Some(path) = options.get("password_file") {
            Password::File(PathBuf::from(path))
        } else {
            Password::Given
        };
        let mode = match tls_options.get("sslmode") {
            Some(mode) => SslMode::parse(mode)?,
            None => SslMode::Prefer,
        };
        let client_cert = match (tls_options.get("sslcert"), tls_options.get("sslkey")) {
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            (None, None) => None,
            _ => return Err("sslcert and sslkey go together: give both or neither".into()),
        };
        let tls = TlsSettings { mode, root_cert: tls_options.get("sslrootcert").map(PathBuf::from), client_cert };
        if mode != SslMode::Disable {
            tls.check()?;
        }
        let display_url = redact(&config);
        Ok(Self { config, password, tls, display_url })
    }

    /// The connection settings, with the password as it is now (read from the environment
    /// or its file at each call).
    pub fn config(&self) -> Result<tokio_postgres::Config, PgError> {
        let mut config = self.config.clone();
        config.ssl_mode(self.tls.postgres_mode());
        match &self.password {
            Password::Given => {}
            Password::Env(variable) => {
                let value = std::env::var(variable).map_err(|_| {
                    PgError::Config(format!("password_env names ${variable}, which is not set (or not UTF-8)"))
                })?;
                config.password(value.as_bytes());
            }
            Password::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| PgError::Config(format!("cannot read password_file {}: {e}", path.display())))?;
                // The first line, as a password file written by `echo` ends in a newline.
                let password = text.lines().next().unwrap_or_default();
                if password.is_empty() {
                    return Err(PgError::Config(format!("password_file {} is empty", path.display())));
                }
                config.password(password.as_bytes());
            }
        }
        Ok(config)
    }

    /// A client connection (its connection task spawned), with extra settings applied.
    pub async fn connect(
        &self,
        adjust: impl FnOnce(&mut tokio_postgres::Config),
    ) -> Result<tokio_postgres::Client, PgError> {
        let mut config = self.config()?;
        adjust(&mut config);
        let connect_error = |error: tokio_postgres::Error| {
            let mut message = client_error_message(&error);
            if message.contains("UnknownIssuer") {
                let roots = self.tls.root_cert.as_ref().map_or("sslrootcert".into(), |p| p.display().to_string());
                message.push_str(&format!(" (the server's certificate is not signed by a CA in {roots})"));
            }
            PgError::Connect { target: self.display_url.clone(), message }
        };
        let client = if self.tls.mode == SslMode::Disable {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(connect_error)?;
            tokio::spawn(run_connection(connection));
            client
        } else {
            let tls = self.tls.client_config().map_err(PgError::Config)?;
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone());
            let (client, connection) = config.connect(tls).await.map_err(connect_error)?;
            tokio::spawn(run_connection(connection));
            client
        };
        Ok(client)
    }
}

async fn run_connection<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(connection: F) {
    if let Err(error) = connection.await {
        tracing::debug!(%error, "PostgreSQL client connection ended");
    }
}

/// What went wrong, in PostgreSQL's words when the server answered (`tokio-postgres` only
/// says "db error" then), with the SQLSTATE.
pub fn client_error_message(error: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    match error.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => match error.source() {
            Some(cause) => format!("{error}: {cause}"),
            None => error.to_string(),
        },
    }
}

/// Takes `sslmode`, `sslrootcert`, `sslcert` and `sslkey` out of a connection string (URL
/// query parameters, or `key=value` words), which `tokio-postgres` does not know all of.
fn take_tls_parameters(url: &str) -> Result<(String, BTreeMap<String, String>), String> {
    const KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];
    let mut taken = BTreeMap::new();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else { return Ok((url.to_string(), taken)) };
        let mut kept = Vec::new();
        for parameter in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = parameter.split_once('=').unwrap_or((parameter, ""));
            if KEYS.contains(&key) {
                taken.insert(key.to_string(), percent_decode(value)?);
            } else {
                kept.push(parameter);
            }
        }
        let url = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
        return Ok((url, taken));
    }
    // key=value words; a value may be single-quoted with \' and \\ inside.
    let mut kept = String::new();
    let mut rest = url.trim_start();
    while !rest.is_empty() {
        let key_end = rest.find(|c: char| c == '=' || c.is_whitespace()).unwrap_or(rest.len());
        let key = &rest[..key_end];
        let after_key = rest[key_end..].trim_start();
        let Some(after_eq) = after_key.strip_prefix('=') else {
            return Err(format!("option 'url': expected key=value at '{key}'"));
        };
        let after_eq = after_eq.trim_start();
        let (value, raw_len) = if let Some(quoted) = after_eq.strip_prefix('\'') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, escaped)| escaped)),
                    '\'' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let end = end.ok_or_else(|| format!("option 'url': unterminated quote in the value of '{key}'"))?;
            (value, 1 + end)
        } else {
            let end = after_eq.find(char::is_whitespace).unwrap_or(after_eq.len());
            (after_eq[..end].to_string(), end)
        };
        let raw = &after_eq[..raw_len];
        if KEYS.contains(&key) {
            taken.insert(key.to_string(), value);
        } else {
            kept.push_str(&format!("{key}={raw} "));
        }
        rest = after_eq[raw_len..].trim_start();
    }
    Ok((kept.trim_end().to_string(), taken))
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or_else(|| format!("option 'url': bad %-escape at '{}'", &text[i..]))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "option 'url': a %-escaped value is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn tls_parameters_are_taken_from_both_url_forms() {
        let (url, taken) = take_tls_parameters(
            "postgres://u@h:5/db?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca.pem",
        )
        .expect("url");
        assert_eq!(url, "postgres://u@h:5/db?application_name=x");
        assert_eq!(taken["sslmode"], "verify-full");
        assert_eq!(taken["sslrootcert"], "/tmp/ca.pem");
        let (url, taken) =
            take_tls_parameters("host=h sslmode = require  password='it\\'s x' sslrootcert='/a b/ca.pem'").expect("kv");
        assert_eq!(url, "host=h password='it\\'s x'");
        assert_eq!(taken["sslmode"], "require");
        assert_eq!(taken["sslrootcert"], "/a b/ca.pem");
    }

    #[test]
    fn passwords_come_from_one_place() {
        let url = "postgres://u@127.0.0.1/db";
        let endpoint = Endpoint::from_options(
            &options(&[("url", url), ("password_env", "CF_TEST_PW_26")]),
            HostCredentials::Allowed,
        )
        .expect("env");
        let error = endpoint.config().expect_err("unset variable");
        assert!(error.to_string().contains("CF_TEST_PW_26"), "{error}");

        let error = Endpoint::from_options(
            &options(&[("url", "postgres://u:p@h/db"), ("password", "q")]),
            HostCredentials::Allowed,
        )
        .expect_err("twice");
        assert!(error.contains("more than once"), "{error}");

        let error = Endpoint::from_options(
            &options(&[("url", url), ("password_file", "/etc/shadow")]),
            HostCredentials::Refused,
        )
        .expect_err("refused");
        assert!(error.contains("--allow-host-credentials"), "{error}");

        let error = Endpoint::from_options(
            &options(&[("url", &format!("{url}?sslmode=verify-full"))]),
            HostCredentials::Allowed,
        )
        .expect_err("no root");
        assert!(error.contains("sslrootcert"), "{error}");
        let error =
            Endpoint::from_options(&options(&[("url", url), ("sslmode", "sometimes")]), HostCredentials::Allowed)
                .expect_err("bad mode");
        assert!(error.contains("sometimes"), "{error}");
    }
}
