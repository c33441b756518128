//! SUBSCRIBE over the wire: the relation's rows (unless `snapshot = false`), then each
//! epoch's changes as rows of `epoch`, `weight`, columns, flushed to the client as soon as
//! the epoch is applied, until the client cancels (CancelRequest) or goes away, or the
//! relation is dropped. Works in the simple protocol (psql) and the extended one (drivers).

use std::fmt::Debug;
use std::sync::Arc;

use changeflow_engine::{ChangeBatch, Subscription, ViewUpdate};
use futures_util::{Sink, SinkExt};
use pgwire::api::results::FieldInfo;
use pgwire::api::{ClientInfo, ConnectionHandle, PgWireConnectionState};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::data::{FieldDescription, RowDescription};
use pgwire::messages::response::ReadyForQuery;

use super::Shared;
use super::encode;
use super::statement::{engine_error, user_error};

/// The relation and snapshot option of a `SUBSCRIBE` message, if it is one.
pub fn target(query: &str) -> Option<(String, bool)> {
    let trimmed = query.trim_start();
    if trimmed.len() < 9 || !trimmed[..9].eq_ignore_ascii_case("SUBSCRIBE") {
        return None;
    }
    let statements = changeflow_sql::parser::parse_sql(query).ok()?;
    match statements.as_slice() {
        [one] => match &one.statement {
            changeflow_sql::parser::Statement::Subscribe { relation, snapshot } => Some((relation.clone(), *snapshot)),
            _ => None,
        },
        _ => None,
    }
}

/// Streams a subscription in answer to a simple-protocol query, then ReadyForQuery.
pub async fn simple<C>(client: &mut C, shared: &Shared, relation: &str, snapshot: bool) -> PgWireResult<()>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    client.set_state(PgWireConnectionState::QueryInProgress);
    let result = async {
        let subscription = shared.database.subscribe(relation, snapshot).await.map_err(engine_error)?;
        let fields = encode::text_fields(&subscription.schema);
        let description = RowDescription::new(fields.iter().map(FieldDescription::from).collect());
        client.feed(PgWireBackendMessage::RowDescription(description)).await?;
        stream(client, shared, subscription, &fields).await
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
    shared: &Shared,
    relation: &str,
    snapshot: bool,
    fields: Arc<Vec<FieldInfo>>,
) -> PgWireResult<()>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let subscription = shared.database.subscribe(relation, snapshot).await.map_err(engine_error)?;
    client.set_state(PgWireConnectionState::QueryInProgress);
    let result = stream(client, shared, subscription, &fields).await;
    client.set_state(PgWireConnectionState::ReadyForQuery);
    result
}

/// Sends the snapshot and then every update until the stream ends; always ends in an error
/// (a canceled query, the relation gone) except when the client left.
async fn stream<C>(
    client: &mut C,
    shared: &Shared,
    mut subscription: Subscription,
    fields: &Arc<Vec<FieldInfo>>,
) -> PgWireResult<()>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let _live = shared.metrics.subscription_started();
    let mut cancel = match client.session_extensions().get::<Arc<ConnectionHandle>>() {
        Some(handle) => Some(handle.start_query().await),
        None => None,
    };
    if let Some(rows) = subscription.snapshot.take() {
        send(client, encode::change_rows(fields, subscription.start_epoch, &ChangeBatch::inserts(rows))?).await?;
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
        match update.map_err(engine_error)? {
            ViewUpdate::Changes { epoch, change } => {
                sent_rows += change.len();
                send(client, encode::change_rows(fields, epoch, &change)?).await?;
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

/// Sends rows and flushes them: a subscriber sees an epoch as soon as it is applied.
async fn send<C>(client: &mut C, rows: Vec<pgwire::messages::data::DataRow>) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    for row in rows {
        client.feed(PgWireBackendMessage::DataRow(row)).await?;
    }
    client.flush().await?;
    Ok(())
}
