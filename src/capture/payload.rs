//! Payload shapes (SPEC §2): rownd and census, built from rows already converted to JSON with
//! PostgreSQL's own conversion. Column values are copied as PostgreSQL wrote them, never
//! reparsed, and the body is written straight into one buffer. Pure Rust.

use crate::subscription::{Shape, TableShape};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::HashMap;

pub const REDACTED: &str = "<<REDACTED>>";

/// A row as `row_to_json` wrote it: each column's JSON text, borrowed and unparsed.
#[derive(Debug, Default)]
pub struct Row<'a> {
    values: HashMap<Cow<'a, str>, &'a RawValue>,
}

impl<'a> Row<'a> {
    /// `json` is a JSON object of column name to value.
    pub fn parse(json: &'a str) -> serde_json::Result<Row<'a>> {
        serde_json::from_str(json)
    }

    fn get(&self, column: &str) -> Option<&'a RawValue> {
        self.values.get(column).copied()
    }

    /// The column's JSON text, `null` when absent.
    fn text(&self, column: &str) -> &'a str {
        self.get(column).map_or("null", RawValue::get)
    }
}

impl<'de> Deserialize<'de> for Row<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RowVisitor)
    }
}

struct RowVisitor;

impl<'de> Visitor<'de> for RowVisitor {
    type Value = Row<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object of column values")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Row<'de>, M::Error> {
        let mut values = HashMap::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(Column(name)) = map.next_key()? {
            values.insert(name, map.next_value::<&'de RawValue>()?);
        }
        Ok(Row { values })
    }
}

/// A column name: borrowed from the input unless it holds escapes.
struct Column<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Column<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Column<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a column name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Column<'de>, E> {
                Ok(Column(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Column<'de>, E> {
                Ok(Column(Cow::Owned(v.to_string())))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

/// The change being captured: old row for update/delete, new row for insert/update.
pub struct Change<'a> {
    pub op: Op,
    pub old: Option<&'a Row<'a>>,
    pub new: Option<&'a Row<'a>>,
}

impl<'a> Change<'a> {
    /// The row whose values are sent: new for insert/update, old for delete.
    fn row(&self) -> &'a Row<'a> {
        self.new
            .or(self.old)
            .expect("a row change has at least one row")
    }
}

/// The keys an ordered endpoint orders a change by (SPEC §7): the hash of the row's key (the
/// new row's; the old row's for a delete) and, for an UPDATE that changed the key, the hash of
/// the old key. FNV-1a over the key columns' JSON text, which is equal for equal values; a
/// collision only makes two keys wait for each other.
pub fn order_keys(shape: &Shape, change: &Change) -> (i64, Option<i64>) {
    let hash = |row: &Row| -> i64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (column, _) in &shape.key {
            // A NUL byte never occurs in JSON text: it separates the columns.
            for b in row.text(column).bytes().chain([0]) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h as i64
    };
    let key = hash(change.row());
    let old = match (change.op, change.old) {
        (Op::Update, Some(old)) => Some(hash(old)).filter(|k| *k != key),
        _ => None,
    };
    (key, old)
}

/// Transaction-level facts that go into `meta`.
pub struct Meta<'a> {
    pub id: &'a str,
    pub occurred_at: &'a str,
    /// The sync run a row is sent by (SPEC §6); None for a live change.
    pub sync_run_id: Option<i64>,
}

/// `meta.operation` for this change under this subscription.
pub fn operation(shape: &Shape, change: &Change) -> &'static str {
    match change.op {
        Op::Insert => "data_insert",
        Op::Delete => "delete",
        Op::Update => {
            let (Some(vis), Some(old), Some(new)) =
                (&shape.visibility_column, change.old, change.new)
            else {
                return "data_update";
            };
            // Both rows come from the same conversion, so equal values have equal text.
            let same = |column: &str| {
                old.get(column).map(RawValue::get) == new.get(column).map(RawValue::get)
            };
            let others_equal = new.values.keys().all(|k| k == vis || same(k));
            if others_equal && !same(vis) {
                "visibility_update"
            } else {
                "data_update"
            }
        }
    }
}

fn hidden_fields(shape: &Shape, row: &Row) -> Vec<String> {
    let Some(raw) = shape
        .visibility_column
        .as_deref()
        .and_then(|vis| row.get(vis))
    else {
        return Vec::new();
    };
    serde_json::from_str::<Vec<Option<String>>>(raw.get())
        .map(|items| items.into_iter().flatten().collect())
        .unwrap_or_default()
}

/// A JSON object being written into `out`.
struct Object<'w> {
    out: &'w mut Vec<u8>,
    empty: bool,
}

impl<'w> Object<'w> {
    fn open(out: &'w mut Vec<u8>) -> Object<'w> {
        out.push(b'{');
        Object { out, empty: true }
    }

    /// Write the key; the caller writes the value into the returned buffer.
    fn key(&mut self, key: &str) -> &mut Vec<u8> {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        string(self.out, key);
        self.out.push(b':');
        self.out
    }

    fn raw(&mut self, key: &str, json: &str) {
        self.key(key).extend_from_slice(json.as_bytes());
    }

    fn string(&mut self, key: &str, value: &str) {
        string(self.key(key), value);
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("writing JSON to memory cannot fail");
}

/// Is `col` (sent as `field`) redacted in `row`'s payload? Key columns never are: `watch`
/// refuses to redact them and a row's visibility column cannot hide them.
fn redacted_in(shape: &Shape, hidden: &[String], col: &str, field: &str) -> bool {
    shape.redact.iter().any(|c| c == col)
        || ((hidden.iter().any(|h| h == field || h == col))
            && !shape.key.iter().any(|(k, _)| k == col))
}

/// The fields of `shape` that differ between the old and the new row, in field order, judged
/// by `differs(column, field, redacted in old, redacted in new)`.
fn fields_where<'s>(
    shape: &'s Shape,
    old: &Row,
    new: &Row,
    differs: impl Fn(&str, bool, bool) -> bool,
) -> Vec<&'s str> {
    let (hidden_old, hidden_new) = (hidden_fields(shape, old), hidden_fields(shape, new));
    shape
        .fields
        .iter()
        .filter(|(col, field)| {
            differs(
                col,
                redacted_in(shape, &hidden_old, col, field),
                redacted_in(shape, &hidden_new, col, field),
            )
        })
        .map(|(_, field)| field.as_str())
        .collect()
}

/// `meta.changed_fields`: the sent fields whose value changed, or whose redaction did (a
/// redacted field's name is listed, never its value).
pub fn changed_fields<'s>(shape: &'s Shape, old: &Row, new: &Row) -> Vec<&'s str> {
    fields_where(shape, old, new, |col, was_redacted, is_redacted| {
        old.text(col) != new.text(col) || was_redacted != is_redacted
    })
}

/// Does any field's value as sent (after redaction) differ? What update_or_create and mirror
/// call "an update that changes a sent column".
fn sent_value_changed(shape: &Shape, old: &Row, new: &Row) -> bool {
    !fields_where(shape, old, new, |col, was_redacted, is_redacted| {
        match (was_redacted, is_redacted) {
            (true, true) => false,
            (false, false) => old.text(col) != new.text(col),
            _ => true,
        }
    })
    .is_empty()
}

/// Whether an UPDATE is sent under this subscription (SPEC §5 "changed": each column's
/// `to_jsonb` value, compared between the old and the new row). An UPDATE that changes no
/// column is never sent; a `visibility_update` always is; otherwise `changed` needs one of its
/// columns changed, and the behaviours update_or_create and mirror a sent value changed.
pub fn update_is_sent(shape: &Shape, old: &Row, new: &Row) -> bool {
    let differs = |col: &str| old.text(col) != new.text(col);
    let any_column = old
        .values
        .keys()
        .chain(new.values.keys())
        .any(|c| differs(c));
    if !any_column {
        return false;
    }
    let change = Change {
        op: Op::Update,
        old: Some(old),
        new: Some(new),
    };
    if operation(shape, &change) == "visibility_update" {
        return true;
    }
    if let Some(cols) = &shape.changed {
        if !cols.iter().any(|c| differs(c)) {
            return false;
        }
    }
    !shape.only_sent_changes || sent_value_changed(shape, old, new)
}

/// The selected, renamed fields of `row`, with redactions applied; returns the redacted names.
fn record<'s>(out: &mut Vec<u8>, shape: &'s Shape, row: &Row) -> Vec<&'s str> {
    let hidden = hidden_fields(shape, row);
    let mut redacted = Vec::new();
    let mut data = Object::open(out);
    for (col, field) in &shape.fields {
        if redacted_in(shape, &hidden, col, field) {
            redacted.push(field.as_str());
            data.string(field, REDACTED);
        } else {
            data.raw(field, row.text(col));
        }
    }
    data.close();
    redacted
}

/// Only the key columns (primary key, else lookup), as a delete's `data`.
fn key_record(out: &mut Vec<u8>, shape: &Shape, row: &Row) {
    let mut data = Object::open(out);
    for (col, field) in &shape.key {
        data.raw(field, row.text(col));
    }
    data.close();
}

fn lookup_values(out: &mut Vec<u8>, shape: &Shape, row: &Row) {
    out.push(b'[');
    for (i, (col, field)) in shape.lookup.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let mut item = Object::open(out);
        item.string("field", field);
        item.raw("value", row.text(col));
        item.close();
    }
    out.push(b']');
}

fn finish(out: Vec<u8>) -> String {
    String::from_utf8(out).expect("payload pieces are UTF-8")
}

pub fn rownd(shape: &Shape, table: &TableShape, change: &Change, meta: &Meta) -> String {
    let row = change.row();
    let mut out = Vec::with_capacity(256);
    let mut body = Object::open(&mut out);
    if change.op == Op::Delete {
        key_record(body.key("data"), shape, row);
    } else {
        let redacted = record(body.key("data"), shape, row);
        let list = body.key("redacted");
        serde_json::to_writer(list, &redacted).expect("writing JSON to memory cannot fail");
    }
    let mut m = Object::open(body.key("meta"));
    m.string("operation", operation(shape, change));
    lookup_values(m.key("lookup_values"), shape, row);
    m.string("table", &table.qualified_name);
    m.string("id", meta.id);
    m.string("occurred_at", meta.occurred_at);
    if let Some(run) = meta.sync_run_id {
        m.raw("sync_run_id", &run.to_string());
    }
    if let (Op::Update, Some(old), Some(new)) = (change.op, change.old, change.new) {
        let list = m.key("changed_fields");
        serde_json::to_writer(list, &changed_fields(shape, old, new))
            .expect("writing JSON to memory cannot fail");
    }
    m.close();
    body.close();
    finish(out)
}

/// Census batch envelope with this one record.
pub fn census(
    shape: &Shape,
    table: &TableShape,
    change: &Change,
    meta: &Meta,
    endpoint_name: &str,
    subscription_id: Option<i64>,
) -> String {
    let row = change.row();
    let mut out = Vec::with_capacity(256);
    let mut body = Object::open(&mut out);
    body.raw("api_version", "1");
    let deleted = change.op == Op::Delete;
    body.string("operation", if deleted { "deleted" } else { "changed" });
    body.string("sync_run_at", meta.occurred_at);
    body.string("connection_name", endpoint_name);
    body.string("model_name", &shape.name);
    body.string("schema_name", &table.schema);
    body.string("table_name", &table.table);
    match subscription_id {
        Some(id) => body.raw("sync_configuration_id", &id.to_string()),
        None => body.raw("sync_configuration_id", "null"),
    }
    body.raw("sync_configuration_name", "null");
    let data = body.key("data");
    data.push(b'[');
    if deleted {
        key_record(data, shape, row);
    } else {
        record(data, shape, row);
    }
    data.push(b']');
    body.close();
    finish(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::tests::{opts, users};
    use crate::subscription::Options;
    use serde_json::{json, Value};

    const META: Meta = Meta {
        id: "7",
        occurred_at: "2026-01-01T00:00:00Z",
        sync_run_id: None,
    };

    fn juliet() -> Value {
        json!({"user_id": "0e22", "email": "jrose@acme.com", "first_name": "Juliet", "hidden": null})
    }

    fn parse(s: String) -> Value {
        serde_json::from_str(&s).unwrap()
    }

    #[test]
    fn insert_matches_the_spec_shape() {
        let o = Options {
            lookup: Some(vec!["email".into()]),
            ..opts()
        };
        let shape = o.resolve(&users()).unwrap();
        let text = juliet().to_string();
        let new = Row::parse(&text).unwrap();
        let change = Change {
            op: Op::Insert,
            old: None,
            new: Some(&new),
        };
        assert_eq!(
            parse(rownd(&shape, &users(), &change, &META)),
            json!({
                "data": {"user_id": "0e22", "email": "jrose@acme.com", "first_name": "Juliet", "hidden": null},
                "redacted": [],
                "meta": {"operation": "data_insert",
                         "lookup_values": [{"field": "email", "value": "jrose@acme.com"}],
                         "table": "public.users", "id": "7", "occurred_at": "2026-01-01T00:00:00Z"}
            })
        );
    }

    #[test]
    fn visibility_column_redacts_hides_itself_and_classifies_updates() {
        let o = Options {
            visibility_column: Some("hidden".into()),
            redact: vec!["first_name".into()],
            rename: json!({"email": "mail"}),
            ..opts()
        };
        let shape = o.resolve(&users()).unwrap();
        let old_text = juliet().to_string();
        let old = Row::parse(&old_text).unwrap();
        let mut new_value = juliet();
        new_value["hidden"] = json!(["mail"]);
        let new_text = new_value.to_string();
        let new = Row::parse(&new_text).unwrap();
        let change = Change {
            op: Op::Update,
            old: Some(&old),
            new: Some(&new),
        };
        let body = parse(rownd(&shape, &users(), &change, &META));
        assert_eq!(body["meta"]["operation"], "visibility_update");
        assert_eq!(
            body["data"],
            json!({"user_id": "0e22", "mail": "<<REDACTED>>", "first_name": "<<REDACTED>>"})
        );
        assert_eq!(body["redacted"], json!(["mail", "first_name"]));

        new_value["first_name"] = json!("Jules");
        let changed_text = new_value.to_string();
        let changed = Row::parse(&changed_text).unwrap();
        let change = Change {
            op: Op::Update,
            old: Some(&old),
            new: Some(&changed),
        };
        assert_eq!(operation(&shape, &change), "data_update");
    }

    #[test]
    fn order_keys_follow_the_key_columns_only() {
        let shape = opts().resolve(&users()).unwrap();
        let a = Row::parse(r#"{"user_id": 1, "email": "a@x"}"#).unwrap();
        let a2 = Row::parse(r#"{"user_id": 1, "email": "b@x"}"#).unwrap();
        let b = Row::parse(r#"{"user_id": 2, "email": "a@x"}"#).unwrap();
        let insert = |r| Change {
            op: Op::Insert,
            old: None,
            new: Some(r),
        };
        let (ka, none) = order_keys(&shape, &insert(&a));
        assert_eq!(none, None);
        assert_eq!(order_keys(&shape, &insert(&a2)).0, ka);
        assert_ne!(order_keys(&shape, &insert(&b)).0, ka);
        let same_key = Change {
            op: Op::Update,
            old: Some(&a),
            new: Some(&a2),
        };
        assert_eq!(order_keys(&shape, &same_key), (ka, None));
        let moved = Change {
            op: Op::Update,
            old: Some(&a),
            new: Some(&b),
        };
        assert_eq!(
            order_keys(&shape, &moved),
            (order_keys(&shape, &insert(&b)).0, Some(ka))
        );
        let delete = Change {
            op: Op::Delete,
            old: Some(&b),
            new: None,
        };
        assert_eq!(
            order_keys(&shape, &delete),
            (order_keys(&shape, &insert(&b)).0, None)
        );
    }

    #[test]
    fn delete_sends_key_columns_and_no_redacted_key() {
        let shape = opts().resolve(&users()).unwrap();
        let text = juliet().to_string();
        let old = Row::parse(&text).unwrap();
        let change = Change {
            op: Op::Delete,
            old: Some(&old),
            new: None,
        };
        let body = parse(rownd(&shape, &users(), &change, &META));
        assert_eq!(body["data"], json!({"user_id": "0e22"}));
        assert!(body.get("redacted").is_none());
        assert_eq!(body["meta"]["operation"], "delete");
        assert_eq!(
            body["meta"]["lookup_values"],
            json!([{"field": "user_id", "value": "0e22"}])
        );
    }

    #[test]
    fn census_envelope() {
        let o = Options {
            columns: Some(vec!["email".into()]),
            name: Some("active users".into()),
            ..opts()
        };
        let shape = o.resolve(&users()).unwrap();
        let text = juliet().to_string();
        let new = Row::parse(&text).unwrap();
        let change = Change {
            op: Op::Insert,
            old: None,
            new: Some(&new),
        };
        let body = parse(census(
            &shape,
            &users(),
            &change,
            &META,
            "Webhook Test",
            Some(1234),
        ));
        assert_eq!(
            body,
            json!({"api_version": 1, "operation": "changed", "sync_run_at": "2026-01-01T00:00:00Z",
                   "connection_name": "Webhook Test", "model_name": "active users",
                   "schema_name": "public", "table_name": "users", "sync_configuration_id": 1234,
                   "sync_configuration_name": null, "data": [{"email": "jrose@acme.com"}]})
        );
    }

    fn update(old: &Value, new: &Value, o: Options) -> (bool, Vec<String>) {
        let shape = o.resolve(&users()).unwrap();
        let (old_text, new_text) = (old.to_string(), new.to_string());
        let (old, new) = (
            Row::parse(&old_text).unwrap(),
            Row::parse(&new_text).unwrap(),
        );
        let fields = changed_fields(&shape, &old, &new)
            .into_iter()
            .map(String::from)
            .collect();
        (update_is_sent(&shape, &old, &new), fields)
    }

    #[test]
    fn updates_are_sent_by_the_spec_rules_of_changed() {
        let old = juliet();
        let mut renamed = juliet();
        renamed["first_name"] = json!("Jules");
        let mut hidden = juliet();
        hidden["hidden"] = json!(["email"]);
        // Nothing changed: never sent, whatever the options.
        assert_eq!(update(&old, &old, opts()), (false, vec![]));
        // Any column changed: sent, and the changed field is listed.
        assert_eq!(
            update(&old, &renamed, opts()),
            (true, vec!["first_name".into()])
        );
        let only_email = || Options {
            changed: Some(vec!["email".into()]),
            visibility_column: Some("hidden".into()),
            ..opts()
        };
        assert!(!update(&old, &renamed, only_email()).0);
        // A visibility_update is always sent, and lists the field whose redaction changed.
        assert_eq!(
            update(&old, &hidden, only_email()),
            (true, vec!["email".into()])
        );
        // Behaviours: a change to a redacted column changes no sent value.
        let mirror = |redact: Vec<String>| Options {
            behavior: Some("mirror".into()),
            redact,
            ..opts()
        };
        assert!(update(&old, &renamed, mirror(vec![])).0);
        let (sent, fields) = update(&old, &renamed, mirror(vec!["first_name".into()]));
        assert!(!sent);
        assert_eq!(fields, vec!["first_name".to_string()]);
    }

    #[test]
    fn names_and_values_with_escapes_round_trip() {
        let table = TableShape {
            qualified_name: "public.odd".into(),
            schema: "public".into(),
            table: "odd".into(),
            columns: vec![("a\"b\\c".into(), false), ("id".into(), false)],
            primary_key: vec!["id".into()],
        };
        let shape = Options {
            rename: json!({"id": "key\u{e9}\n"}),
            ..opts()
        }
        .resolve(&table)
        .unwrap();
        let text = json!({"a\"b\\c": "line\nbreak \"quoted\" \u{1f600}", "id": [1, {"x": null}]})
            .to_string();
        let row = Row::parse(&text).unwrap();
        let change = Change {
            op: Op::Insert,
            old: None,
            new: Some(&row),
        };
        let body = parse(rownd(&shape, &table, &change, &META));
        assert_eq!(
            body["data"],
            json!({"a\"b\\c": "line\nbreak \"quoted\" \u{1f600}", "key\u{e9}\n": [1, {"x": null}]})
        );
        assert_eq!(
            body["meta"]["lookup_values"],
            json!([{"field": "key\u{e9}\n", "value": [1, {"x": null}]}])
        );
    }

    #[test]
    fn numbers_keep_their_exact_text() {
        let r = Row::parse(r#"{"user_id": 12345678901234567890.123456789}"#).unwrap();
        let shape = Options {
            columns: Some(vec!["user_id".into()]),
            ..opts()
        }
        .resolve(&users())
        .unwrap();
        let change = Change {
            op: Op::Insert,
            old: None,
            new: Some(&r),
        };
        assert!(rownd(&shape, &users(), &change, &META).contains("12345678901234567890.123456789"));
    }
}
