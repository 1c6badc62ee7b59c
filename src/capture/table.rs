//! Catalog look-ups of a watched table's shape (columns, primary key).

use crate::error::{Result, WebhookError};
use crate::subscription::TableShape;
use pgrx::prelude::*;

/// Queries run with the caller's search_path in triggers, so every operator is qualified.
const TABLE_SQL: &str = "SELECT n.nspname::pg_catalog.text, c.relname::pg_catalog.text, c.relkind::pg_catalog.text
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
    WHERE c.oid OPERATOR(pg_catalog.=) $1";
const COLUMNS_SQL: &str = "SELECT a.attname::pg_catalog.text,
        a.atttypid OPERATOR(pg_catalog.=) 'pg_catalog._text'::pg_catalog.regtype
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
    ORDER BY a.attnum";
const PRIMARY_KEY_SQL: &str = "SELECT a.attname::pg_catalog.text
    FROM pg_catalog.pg_index i
    CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid
                                  AND a.attnum OPERATOR(pg_catalog.=) k.attnum
    WHERE i.indrelid OPERATOR(pg_catalog.=) $1 AND i.indisprimary
    ORDER BY k.ord";

pub fn load(relid: pg_sys::Oid) -> Result<TableShape> {
    Spi::connect(|client| {
        let found = client
            .select(TABLE_SQL, None, &[relid.into()])
            .expect("pg_class look-up");
        let Some(row) = found.into_iter().next() else {
            return Err(WebhookError::invalid(format!(
                "relation with OID {} does not exist",
                relid.to_u32()
            )));
        };
        let schema: String = row.get(1).expect("nspname").unwrap_or_default();
        let table: String = row.get(2).expect("relname").unwrap_or_default();
        let kind: String = row.get(3).expect("relkind").unwrap_or_default();
        let qualified_name = format!("{schema}.{table}");
        if kind != "r" {
            return Err(WebhookError::invalid(format!(
                "{qualified_name} is not a plain table; only ordinary tables can be watched (for a partitioned table, watch each partition)"
            )));
        }
        let columns = client
            .select(COLUMNS_SQL, None, &[relid.into()])
            .expect("pg_attribute look-up")
            .map(|r| {
                let name: String = r.get(1).expect("attname").unwrap_or_default();
                let is_text_array: bool = r.get(2).expect("atttypid").unwrap_or(false);
                (name, is_text_array)
            })
            .collect();
        let primary_key = client
            .select(PRIMARY_KEY_SQL, None, &[relid.into()])
            .expect("pg_index look-up")
            .map(|r| r.get::<String>(1).expect("attname").unwrap_or_default())
            .collect();
        Ok(TableShape {
            qualified_name,
            schema,
            table,
            columns,
            primary_key,
        })
    })
}
