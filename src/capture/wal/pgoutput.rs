//! The messages of PostgreSQL's built-in `pgoutput` plugin, protocol version 1, as
//! `pg_logical_slot_peek_binary_changes` returns them (one message a row). Pure Rust.
//!
//! The format is PostgreSQL's "Logical Replication Message Formats" (protocol.sgml): big-endian
//! integers, NUL-terminated strings, column values as their type's text output.

use std::fmt;

/// A column of a `Relation` message: the table's live columns in attribute order, as they were
/// when the change was made.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Column {
    /// 1 when the column is part of the replica identity key.
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// One column's value in a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Null,
    /// A TOASTed value the UPDATE did not change, not sent again.
    Unchanged,
    /// The type's text output.
    Text(&'a [u8]),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    Begin {
        final_lsn: u64,
        /// Microseconds since 2000-01-01 UTC.
        commit_time: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: u64,
        end_lsn: u64,
        commit_time: i64,
    },
    Relation {
        relid: u32,
        namespace: String,
        name: String,
        replica_identity: u8,
        columns: Vec<Column>,
    },
    Insert {
        relid: u32,
        new: Vec<Value<'a>>,
    },
    Update {
        relid: u32,
        /// The old row's replica identity (`K`: its key columns, `O`: the whole row), when sent.
        old: Option<Vec<Value<'a>>>,
        new: Vec<Value<'a>>,
    },
    Delete {
        relid: u32,
        old: Vec<Value<'a>>,
    },
    /// Type, origin, truncate and logical-decoding messages: nothing to capture.
    Other(u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed pgoutput message: {}", self.0)
    }
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.data.len())
            .ok_or_else(|| {
                ParseError(format!(
                    "needs {n} bytes at offset {}, has {}",
                    self.at,
                    self.data.len()
                ))
            })?;
        let bytes = &self.data[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ParseError> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.take(1)?[0])
    }

    fn i16(&mut self) -> Result<i16, ParseError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, ParseError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, ParseError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, ParseError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, ParseError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String, ParseError> {
        let rest = &self.data[self.at..];
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| ParseError("string without its NUL".into()))?;
        let s = String::from_utf8_lossy(&rest[..len]).into_owned();
        self.at += len + 1;
        Ok(s)
    }

    fn tuple(&mut self) -> Result<Vec<Value<'a>>, ParseError> {
        let n = self.i16()?;
        (0..n)
            .map(|_| match self.u8()? {
                b'n' => Ok(Value::Null),
                b'u' => Ok(Value::Unchanged),
                b't' => {
                    let len = self.i32()?;
                    let len = usize::try_from(len)
                        .map_err(|_| ParseError(format!("negative value length {len}")))?;
                    Ok(Value::Text(self.take(len)?))
                }
                kind => Err(ParseError(format!(
                    "column value kind {:?}: expected n, u or t (binary mode is not requested)",
                    kind as char
                ))),
            })
            .collect()
    }

    fn expect(&mut self, wanted: u8) -> Result<(), ParseError> {
        match self.u8()? {
            b if b == wanted => Ok(()),
            b => Err(ParseError(format!(
                "expected {:?}, found {:?}",
                wanted as char, b as char
            ))),
        }
    }
}

/// Parse one message.
pub fn parse(data: &[u8]) -> Result<Message<'_>, ParseError> {
    let mut r = Reader { data, at: 0 };
    let kind = r.u8()?;
    Ok(match kind {
        b'B' => Message::Begin {
            final_lsn: r.u64()?,
            commit_time: r.i64()?,
            xid: r.u32()?,
        },
        b'C' => {
            let _flags = r.u8()?;
            Message::Commit {
                commit_lsn: r.u64()?,
                end_lsn: r.u64()?,
                commit_time: r.i64()?,
            }
        }
        b'R' => {
            let relid = r.u32()?;
            let namespace = r.string()?;
            let name = r.string()?;
            let replica_identity = r.u8()?;
            let n = r.i16()?;
            let columns = (0..n)
                .map(|_| {
                    Ok(Column {
                        flags: r.u8()?,
                        name: r.string()?,
                        type_oid: r.u32()?,
                        type_modifier: r.i32()?,
                    })
                })
                .collect::<Result<Vec<_>, ParseError>>()?;
            Message::Relation {
                relid,
                namespace,
                name,
                replica_identity,
                columns,
            }
        }
        b'I' => {
            let relid = r.u32()?;
            r.expect(b'N')?;
            Message::Insert {
                relid,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relid = r.u32()?;
            let (old, new) = match r.u8()? {
                b'K' | b'O' => {
                    let old = r.tuple()?;
                    r.expect(b'N')?;
                    (Some(old), r.tuple()?)
                }
                b'N' => (None, r.tuple()?),
                b => {
                    return Err(ParseError(format!(
                        "update: expected K, O or N, found {:?}",
                        b as char
                    )))
                }
            };
            Message::Update { relid, old, new }
        }
        b'D' => {
            let relid = r.u32()?;
            match r.u8()? {
                b'K' | b'O' => {}
                b => {
                    return Err(ParseError(format!(
                        "delete: expected K or O, found {:?}",
                        b as char
                    )))
                }
            }
            Message::Delete {
                relid,
                old: r.tuple()?,
            }
        }
        b'Y' | b'O' | b'T' | b'M' => Message::Other(kind),
        other => {
            return Err(ParseError(format!(
                "unknown message type {:?}",
                other as char
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn tuple(out: &mut Vec<u8>, values: &[Option<&str>]) {
        out.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            match v {
                None => out.push(b'n'),
                Some(t) => {
                    out.push(b't');
                    out.extend_from_slice(&(t.len() as i32).to_be_bytes());
                    out.extend_from_slice(t.as_bytes());
                }
            }
        }
    }

    #[test]
    fn begin_and_commit() {
        let mut b = vec![b'B'];
        b.extend_from_slice(&0x1_0000_0028u64.to_be_bytes());
        b.extend_from_slice(&123_456i64.to_be_bytes());
        b.extend_from_slice(&742u32.to_be_bytes());
        assert_eq!(
            parse(&b).unwrap(),
            Message::Begin {
                final_lsn: 0x1_0000_0028,
                commit_time: 123_456,
                xid: 742
            }
        );
        let mut c = vec![b'C', 0];
        c.extend_from_slice(&10u64.to_be_bytes());
        c.extend_from_slice(&20u64.to_be_bytes());
        c.extend_from_slice(&(-5i64).to_be_bytes());
        assert_eq!(
            parse(&c).unwrap(),
            Message::Commit {
                commit_lsn: 10,
                end_lsn: 20,
                commit_time: -5
            }
        );
    }

    #[test]
    fn relation() {
        let mut m = vec![b'R'];
        m.extend_from_slice(&16_384u32.to_be_bytes());
        string(&mut m, "public");
        string(&mut m, "users");
        m.push(b'f');
        m.extend_from_slice(&2i16.to_be_bytes());
        m.push(1);
        string(&mut m, "id");
        m.extend_from_slice(&23u32.to_be_bytes());
        m.extend_from_slice(&(-1i32).to_be_bytes());
        m.push(0);
        string(&mut m, "name");
        m.extend_from_slice(&1043u32.to_be_bytes());
        m.extend_from_slice(&68i32.to_be_bytes());
        let Message::Relation {
            relid,
            namespace,
            name,
            replica_identity,
            columns,
        } = parse(&m).unwrap()
        else {
            panic!("not a relation");
        };
        assert_eq!(
            (relid, namespace.as_str(), name.as_str()),
            (16_384, "public", "users")
        );
        assert_eq!(replica_identity, b'f');
        assert_eq!(columns[0].name, "id");
        assert_eq!(columns[0].flags, 1);
        assert_eq!(columns[1].type_oid, 1043);
        assert_eq!(columns[1].type_modifier, 68);
    }

    #[test]
    fn insert_update_delete() {
        let mut i = vec![b'I'];
        i.extend_from_slice(&7u32.to_be_bytes());
        i.push(b'N');
        tuple(&mut i, &[Some("1"), None, Some("é")]);
        assert_eq!(
            parse(&i).unwrap(),
            Message::Insert {
                relid: 7,
                new: vec![Value::Text(b"1"), Value::Null, Value::Text("é".as_bytes())]
            }
        );

        let mut u = vec![b'U'];
        u.extend_from_slice(&7u32.to_be_bytes());
        u.push(b'O');
        tuple(&mut u, &[Some("1"), Some("a")]);
        u.push(b'N');
        u.extend_from_slice(&2i16.to_be_bytes());
        u.push(b'u');
        u.push(b'n');
        assert_eq!(
            parse(&u).unwrap(),
            Message::Update {
                relid: 7,
                old: Some(vec![Value::Text(b"1"), Value::Text(b"a")]),
                new: vec![Value::Unchanged, Value::Null]
            }
        );

        let mut plain = vec![b'U'];
        plain.extend_from_slice(&7u32.to_be_bytes());
        plain.push(b'N');
        tuple(&mut plain, &[Some("2")]);
        assert!(matches!(
            parse(&plain).unwrap(),
            Message::Update { old: None, .. }
        ));

        let mut d = vec![b'D'];
        d.extend_from_slice(&7u32.to_be_bytes());
        d.push(b'K');
        tuple(&mut d, &[Some("1")]);
        assert_eq!(
            parse(&d).unwrap(),
            Message::Delete {
                relid: 7,
                old: vec![Value::Text(b"1")]
            }
        );
    }

    #[test]
    fn damaged_messages_are_errors_not_panics() {
        let mut i = vec![b'I'];
        i.extend_from_slice(&7u32.to_be_bytes());
        i.push(b'N');
        tuple(&mut i, &[Some("12345")]);
        for cut in 0..i.len() {
            assert!(parse(&i[..cut]).is_err(), "cut at {cut}");
        }
        assert!(parse(b"Z").is_err());
        let mut bad_len = vec![b'I', 0, 0, 0, 7, b'N', 0, 1, b't'];
        bad_len.extend_from_slice(&(-3i32).to_be_bytes());
        assert!(parse(&bad_len).is_err());
        assert!(matches!(parse(b"Y").unwrap(), Message::Other(b'Y')));
    }
}
