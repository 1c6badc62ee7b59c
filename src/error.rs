//! Every error a caller can cause, with its SQLSTATE. Raised as `ERROR` at the SQL edge.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WebhookError {
    #[error("endpoint \"{0}\" does not exist")]
    UnknownEndpoint(String),
    #[error(
        "trigger \"{trigger}\" on {table} names endpoint \"{endpoint}\", which does not exist"
    )]
    UnknownEndpointInTrigger {
        endpoint: String,
        trigger: String,
        table: String,
    },
    #[error("endpoint \"{0}\" already exists")]
    DuplicateEndpoint(String),
    #[error("{0}")]
    InvalidValue(String),
    #[error("argument \"{0}\" must not be NULL")]
    NullArgument(&'static str),
    #[error("column \"{column}\" named in {option} does not exist in table {table}")]
    UnknownColumn {
        option: &'static str,
        column: String,
        table: String,
    },
    #[error("table {0} has no primary key; pass lookup => ARRAY['column', ...] to name the columns that identify a row")]
    NoKey(String),
    #[error("table {table} is not watched by endpoint \"{endpoint}\"")]
    NotWatched { table: String, endpoint: String },
    #[error(
        "cannot drop endpoint \"{endpoint}\": {} attached by hand name{} it: {}",
        if triggers.len() == 1 { "a capture trigger" } else { "capture triggers" },
        if triggers.len() == 1 { "s" } else { "" },
        triggers.join(", ")
    )]
    NamedByTriggers {
        endpoint: String,
        /// `trigger "name" on schema.table`, each.
        triggers: Vec<String>,
    },
    #[error("delivery {0} does not exist")]
    UnknownDelivery(i64),
    #[error("sync run {0} does not exist")]
    UnknownSyncRun(i64),
    #[error("table {0} has no primary key; a sync run reads a table in primary-key order")]
    NoKeyToSync(String),
    #[error("{0}")]
    WrongState(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// A predicate PostgreSQL's parser or analyser refused, with the SQLSTATE it gave.
    #[error("{message}")]
    Predicate {
        code: PgSqlErrorCode,
        message: String,
    },
    /// DDL that would break a subscription (the DDL guard, SPEC §5).
    #[error("{0}")]
    InUse(String),
    /// A broken invariant or an SPI failure: a bug, never the caller's doing.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<pgrx::spi::Error> for WebhookError {
    fn from(e: pgrx::spi::Error) -> Self {
        WebhookError::Internal(format!("SPI: {e}"))
    }
}

impl WebhookError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        WebhookError::InvalidValue(msg.into())
    }

    pub fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            WebhookError::UnknownEndpoint(_)
            | WebhookError::UnknownEndpointInTrigger { .. }
            | WebhookError::NotWatched { .. }
            | WebhookError::UnknownDelivery(_)
            | WebhookError::UnknownSyncRun(_) => ERRCODE_UNDEFINED_OBJECT,
            WebhookError::NoKeyToSync(_) => ERRCODE_INVALID_COLUMN_REFERENCE,
            WebhookError::DuplicateEndpoint(_) => ERRCODE_DUPLICATE_OBJECT,
            WebhookError::NamedByTriggers { .. } => ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            WebhookError::InvalidValue(_) => ERRCODE_INVALID_PARAMETER_VALUE,
            WebhookError::NullArgument(_) => ERRCODE_NULL_VALUE_NOT_ALLOWED,
            WebhookError::UnknownColumn { .. } => ERRCODE_UNDEFINED_COLUMN,
            WebhookError::NoKey(_) => ERRCODE_INVALID_COLUMN_REFERENCE,
            WebhookError::WrongState(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            WebhookError::PermissionDenied(_) => ERRCODE_INSUFFICIENT_PRIVILEGE,
            WebhookError::Predicate { code, .. } => *code,
            WebhookError::InUse(_) => ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            WebhookError::Internal(_) => ERRCODE_INTERNAL_ERROR,
        }
    }

    /// What the caller can do about it, where there is more to say than the message does.
    pub fn hint(&self) -> Option<String> {
        match self {
            WebhookError::NamedByTriggers { endpoint, .. } => Some(format!(
                "Remove the endpoint's name from those triggers (or drop them) first, or call \
                 webhook.drop_endpoint('{}', force => true) to have its name removed from \
                 them; a trigger left naming no endpoint is dropped.",
                endpoint.replace('\'', "''")
            )),
            _ => None,
        }
    }

    /// Raise as a PostgreSQL `ERROR`; never returns.
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.sqlstate(), self.to_string(), "webhook");
        if let Some(hint) = self.hint() {
            report = report.set_hint(hint);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}

pub type Result<T> = std::result::Result<T, WebhookError>;

/// A column of an SPI row that the query guarantees is not NULL, read by name; a NULL there is
/// a broken invariant (XX000), never the caller's doing.
pub fn not_null<T: pgrx::IntoDatum + pgrx::FromDatum>(
    row: &pgrx::spi::SpiHeapTupleData,
    column: &str,
) -> Result<T> {
    row.get_by_name(column)?
        .ok_or_else(|| WebhookError::Internal(format!("column {column} is NULL")))
}

/// Unwrap a result at the SQL edge, raising the error as a PostgreSQL ERROR.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T> {
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => e.raise(),
        }
    }
}
