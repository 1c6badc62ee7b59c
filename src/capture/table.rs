//! Catalog look-ups of a watched table's shape (columns, primary key).

use crate::error::{not_null, Result, WebhookError};
use crate::subscription::TableShape;
use pgrx::prelude::*;

/// Queries run with the caller's search_path in triggers, so every operator is qualified.
const TABLE_SQL: &str = "SELECT n.nspname::pg_catalog.text AS schema, c.relname::pg_catalog.text AS name,
        c.relkind::pg_catalog.text AS kind
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
    WHERE c.oid OPERATOR(pg_catalog.=) $1";
const COLUMNS_SQL: &str = "SELECT a.attname::pg_catalog.text AS name,
        a.atttypid OPERATOR(pg_catalog.=) 'pg_catalog._text'::pg_catalog.regtype AS is_text_array
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
    ORDER BY a.attnum";
const PRIMARY_KEY_SQL: &str = "SELECT a.attname::pg_catalog.text AS name
    FROM pg_catalog.pg_index i
    CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid
                                  AND a.attnum OPERATOR(pg_catalog.=) k.attnum
    WHERE i.indrelid OPERATOR(pg_catalog.=) $1 AND i.indisprimary
    ORDER BY k.ord";

/// The shape of the table `relid`: its name, live columns and primary key.
pub fn load(relid: pg_sys::Oid) -> Result<TableShape> {
    Spi::connect(|client| {
        let found = client.select(TABLE_SQL, None, &[relid.into()])?;
        let Some(row) = found.into_iter().next() else {
            return Err(WebhookError::invalid(format!(
                "relation with OID {} does not exist",
                relid.to_u32()
            )));
        };
        let schema: String = not_null(&row, "schema")?;
        let table: String = not_null(&row, "name")?;
        let kind: String = not_null(&row, "kind")?;
        let qualified_name = format!("{schema}.{table}");
        if kind != "r" {
            return Err(WebhookError::invalid(format!(
                "{qualified_name} is not a plain table; only ordinary tables can be watched (for a partitioned table, watch each partition)"
            )));
        }
        let columns = client
            .select(COLUMNS_SQL, None, &[relid.into()])?
            .map(|r| Ok((not_null(&r, "name")?, not_null(&r, "is_text_array")?)))
            .collect::<Result<Vec<_>>>()?;
        let primary_key = client
            .select(PRIMARY_KEY_SQL, None, &[relid.into()])?
            .map(|r| not_null(&r, "name"))
            .collect::<Result<Vec<_>>>()?;
        Ok(TableShape {
            qualified_name,
            schema,
            table,
            columns,
            primary_key,
        })
    })
}
