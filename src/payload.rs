//! Payload shapes (SPEC §2): rownd and census, built from rows already converted to JSON with
//! PostgreSQL's own conversion. Pure Rust.

use crate::subscription::{Shape, TableShape};
use serde_json::{json, Map, Value};

pub type Row = Map<String, Value>;

pub const REDACTED: &str = "<<REDACTED>>";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

/// The change being captured: old row for update/delete, new row for insert/update.
pub struct Change<'a> {
    pub op: Op,
    pub old: Option<&'a Row>,
    pub new: Option<&'a Row>,
}

impl Change<'_> {
    /// The row whose values are sent: new for insert/update, old for delete.
    fn row(&self) -> &Row {
        self.new
            .or(self.old)
            .expect("a row change has at least one row")
    }
}

/// Transaction-level facts that go into `meta`.
pub struct Meta<'a> {
    pub id: &'a str,
    pub occurred_at: &'a str,
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
            let others_equal = new.iter().all(|(k, v)| k == vis || old.get(k) == Some(v));
            if others_equal && old.get(vis) != new.get(vis) {
                "visibility_update"
            } else {
                "data_update"
            }
        }
    }
}

fn hidden_fields(shape: &Shape, row: &Row) -> Vec<String> {
    let Some(vis) = &shape.visibility_column else {
        return Vec::new();
    };
    match row.get(vis) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// The selected, renamed fields of `row`, with redactions applied; and the redacted field names.
fn record(shape: &Shape, row: &Row) -> (Row, Vec<Value>) {
    let hidden = hidden_fields(shape, row);
    let mut data = Map::with_capacity(shape.fields.len());
    let mut redacted = Vec::new();
    for (col, field) in &shape.fields {
        let redact = shape.redact.contains(col) || hidden.contains(field) || hidden.contains(col);
        let value = if redact {
            redacted.push(Value::String(field.clone()));
            Value::String(REDACTED.to_string())
        } else {
            row.get(col).cloned().unwrap_or(Value::Null)
        };
        data.insert(field.clone(), value);
    }
    (data, redacted)
}

/// Only the key (lookup) columns, as a delete's `data`.
fn key_record(shape: &Shape, row: &Row) -> Row {
    shape
        .lookup
        .iter()
        .map(|(col, field)| (field.clone(), row.get(col).cloned().unwrap_or(Value::Null)))
        .collect()
}

fn lookup_values(shape: &Shape, row: &Row) -> Vec<Value> {
    shape
        .lookup
        .iter()
        .map(|(col, field)| json!({"field": field, "value": row.get(col).cloned().unwrap_or(Value::Null)}))
        .collect()
}

pub fn rownd(shape: &Shape, table: &TableShape, change: &Change, meta: &Meta) -> String {
    let row = change.row();
    let meta_obj = json!({
        "operation": operation(shape, change),
        "lookup_values": lookup_values(shape, row),
        "table": table.qualified_name,
        "id": meta.id,
        "occurred_at": meta.occurred_at,
    });
    let body = if change.op == Op::Delete {
        json!({"data": key_record(shape, row), "meta": meta_obj})
    } else {
        let (data, redacted) = record(shape, row);
        json!({"data": data, "redacted": redacted, "meta": meta_obj})
    };
    body.to_string()
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
    let (operation, data) = if change.op == Op::Delete {
        ("deleted", key_record(shape, row))
    } else {
        ("changed", record(shape, row).0)
    };
    json!({
        "api_version": 1,
        "operation": operation,
        "sync_run_at": meta.occurred_at,
        "connection_name": endpoint_name,
        "model_name": shape.name,
        "schema_name": table.schema,
        "table_name": table.table,
        "sync_configuration_id": subscription_id,
        "sync_configuration_name": Value::Null,
        "data": [data],
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::tests::{opts, users};
    use crate::subscription::Options;

    fn row(v: Value) -> Row {
        v.as_object().unwrap().clone()
    }

    const META: Meta = Meta {
        id: "7",
        occurred_at: "2026-01-01T00:00:00Z",
    };

    fn juliet() -> Row {
        row(
            json!({"user_id": "0e22", "email": "jrose@acme.com", "first_name": "Juliet", "hidden": null}),
        )
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
        let new = juliet();
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
        let old = juliet();
        let mut new = juliet();
        new.insert("hidden".into(), json!(["mail"]));
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

        let mut changed = new.clone();
        changed.insert("first_name".into(), json!("Jules"));
        let change = Change {
            op: Op::Update,
            old: Some(&old),
            new: Some(&changed),
        };
        assert_eq!(operation(&shape, &change), "data_update");
    }

    #[test]
    fn delete_sends_key_columns_and_no_redacted_key() {
        let shape = opts().resolve(&users()).unwrap();
        let old = juliet();
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
        let new = juliet();
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

    #[test]
    fn numbers_keep_their_exact_text() {
        let r: Row =
            serde_json::from_str(r#"{"user_id": 12345678901234567890.123456789}"#).unwrap();
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
