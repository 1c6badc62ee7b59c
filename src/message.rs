//! Messages, the unit a receiver sees (one request, one `webhook-id`, SPEC §2-§3): their ids,
//! and how census changes are grouped into batches and their bodies assembled. Pure Rust.
//!
//! A rownd change is one message, whose id capture assigns. Census changes are queued one row
//! each; the worker groups due ones into messages when it claims them (`worker::claim`), so a
//! batch never waits to fill: what is due is sent now.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::cell::RefCell;

pub const ID_PREFIX: &str = "msg_";
/// Length of an id: the prefix and 128 bits as two 11-character base62 halves.
pub const ID_LEN: usize = ID_PREFIX.len() + 2 * HALF_LEN;
const HALF_LEN: usize = 11; // 62^11 > 2^64
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Message ids of one process: a random 96-bit prefix drawn from the OS CSPRNG when the process
/// first needs an id, then a 32-bit counter; the prefix is drawn again when the counter wraps.
/// Two processes (of any database, server or install) share a prefix with probability about
/// n²/2^97 for n processes, so ids never repeat in practice, and each id costs an increment and
/// its encoding, not a system call.
pub struct Generator {
    high: u64,
    low: u32,
    counter: u32,
}

impl Generator {
    pub fn seeded() -> Generator {
        let mut seed = [0u8; 12];
        getrandom::fill(&mut seed).expect("the operating system's random source failed");
        let (high, low) = seed.split_at(8);
        Generator {
            high: u64::from_le_bytes(high.try_into().expect("8 bytes")),
            low: u32::from_le_bytes(low.try_into().expect("4 bytes")),
            counter: 0,
        }
    }

    pub fn next_id(&mut self) -> String {
        if self.counter == u32::MAX {
            *self = Generator::seeded();
        }
        self.counter += 1;
        let mut id = String::with_capacity(ID_LEN);
        id.push_str(ID_PREFIX);
        push_base62(&mut id, self.high);
        push_base62(
            &mut id,
            (u64::from(self.low) << 32) | u64::from(self.counter),
        );
        id
    }
}

fn push_base62(out: &mut String, mut n: u64) {
    let mut digits = [b'0'; HALF_LEN];
    for d in digits.iter_mut().rev() {
        *d = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out.push_str(std::str::from_utf8(&digits).expect("base62 digits are ASCII"));
}

thread_local! {
    // Seeded on first use, in the process that uses it: the postmaster never makes ids, so
    // forked backends and workers never share a prefix.
    static GENERATOR: RefCell<Option<Generator>> = const { RefCell::new(None) };
}

/// A new message id, `msg_` + 22 base62 characters, unique across processes and servers.
pub fn new_id() -> String {
    GENERATOR.with(|g| {
        g.borrow_mut()
            .get_or_insert_with(Generator::seeded)
            .next_id()
    })
}

/// Changes of one stream (subscription, table and sync run: live changes have none) may share a
/// message; changes of different streams never do.
pub type Stream<'a> = (Option<i64>, Option<&'a str>, Option<i64>);

/// A census change queued without a message yet, as the claim returned it.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    pub stream: Stream<'a>,
    pub id: i64,
    /// The single-record census envelope capture queued.
    pub payload: &'a str,
}

/// One message to form: indexes into the changes given to [`plan`], in capture order.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub members: Vec<usize>,
    /// The census envelope operation (`changed`, `deleted`).
    pub operation: String,
    pub body: String,
}

/// A stored census envelope: its keys in order, each value's JSON text.
struct Envelope<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Envelope<'a> {
    fn parse(json: &'a str) -> Option<Envelope<'a>> {
        let envelope: Envelope = serde_json::from_str(json).ok()?;
        envelope.get("data")?;
        Some(envelope)
    }

    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    fn operation(&self) -> Option<String> {
        serde_json::from_str(self.get("operation")?.get()).ok()
    }

    fn records(&self) -> Vec<&'a RawValue> {
        self.get("data")
            .and_then(|d| serde_json::from_str(d.get()).ok())
            .unwrap_or_default()
    }
}

impl<'de> Deserialize<'de> for Envelope<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EnvelopeVisitor;
        impl<'de> Visitor<'de> for EnvelopeVisitor {
            type Value = Envelope<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a census envelope")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Envelope<'de>, M::Error> {
                let mut keys = Vec::with_capacity(12);
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    keys.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(Envelope(keys))
            }
        }
        deserializer.deserialize_map(EnvelopeVisitor)
    }
}

/// The body of a message holding `envelopes`: the first envelope's keys and values (its
/// `sync_run_at` is the first record's), with `data` holding every envelope's records in order.
fn batch_body(envelopes: &[&Envelope]) -> String {
    let first = envelopes[0];
    let size: usize = first
        .0
        .iter()
        .map(|(k, v)| k.len() + v.get().len() + 4)
        .sum();
    let mut out = Vec::with_capacity(size + envelopes.len() * 64);
    out.push(b'{');
    for (i, (key, value)) in first.0.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, key.as_ref()).expect("writing JSON to memory cannot fail");
        out.push(b':');
        if key == "data" {
            out.push(b'[');
            let records = envelopes.iter().flat_map(|e| e.records());
            for (n, record) in records.enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(record.get().as_bytes());
            }
            out.push(b']');
        } else {
            out.extend_from_slice(value.get().as_bytes());
        }
    }
    out.push(b'}');
    String::from_utf8(out).expect("JSON pieces are UTF-8")
}

/// Group `changes` (one endpoint's, in claim order) into at most `budget` messages of at most
/// `batch_size` records: per stream, in capture (id) order, consecutive changes with the same
/// envelope operation. Streams are taken in the order their first change was claimed; the
/// changes left out stay queued for the next claim. A payload that is not a census envelope
/// (none is, unless the queue was edited by hand) is sent alone, as it is.
pub fn plan(changes: &[Change], batch_size: usize, budget: usize) -> Vec<Planned> {
    /// A stream's key, as in `Change::stream`.
    type Stream<'a> = (Option<i64>, Option<&'a str>, Option<i64>);
    let batch_size = batch_size.max(1);
    let mut streams: Vec<(&Stream, Vec<usize>)> = Vec::new();
    for (i, c) in changes.iter().enumerate() {
        match streams.iter_mut().find(|(s, _)| **s == c.stream) {
            Some((_, members)) => members.push(i),
            None => streams.push((&c.stream, vec![i])),
        }
    }
    let mut planned = Vec::new();
    for (_, mut members) in streams {
        members.sort_by_key(|&i| changes[i].id);
        let parsed: Vec<Option<Envelope>> = members
            .iter()
            .map(|&i| Envelope::parse(changes[i].payload))
            .collect();
        let mut start = 0;
        while start < members.len() {
            if planned.len() == budget {
                return planned;
            }
            let Some(head) = &parsed[start] else {
                planned.push(Planned {
                    members: vec![members[start]],
                    operation: "changed".into(),
                    body: changes[members[start]].payload.to_string(),
                });
                start += 1;
                continue;
            };
            let operation = head.operation().unwrap_or_else(|| "changed".into());
            let mut end = start + 1;
            while end < members.len()
                && end - start < batch_size
                && parsed[end]
                    .as_ref()
                    .is_some_and(|e| e.operation().as_deref() == Some(operation.as_str()))
            {
                end += 1;
            }
            let envelopes: Vec<&Envelope> = parsed[start..end].iter().flatten().collect();
            planned.push(Planned {
                members: members[start..end].to_vec(),
                operation,
                body: batch_body(&envelopes),
            });
            start = end;
        }
    }
    planned
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::collections::HashSet;

    #[test]
    fn ids_have_the_documented_form_and_never_repeat() {
        let mut seen = HashSet::new();
        for _ in 0..100_000 {
            let id = new_id();
            assert_eq!(id.len(), ID_LEN, "{id}");
            assert!(id.starts_with("msg_"), "{id}");
            assert!(id[4..].bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn two_processes_draw_different_prefixes() {
        // A fresh generator stands for another backend, database, server or install.
        let a = Generator::seeded().next_id();
        let b = Generator::seeded().next_id();
        assert_ne!(a[..4 + HALF_LEN], b[..4 + HALF_LEN]);
        assert_ne!(a, b);
    }

    #[test]
    fn a_wrapping_counter_draws_a_new_prefix() {
        let mut g = Generator::seeded();
        let first = g.next_id();
        g.counter = u32::MAX;
        let after = g.next_id();
        assert_ne!(first[..4 + HALF_LEN], after[..4 + HALF_LEN]);
        assert_eq!(g.counter, 1);
    }

    #[test]
    fn base62_halves_are_fixed_width_and_ordered() {
        let mut s = String::new();
        push_base62(&mut s, 0);
        assert_eq!(s, "00000000000");
        s.clear();
        push_base62(&mut s, u64::MAX);
        assert_eq!(s, "LygHa16AHYF");
    }

    fn envelope(op: &str, at: &str, record: Value) -> String {
        // As payload::census writes it.
        serde_json::to_string(&json!({
            "api_version": 1, "operation": op, "sync_run_at": at, "connection_name": "Webhook Test",
            "model_name": "active users", "schema_name": "public", "table_name": "users",
            "sync_configuration_id": 1234, "sync_configuration_name": null, "data": [record]}))
        .unwrap()
    }

    fn change(stream: i64, id: i64, payload: &str) -> Change<'_> {
        Change {
            stream: (Some(stream), Some("public.users"), None),
            id,
            payload,
        }
    }

    #[test]
    fn consecutive_changes_of_a_stream_share_a_message_in_capture_order() {
        let p: Vec<String> = [
            ("changed", "T1", json!({"id": 1})),
            ("changed", "T2", json!({"id": 2})),
            ("deleted", "T3", json!({"id": 1})),
            ("changed", "T4", json!({"id": 3})),
            ("changed", "T5", json!({"id": 4})),
        ]
        .into_iter()
        .map(|(op, at, r)| envelope(op, at, r))
        .collect();
        // Claimed out of id order (a long transaction), with another stream in between.
        let changes = vec![
            change(7, 11, &p[1]),
            change(7, 10, &p[0]),
            change(8, 12, &p[3]),
            change(7, 13, &p[2]),
            change(7, 14, &p[4]),
        ];
        let planned = plan(&changes, 100, 100);
        let members: Vec<Vec<usize>> = planned.iter().map(|m| m.members.clone()).collect();
        assert_eq!(members, vec![vec![1, 0], vec![3], vec![4], vec![2]]);
        let first: Value = serde_json::from_str(&planned[0].body).unwrap();
        assert_eq!(first["data"], json!([{"id": 1}, {"id": 2}]));
        assert_eq!(first["sync_run_at"], "T1");
        assert_eq!(planned[1].operation, "deleted");
        // The envelope keeps the stored key order, with data last.
        assert!(planned[0]
            .body
            .starts_with(r#"{"api_version":1,"operation":"changed","sync_run_at":"T1","#));
        assert!(planned[0].body.ends_with(r#""data":[{"id":1},{"id":2}]}"#));
    }

    #[test]
    fn batch_size_and_budget_bound_the_messages() {
        let p: Vec<String> = (0..7)
            .map(|i| envelope("changed", "T", json!({ "id": i })))
            .collect();
        let changes: Vec<Change> = p
            .iter()
            .enumerate()
            .map(|(i, s)| change(1, i as i64, s))
            .collect();
        let sizes: Vec<usize> = plan(&changes, 3, 100)
            .iter()
            .map(|m| m.members.len())
            .collect();
        assert_eq!(sizes, vec![3, 3, 1]);
        let limited = plan(&changes, 3, 2);
        assert_eq!(limited.len(), 2);
        assert_eq!(limited[1].members, vec![3, 4, 5]);
        assert_eq!(plan(&changes, 3, 0), vec![]);
    }

    #[test]
    fn a_payload_that_is_no_envelope_is_sent_alone_as_it_is() {
        let good = envelope("changed", "T", json!({"id": 1}));
        let changes = vec![change(1, 1, "not json"), change(1, 2, &good)];
        let planned = plan(&changes, 100, 100);
        assert_eq!(planned.len(), 2);
        assert_eq!(planned[0].body, "not json");
        assert_eq!(planned[1].body, good);
    }
}
