//! Decoding of the replication stream: the CopyData envelope (XLogData, primary keepalive)
//! and the logical replication messages of the `pgoutput` plugin, protocol version 1
//! (Begin, Commit, Origin, Relation, Type, Insert, Update, Delete, Truncate, Message).
//! Tuple values stay as borrowed text; [`super::decode`] turns them into Arrow columns.

use bytes::{Buf, Bytes};

use super::error::PgError;

/// One CopyData payload of the replication stream.
pub enum StreamMessage {
    /// WAL data: a pgoutput message, and the server's position after it.
    XLogData { end: u64, message: Bytes },
    /// The server's position; answer at once when `reply` is set.
    Keepalive { end: u64, reply: bool },
}

pub fn parse_stream_message(mut payload: Bytes) -> Result<StreamMessage, PgError> {
    let tag = get_u8(&mut payload)?;
    match tag {
        b'w' => {
            need(&payload, 24)?;
            let _start = payload.get_u64();
            let end = payload.get_u64();
            let _sent_at = payload.get_i64();
            Ok(StreamMessage::XLogData { end, message: payload })
        }
        b'k' => {
            need(&payload, 17)?;
            let end = payload.get_u64();
            let _sent_at = payload.get_i64();
            let reply = payload.get_u8() == 1;
            Ok(StreamMessage::Keepalive { end, reply })
        }
        other => Err(PgError::protocol(format!("unknown replication message '{}'", other as char))),
    }
}

/// A column of a Relation message.
#[derive(Debug, Clone)]
pub struct RelationColumn {
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct RelationMessage {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    pub columns: Vec<RelationColumn>,
}

/// One value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    Null,
    /// A TOASTed value that did not change: not sent.
    Unchanged,
    Text(Bytes),
}

/// What the old tuple of an update or delete carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldTuple {
    /// The replica identity's key columns (others NULL).
    Key,
    /// The whole old row (REPLICA IDENTITY FULL).
    Full,
}

/// PostgreSQL's timestamps count from 2000-01-01; this many microseconds after the Unix epoch.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

pub enum LogicalMessage {
    Begin {
        final_lsn: u64,
        /// Commit time, microseconds since the Unix epoch.
        commit_micros: i64,
        xid: u32,
    },
    /// The end of the commit record: the transaction's position (its unit of progress).
    Commit {
        end_lsn: u64,
    },
    Relation(RelationMessage),
    Insert {
        relation: u32,
        new: Vec<TupleValue>,
    },
    Update {
        relation: u32,
        old: Option<(OldTuple, Vec<TupleValue>)>,
        new: Vec<TupleValue>,
    },
    Delete {
        relation: u32,
        old: (OldTuple, Vec<TupleValue>),
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// Origin, Type and logical decoding messages: nothing to apply.
    Other,
}

pub fn parse_logical_message(mut message: Bytes) -> Result<LogicalMessage, PgError> {
    let tag = get_u8(&mut message)?;
    let body = &mut message;
    Ok(match tag {
        b'B' => {
            need(body, 20)?;
            let final_lsn = body.get_u64();
            let commit_time = body.get_i64();
            let xid = body.get_u32();
            LogicalMessage::Begin { final_lsn, commit_micros: commit_time.saturating_add(POSTGRES_EPOCH_MICROS), xid }
        }
        b'C' => {
            need(body, 25)?;
            let _flags = body.get_u8();
            let _commit_lsn = body.get_u64();
            let end_lsn = body.get_u64();
            let _commit_time = body.get_i64();
            LogicalMessage::Commit { end_lsn }
        }
        b'R' => {
            need(body, 4)?;
            let oid = body.get_u32();
            let namespace = get_cstr(body)?;
            let name = get_cstr(body)?;
            need(body, 3)?;
            let _replica_identity = body.get_u8();
            let count = body.get_i16();
            let mut columns = Vec::with_capacity(count.max(0) as usize);
            for _ in 0..count {
                let _flags = get_u8(body)?;
                let name = get_cstr(body)?;
                need(body, 8)?;
                let _type_oid = body.get_u32();
                let _type_modifier = body.get_i32();
                columns.push(RelationColumn { name });
            }
            LogicalMessage::Relation(RelationMessage { oid, namespace, name, columns })
        }
        b'I' => {
            need(body, 5)?;
            let relation = body.get_u32();
            expect_tag(body, b'N')?;
            LogicalMessage::Insert { relation, new: get_tuple(body)? }
        }
        b'U' => {
            need(body, 5)?;
            let relation = body.get_u32();
            let old = match get_u8(body)? {
                b'K' => Some((OldTuple::Key, get_tuple(body)?)),
                b'O' => Some((OldTuple::Full, get_tuple(body)?)),
                b'N' => None,
                other => return Err(PgError::protocol(format!("update with tuple tag '{}'", other as char))),
            };
            if old.is_some() {
                expect_tag(body, b'N')?;
            }
            LogicalMessage::Update { relation, old, new: get_tuple(body)? }
        }
        b'D' => {
            need(body, 5)?;
            let relation = body.get_u32();
            let kind = match get_u8(body)? {
                b'K' => OldTuple::Key,
                b'O' => OldTuple::Full,
                other => return Err(PgError::protocol(format!("delete with tuple tag '{}'", other as char))),
            };
            LogicalMessage::Delete { relation, old: (kind, get_tuple(body)?) }
        }
        b'T' => {
            need(body, 5)?;
            let count = body.get_u32();
            let _options = body.get_u8();
            need(body, count as usize * 4)?;
            LogicalMessage::Truncate { relations: (0..count).map(|_| body.get_u32()).collect() }
        }
        b'O' | b'Y' | b'M' => LogicalMessage::Other,
        other => return Err(PgError::protocol(format!("unknown pgoutput message '{}'", other as char))),
    })
}

fn get_tuple(body: &mut Bytes) -> Result<Vec<TupleValue>, PgError> {
    need(body, 2)?;
    let count = body.get_i16();
    let mut values = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count {
        values.push(match get_u8(body)? {
            b'n' => TupleValue::Null,
            b'u' => TupleValue::Unchanged,
            b't' => {
                need(body, 4)?;
                let length = body.get_i32().max(0) as usize;
                need(body, length)?;
                TupleValue::Text(body.split_to(length))
            }
            other => return Err(PgError::protocol(format!("tuple value kind '{}'", other as char))),
        });
    }
    Ok(values)
}

fn expect_tag(body: &mut Bytes, tag: u8) -> Result<(), PgError> {
    let found = get_u8(body)?;
    if found == tag {
        Ok(())
    } else {
        Err(PgError::protocol(format!("expected tuple tag '{}', found '{}'", tag as char, found as char)))
    }
}

fn get_u8(body: &mut Bytes) -> Result<u8, PgError> {
    need(body, 1)?;
    Ok(body.get_u8())
}

fn get_cstr(body: &mut Bytes) -> Result<String, PgError> {
    let end = body.iter().position(|b| *b == 0).ok_or_else(|| PgError::protocol("unterminated string"))?;
    let text = String::from_utf8_lossy(&body[..end]).into_owned();
    body.advance(end + 1);
    Ok(text)
}

fn need(body: &Bytes, bytes: usize) -> Result<(), PgError> {
    if body.remaining() < bytes {
        Err(PgError::protocol(format!("message ends early ({} of {bytes} bytes)", body.remaining())))
    } else {
        Ok(())
    }
}

/// An LSN as PostgreSQL writes it: `16/B374D848`.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_round_trip() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("nonsense"), None);
    }

    /// A tuple as pgoutput writes it: text values, NULLs (None) and unchanged TOAST ('u').
    fn tuple(values: &[Option<&str>], unchanged: usize) -> Vec<u8> {
        let mut out = ((values.len() + unchanged) as i16).to_be_bytes().to_vec();
        for value in values {
            match value {
                Some(text) => {
                    out.push(b't');
                    out.extend_from_slice(&(text.len() as i32).to_be_bytes());
                    out.extend_from_slice(text.as_bytes());
                }
                None => out.push(b'n'),
            }
        }
        out.extend(std::iter::repeat_n(b'u', unchanged));
        out
    }

    #[test]
    fn decodes_relations_updates_deletes_and_truncates() {
        let mut relation = b"R\x00\x00\x40\x01public\x00docs\x00d\x00\x02".to_vec();
        relation.extend_from_slice(b"\x01id\x00\x00\x00\x00\x17\xff\xff\xff\xff");
        relation.extend_from_slice(b"\x00body\x00\x00\x00\x00\x19\xff\xff\xff\xff");
        let LogicalMessage::Relation(parsed) = parse_logical_message(Bytes::from(relation)).expect("relation") else {
            panic!("not a relation")
        };
        assert_eq!((parsed.oid, parsed.namespace.as_str(), parsed.name.as_str()), (0x4001, "public", "docs"));
        assert_eq!(parsed.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["id", "body"]);

        // An update whose key changed ('K' old tuple) and whose body stayed TOASTed.
        let mut update = b"U\x00\x00\x40\x01K".to_vec();
        update.extend(tuple(&[Some("1"), None], 0));
        update.push(b'N');
        update.extend(tuple(&[Some("2")], 1));
        let LogicalMessage::Update { relation, old: Some((OldTuple::Key, old)), new } =
            parse_logical_message(Bytes::from(update)).expect("update")
        else {
            panic!("not an update with a key")
        };
        assert_eq!(relation, 0x4001);
        assert_eq!(old, [TupleValue::Text(Bytes::from_static(b"1")), TupleValue::Null]);
        assert_eq!(new, [TupleValue::Text(Bytes::from_static(b"2")), TupleValue::Unchanged]);

        let mut delete = b"D\x00\x00\x40\x01O".to_vec();
        delete.extend(tuple(&[Some("2"), Some("text")], 0));
        let LogicalMessage::Delete { old: (OldTuple::Full, old), .. } =
            parse_logical_message(Bytes::from(delete)).expect("delete")
        else {
            panic!("not a full delete")
        };
        assert_eq!(old.len(), 2);

        let truncate = b"T\x00\x00\x00\x02\x00\x00\x00\x40\x01\x00\x00\x40\x02".to_vec();
        let LogicalMessage::Truncate { relations } = parse_logical_message(Bytes::from(truncate)).expect("truncate")
        else {
            panic!("not a truncate")
        };
        assert_eq!(relations, [0x4001, 0x4002]);
    }

    #[test]
    fn random_messages_are_errors_or_messages_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(25);
        let tags = b"BCRIUDTOYMwkx";
        for _ in 0..50_000 {
            let mut bytes = vec![tags[rng.random_range(0..tags.len())]];
            let len = rng.random_range(0..64);
            // Mostly small numbers, so lengths and counts often fit what follows.
            bytes.extend(
                (0..len).map(|_| if rng.random_bool(0.6) { rng.random_range(0..4) } else { rng.random::<u8>() }),
            );
            let _ = parse_logical_message(Bytes::from(bytes.clone()));
            let _ = parse_stream_message(Bytes::from(bytes));
        }
    }

    #[test]
    fn short_messages_are_errors_not_panics() {
        for bytes in [&b"B\x00\x01"[..], b"I\x00\x00\x00\x01N\x00\x02t\x00\x00\x00\x09ab", b"R\x00\x00\x00\x01pub"] {
            assert!(parse_logical_message(Bytes::copy_from_slice(bytes)).is_err());
        }
    }
}
