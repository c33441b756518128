//! SUBSCRIBE over the wire: the relation's rows (unless `snapshot = false`), then each
//! epoch's changes as rows of `epoch`, `weight`, columns, flushed to the client as soon as
//! the epoch is applied, until the client cancels (CancelRequest) or goes away, or the
//! relation is dropped. Works in the simple protocol and the extended one (drivers); in
//! psql, `COPY (SUBSCRIBE ...) TO STDOUT` prints changes as they arrive (psql shows a
//! query's rows only when it ends, a COPY's lines as they come). A client that stops
//! reading is disconnected once the engine dropped its subscription (past
//! `--subscribe-buffer-mb`) and it still takes nothing for [`STALLED_FOR`].

use std::fmt::Debug;
use std::sync::Arc;

use changeflow_engine::{ChangeBatch, Subscription, ViewUpdate};
use futures_util::{Sink, SinkExt};
use pgwire::api::results::FieldInfo;
use pgwire::api::{ClientInfo, ConnectionHandle, PgWireConnectionState};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::copy::CopyOutResponse;
use pgwire::messages::data::{FieldDescription, RowDescription};
use pgwire::messages::response::ReadyForQuery;

use super::encode;
use super::handler::Connection;
use super::statement::{after_keyword, engine_error, user_error};

/// How long a client whose subscription was dropped for falling behind may go on taking
/// nothing before its connection is closed.
const STALLED_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// How a subscription's rows go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// DataRows of a query result.
    Rows,
    /// Lines of `COPY ... TO STDOUT` text.
    Copy,
}

/// A SUBSCRIBE sent as a simple query: `SUBSCRIBE ...` or `COPY (SUBSCRIBE ...) TO STDOUT`.
pub struct Target {
    pub relation: String,
    pub snapshot: bool,
    pub delivery: Delivery,
}

/// The subscription a simple query asks for, if it is one. A `COPY (SUBSCRIBE ...)` that
/// changeflow cannot run (another target or format, a bad option) is an error saying what
/// runs.
pub fn target(query: &str) -> PgWireResult<Option<Target>> {
    let trimmed = query.trim().trim_end_matches(';').trim();
    if let Some(copied) = after_keyword(trimmed, "COPY") {
        let Some(inner) = copied.trim_start().strip_prefix('(') else { return Ok(None) };
        if after_keyword(inner.trim_start(), "SUBSCRIBE").is_none() {
            return Ok(None);
        }
        let Some(close) = inner.rfind(')') else { return Ok(None) };
        let tail: String = inner[close + 1..].split_whitespace().collect::<Vec<_>>().join(" ").to_ascii_uppercase();
        if tail != "TO STDOUT" {
            return Err(user_error(
                "0A000",
                format!(
                    "COPY (SUBSCRIBE ...) {tail} is not supported: a subscription runs as COPY (SUBSCRIBE TO name \
                     [WITH (snapshot = false)]) TO STDOUT, in COPY's text format"
                ),
            ));
        }
        // The subscription's own errors (a bad option) as the parser words them.
        changeflow_sql::parser::parse_sql(&inner[..close]).map_err(|e| engine_error(e.into()))?;
        let Some((relation, snapshot)) = subscribe_statement(&inner[..close]) else { return Ok(None) };
        return Ok(Some(Target { relation, snapshot, delivery: Delivery::Copy }));
    }
    Ok(subscribe_statement(trimmed).map(|(relation, snapshot)| Target { relation, snapshot, delivery: Delivery::Rows }))
}

fn subscribe_statement(text: &str) -> Option<(String, bool)> {
    after_keyword(text.trim_start(), "SUBSCRIBE")?;
    let statements = changeflow_sql::parser::parse_sql(text).ok()?;
    match statements.as_slice() {
        [one] => match &one.statement {
            changeflow_sql::parser::Statement::Subscribe { relation, snapshot } => Some((relation.clone(), *snapshot)),
            _ => None,
        },
        _ => None,
    }
}

/// Streams a subscription in answer to a simple-protocol query, then ReadyForQuery.
pub async fn simple<C>(client: &mut C, connection: &Connection, target: Target) -> PgWireResult<()>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    client.set_state(PgWireConnectionState::QueryInProgress);
    let result = async {
        let subscription =
            connection.shared().database.subscribe(&target.relation, target.snapshot).await.map_err(engine_error)?;
        let fields = encode::text_fields(&subscription.schema);
        match target.delivery {
            Delivery::Rows => {
                let description = RowDescription::new(fields.iter().map(FieldDescription::from).collect());
                client.feed(PgWireBackendMessage::RowDescription(description)).await?;
            }
            Delivery::Copy => {
                let columns = fields.len();
                let response = CopyOutResponse::new(0, columns as i16, vec![0; columns]);
                client.feed(PgWireBackendMessage::CopyOutResponse(response)).await?;
            }
        }
        // The client learns at once that the subscription runs, before any change comes.
        client.flush().await?;
        stream(client, connection, subscription, &fields, target.delivery).await
    }
    .await;
    if let Err(error) = result {
        let info: ErrorInfo = error.into();
        client.feed(PgWireBackendMessage::ErrorResponse(info.into())).await?;
    }
    client.set_state(PgWireConnectionState::ReadyForQuery);
    let status = client.transaction_status();
    client.send(PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(status))).await?;
    Ok(())
}

/// Streams a subscription for an Execute of the extended protocol (its RowDescription was
/// sent at Describe). Errors go back to pgwire, which reports them and awaits Sync.
pub async fn extended<C>(
    client: &mut C,
    connection: &Connection,
    relation: &str,
    snapshot: bool,
    fields: Arc<Vec<FieldInfo>>,
) -> PgWireResult<()>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let subscription = connection.shared().database.subscribe(relation, snapshot).await.map_err(engine_error)?;
    client.set_state(PgWireConnectionState::QueryInProgress);
    let result = stream(client, connection, subscription, &fields, Delivery::Rows).await;
    client.set_state(PgWireConnectionState::ReadyForQuery);
    result
}

/// Sends the snapshot and then every update until the stream ends; always ends in an error
/// (a canceled query, the relation gone) except when the client left.
async fn stream<C>(
    client: &mut C,
    connection: &Connection,
    mut subscription: Subscription,
    fields: &Arc<Vec<FieldInfo>>,
    delivery: Delivery,
) -> PgWireResult<()>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let _live = connection.shared().metrics.subscription_started();
    let mut cancel = match client.session_extensions().get::<Arc<ConnectionHandle>>() {
        Some(handle) => Some(handle.start_query().await),
        None => None,
    };
    if let Some(rows) = subscription.snapshot.take() {
        send(client, fields, delivery, subscription.start_epoch, &ChangeBatch::inserts(rows)).await?;
    }
    let mut sent_rows = 0usize;
    loop {
        let update = match cancel.as_mut() {
            Some(cancel) => tokio::select! {
                update = subscription.next() => update,
                _ = cancel => return Err(PgWireError::QueryCanceled),
            },
            None => subscription.next().await,
        };
        let update = match update {
            Ok(update) => update,
            Err(error) => {
                // Dropped for falling behind before the socket filled: the error goes out
                // only if the client takes what is already written.
                if subscription.overflowed() && tokio::time::timeout(STALLED_FOR, client.flush()).await.is_err() {
                    return Err(sever(client, connection, &subscription));
                }
                return Err(engine_error(error));
            }
        };
        match update {
            ViewUpdate::Changes { epoch, change } => {
                sent_rows += change.len();
                send_or_sever(client, connection, &subscription, fields, delivery, epoch, &change).await?;
            }
            ViewUpdate::Ended(reason) => {
                return Err(user_error(
                    "57P01",
                    format!("subscription ended after {sent_rows} changed rows: {reason}"),
                ));
            }
        }
    }
}

/// Sends an epoch's rows; when the engine has dropped the subscription for falling behind
/// and the client still takes nothing for [`STALLED_FOR`], closes the connection instead
/// (no error can reach a client that does not read) and ends the stream.
async fn send_or_sever<C>(
    client: &mut C,
    connection: &Connection,
    subscription: &Subscription,
    fields: &Arc<Vec<FieldInfo>>,
    delivery: Delivery,
    epoch: u64,
    change: &ChangeBatch,
) -> PgWireResult<()>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let peer = client.socket_addr();
    let sending = send(client, fields, delivery, epoch, change);
    tokio::pin!(sending);
    let tick = std::time::Duration::from_millis(250);
    let mut stalled = std::time::Duration::ZERO;
    loop {
        tokio::select! {
            sent = &mut sending => return sent,
            () = tokio::time::sleep(tick) => {
                stalled = if subscription.overflowed() { stalled + tick } else { std::time::Duration::ZERO };
                if stalled >= STALLED_FOR {
                    return Err(sever_peer(peer, connection, subscription));
                }
            }
        }
    }
}

/// Closes the connection of a subscriber that stopped reading (see [`STALLED_FOR`]).
fn sever<C: ClientInfo>(client: &C, connection: &Connection, subscription: &Subscription) -> PgWireError {
    sever_peer(client.socket_addr(), connection, subscription)
}

fn sever_peer(peer: std::net::SocketAddr, connection: &Connection, subscription: &Subscription) -> PgWireError {
    tracing::warn!(
        %peer,
        relation = %subscription.relation,
        "closing the connection of a SUBSCRIBE client that stopped reading: its subscription fell past \
         --subscribe-buffer-mb and was dropped"
    );
    connection.sever();
    PgWireError::IoError(std::io::Error::new(std::io::ErrorKind::TimedOut, "the SUBSCRIBE client stopped reading"))
}

/// Sends an epoch's rows and flushes them: a subscriber sees an epoch as soon as it is
/// applied.
async fn send<C>(
    client: &mut C,
    fields: &Arc<Vec<FieldInfo>>,
    delivery: Delivery,
    epoch: u64,
    change: &ChangeBatch,
) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    match delivery {
        Delivery::Rows => {
            for row in encode::change_rows(fields, epoch, change)? {
                client.feed(PgWireBackendMessage::DataRow(row)).await?;
            }
        }
        Delivery::Copy => {
            for line in encode::change_copy_lines(fields, epoch, change)? {
                client.feed(PgWireBackendMessage::CopyData(line)).await?;
            }
        }
    }
    client.flush().await?;
    Ok(())
}
