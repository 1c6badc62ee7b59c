//! Subscription options (what `watch` accepts) validated against a table's shape. Pure Rust.

use crate::error::{Result, WebhookError};
use serde_json::Value;

/// The columns of a watched table, as capture and validation need them.
#[derive(Debug, Clone, PartialEq)]
pub struct TableShape {
    /// `schema.table`, as sent in `meta.table`.
    pub qualified_name: String,
    pub schema: String,
    pub table: String,
    /// Live columns in attribute order, with whether each is `text[]`.
    pub columns: Vec<(String, bool)>,
    pub primary_key: Vec<String>,
}

impl TableShape {
    fn has(&self, column: &str) -> bool {
        self.columns.iter().any(|(c, _)| c == column)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Events {
    pub insert: bool,
    pub update: bool,
    pub delete: bool,
}

impl Events {
    pub const ALL: Events = Events {
        insert: true,
        update: true,
        delete: true,
    };

    pub fn parse(list: &[String]) -> Result<Events> {
        if list.is_empty() {
            return Err(WebhookError::invalid(
                "events must name at least one of insert, update, delete",
            ));
        }
        let mut events = Events::default();
        for e in list {
            match e.to_ascii_lowercase().as_str() {
                "insert" => events.insert = true,
                "update" => events.update = true,
                "delete" => events.delete = true,
                _ => {
                    return Err(WebhookError::invalid(format!(
                        "unknown event \"{e}\": accepted events are insert, update, delete"
                    )))
                }
            }
        }
        Ok(events)
    }

    pub fn to_list(self) -> Vec<String> {
        [
            ("insert", self.insert),
            ("update", self.update),
            ("delete", self.delete),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| n.to_string())
        .collect()
    }
}

/// The Census destination's sync behaviours (SPEC §2), an alternative to naming `events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// Inserts only.
    Append,
    /// Inserts, and updates that change a sent value.
    UpdateOrCreate,
    /// Inserts, updates that change a sent value, and deletes.
    Mirror,
}

impl Behavior {
    pub fn parse(name: &str) -> Result<Behavior> {
        match name {
            "append" => Ok(Behavior::Append),
            "update_or_create" => Ok(Behavior::UpdateOrCreate),
            "mirror" => Ok(Behavior::Mirror),
            _ => Err(WebhookError::invalid(format!(
                "unknown behavior \"{name}\": accepted behaviors are append, update_or_create, mirror"
            ))),
        }
    }

    pub fn events(self) -> Events {
        Events {
            insert: true,
            update: self != Behavior::Append,
            delete: self == Behavior::Mirror,
        }
    }
}

/// Options as stored in `webhook.subscription` (NULL columns/lookup mean "all" / "primary key").
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Options {
    /// None: every event, or those of `behavior`.
    pub events: Option<Vec<String>>,
    pub behavior: Option<String>,
    /// UPDATEs are sent only when one of these columns changed (None: any column).
    pub changed: Option<Vec<String>>,
    pub columns: Option<Vec<String>>,
    pub rename: Value,
    pub redact: Vec<String>,
    pub lookup: Option<Vec<String>>,
    pub visibility_column: Option<String>,
    pub name: Option<String>,
}

/// A subscription ready for capture: every name checked against the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub events: Events,
    /// An UPDATE is sent only if a sent field changed (behaviours update_or_create, mirror).
    pub only_sent_changes: bool,
    /// An UPDATE is sent only if one of these columns changed (the `changed` option).
    pub changed: Option<Vec<String>>,
    /// The row's key: primary-key columns, or the lookup columns when there is no primary key,
    /// with their field names (a delete's `data`).
    pub key: Vec<(String, String)>,
    /// Selected columns in table order, with the payload field name of each.
    pub fields: Vec<(String, String)>,
    pub redact: Vec<String>,
    /// Lookup (key) columns with their field names, in the order given.
    pub lookup: Vec<(String, String)>,
    pub visibility_column: Option<String>,
    /// Subscription name (census `model_name`); defaults to `schema.table`.
    pub name: String,
}

fn check_columns(table: &TableShape, option: &'static str, cols: &[String]) -> Result<()> {
    for c in cols {
        if !table.has(c) {
            return Err(WebhookError::UnknownColumn {
                option,
                column: c.clone(),
                table: table.qualified_name.clone(),
            });
        }
    }
    Ok(())
}

impl Options {
    /// Validate against the table and resolve defaults.
    pub fn resolve(&self, table: &TableShape) -> Result<Shape> {
        let behavior = self.behavior.as_deref().map(Behavior::parse).transpose()?;
        let events = match (&self.events, behavior) {
            (Some(_), Some(_)) => {
                return Err(WebhookError::invalid(
                    "events and behavior are alternatives: name one of them, not both",
                ))
            }
            (Some(list), None) => Events::parse(list)?,
            (None, Some(b)) => b.events(),
            (None, None) => Events::ALL,
        };
        if let Some(cols) = &self.changed {
            if cols.is_empty() {
                return Err(WebhookError::invalid(
                    "changed must name at least one column, or be NULL for any column",
                ));
            }
            check_columns(table, "changed", cols)?;
        }
        if let Some(cols) = &self.columns {
            if cols.is_empty() {
                return Err(WebhookError::invalid(
                    "columns must name at least one column, or be NULL for every column",
                ));
            }
            check_columns(table, "columns", cols)?;
        }
        let Value::Object(rename) = &self.rename else {
            return Err(WebhookError::invalid(format!(
                "rename must be a JSON object of {{\"column\": \"field\"}} pairs; got {}",
                self.rename
            )));
        };
        let mut renames = Vec::new();
        for (col, target) in rename {
            check_columns(table, "rename", std::slice::from_ref(col))?;
            let Value::String(target) = target else {
                return Err(WebhookError::invalid(format!(
                    "rename target for column \"{col}\" must be a string; got {target}"
                )));
            };
            if target.is_empty() {
                return Err(WebhookError::invalid(format!(
                    "rename target for column \"{col}\" must not be empty"
                )));
            }
            renames.push((col.clone(), target.clone()));
        }
        check_columns(table, "redact", &self.redact)?;
        let visibility_column = match &self.visibility_column {
            None => None,
            Some(v) => {
                check_columns(table, "visibility_column", std::slice::from_ref(v))?;
                let is_text_array = table.columns.iter().any(|(c, t)| c == v && *t);
                if !is_text_array {
                    return Err(WebhookError::invalid(format!(
                        "visibility column \"{v}\" of table {} must be of type text[]",
                        table.qualified_name
                    )));
                }
                Some(v.clone())
            }
        };
        let field_of = |col: &str| -> String {
            renames
                .iter()
                .find(|(c, _)| c == col)
                .map_or(col.to_string(), |(_, t)| t.clone())
        };
        let fields: Vec<(String, String)> = table
            .columns
            .iter()
            .map(|(c, _)| c)
            .filter(|c| self.columns.as_ref().is_none_or(|sel| sel.contains(c)))
            .filter(|c| visibility_column.as_deref() != Some(c.as_str()))
            .map(|c| (c.clone(), field_of(c)))
            .collect();
        for (i, (col, field)) in fields.iter().enumerate() {
            if let Some((other, _)) = fields[..i].iter().find(|(_, f)| f == field) {
                return Err(WebhookError::invalid(format!(
                    "rename gives columns \"{other}\" and \"{col}\" the same field name \"{field}\""
                )));
            }
        }
        let lookup_cols = match &self.lookup {
            Some(cols) if cols.is_empty() => {
                return Err(WebhookError::invalid(
                    "lookup must name at least one column, or be NULL for the primary key",
                ))
            }
            Some(cols) => {
                check_columns(table, "lookup", cols)?;
                cols.clone()
            }
            None if table.primary_key.is_empty() => {
                return Err(WebhookError::NoKey(table.qualified_name.clone()))
            }
            None => table.primary_key.clone(),
        };
        if let Some(c) = lookup_cols.iter().find(|c| self.redact.contains(c)) {
            return Err(WebhookError::invalid(format!(
                "column \"{c}\" is both a lookup column and redacted; lookup values are sent in clear"
            )));
        }
        if let Some(c) = table.primary_key.iter().find(|c| self.redact.contains(c)) {
            return Err(WebhookError::invalid(format!(
                "column \"{c}\" is part of the primary key of {} and cannot be redacted; key columns identify the row in every payload",
                table.qualified_name
            )));
        }
        if let Some(v) = visibility_column
            .as_ref()
            .filter(|v| lookup_cols.contains(v))
        {
            return Err(WebhookError::invalid(format!(
                "visibility column \"{v}\" cannot be a lookup column: the visibility column is never sent"
            )));
        }
        let key_cols = if table.primary_key.is_empty() {
            &lookup_cols
        } else {
            &table.primary_key
        };
        let name = match &self.name {
            Some(n) if n.trim().is_empty() => {
                return Err(WebhookError::invalid("subscription name must not be empty"))
            }
            Some(n) => n.clone(),
            None => table.qualified_name.clone(),
        };
        Ok(Shape {
            events,
            only_sent_changes: matches!(
                behavior,
                Some(Behavior::UpdateOrCreate | Behavior::Mirror)
            ),
            changed: self.changed.clone(),
            key: key_cols.iter().map(|c| (c.clone(), field_of(c))).collect(),
            lookup: lookup_cols
                .iter()
                .map(|c| (c.clone(), field_of(c)))
                .collect(),
            fields,
            redact: self.redact.clone(),
            visibility_column,
            name,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub fn users() -> TableShape {
        TableShape {
            qualified_name: "public.users".into(),
            schema: "public".into(),
            table: "users".into(),
            columns: vec![
                ("user_id".into(), false),
                ("email".into(), false),
                ("first_name".into(), false),
                ("hidden".into(), true),
            ],
            primary_key: vec!["user_id".into()],
        }
    }

    pub fn opts() -> Options {
        Options {
            rename: json!({}),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_select_every_column_and_primary_key() {
        let s = opts().resolve(&users()).unwrap();
        assert_eq!(s.fields.len(), 4);
        assert_eq!(
            s.lookup,
            vec![("user_id".to_string(), "user_id".to_string())]
        );
        assert_eq!(s.name, "public.users");
    }

    #[test]
    fn behaviors_choose_events_and_the_update_rule() {
        let with = |b: &str| {
            Options {
                behavior: Some(b.into()),
                ..opts()
            }
            .resolve(&users())
            .unwrap()
        };
        let append = with("append");
        assert_eq!(append.events.to_list(), vec!["insert"]);
        let upsert = with("update_or_create");
        assert_eq!(upsert.events.to_list(), vec!["insert", "update"]);
        assert!(upsert.only_sent_changes);
        let mirror = with("mirror");
        assert_eq!(mirror.events, Events::ALL);
        assert!(mirror.only_sent_changes);
        let plain = opts().resolve(&users()).unwrap();
        assert_eq!(plain.events, Events::ALL);
        assert!(!plain.only_sent_changes);
    }

    #[test]
    fn delete_key_is_the_primary_key_even_with_other_lookup_columns() {
        let o = Options {
            lookup: Some(vec!["email".into()]),
            rename: json!({"user_id": "id"}),
            ..opts()
        };
        let s = o.resolve(&users()).unwrap();
        assert_eq!(s.key, vec![("user_id".to_string(), "id".to_string())]);
        let mut no_pk = users();
        no_pk.primary_key.clear();
        let s = o.resolve(&no_pk).unwrap();
        assert_eq!(s.key, vec![("email".to_string(), "email".to_string())]);
    }

    #[test]
    fn rename_applies_to_fields_and_lookup() {
        let o = Options {
            rename: json!({"user_id": "id"}),
            ..opts()
        };
        let s = o.resolve(&users()).unwrap();
        assert_eq!(s.fields[0], ("user_id".into(), "id".into()));
        assert_eq!(s.lookup, vec![("user_id".to_string(), "id".to_string())]);
    }

    #[test]
    fn bad_options_name_the_bad_value() {
        let cases: Vec<(Options, &str)> = vec![
            (
                Options {
                    events: Some(vec!["truncate".into()]),
                    ..opts()
                },
                "\"truncate\"",
            ),
            (
                Options {
                    columns: Some(vec!["nope".into()]),
                    ..opts()
                },
                "\"nope\"",
            ),
            (
                Options {
                    rename: json!({"nope": "x"}),
                    ..opts()
                },
                "\"nope\"",
            ),
            (
                Options {
                    rename: json!({"email": "first_name"}),
                    ..opts()
                },
                "\"first_name\"",
            ),
            (
                Options {
                    rename: json!([]),
                    ..opts()
                },
                "rename must be a JSON object",
            ),
            (
                Options {
                    redact: vec!["nope".into()],
                    ..opts()
                },
                "\"nope\"",
            ),
            (
                Options {
                    lookup: Some(vec!["nope".into()]),
                    ..opts()
                },
                "\"nope\"",
            ),
            (
                Options {
                    visibility_column: Some("email".into()),
                    ..opts()
                },
                "text[]",
            ),
            (
                Options {
                    visibility_column: Some("nope".into()),
                    ..opts()
                },
                "\"nope\"",
            ),
            (
                Options {
                    redact: vec!["user_id".into()],
                    ..opts()
                },
                "\"user_id\"",
            ),
            (
                Options {
                    lookup: Some(vec!["email".into()]),
                    redact: vec!["user_id".into()],
                    ..opts()
                },
                "part of the primary key",
            ),
            (
                Options {
                    lookup: Some(vec!["hidden".into()]),
                    visibility_column: Some("hidden".into()),
                    ..opts()
                },
                "visibility column \"hidden\" cannot be a lookup column",
            ),
            (
                Options {
                    changed: Some(vec!["nope".into()]),
                    ..opts()
                },
                "\"nope\" named in changed",
            ),
            (
                Options {
                    changed: Some(vec![]),
                    ..opts()
                },
                "changed must name at least one column",
            ),
            (
                Options {
                    behavior: Some("upsert".into()),
                    ..opts()
                },
                "unknown behavior \"upsert\"",
            ),
            (
                Options {
                    behavior: Some("mirror".into()),
                    events: Some(vec!["insert".into()]),
                    ..opts()
                },
                "events and behavior are alternatives",
            ),
        ];
        for (o, needle) in cases {
            let err = o.resolve(&users()).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should contain {needle}");
        }
        let mut no_pk = users();
        no_pk.primary_key.clear();
        assert!(matches!(
            opts().resolve(&no_pk),
            Err(WebhookError::NoKey(_))
        ));
        let with_lookup = Options {
            lookup: Some(vec!["email".into()]),
            ..opts()
        };
        assert!(with_lookup.resolve(&no_pk).is_ok());
    }
}
