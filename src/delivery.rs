//! The queue table `webhook.delivery`, the seam between capture (which only inserts) and the
//! worker (which claims, sends and records): a delivery's states, and the one way to delete
//! deliveries together with their attempts.

/// Where a delivery is in its life; stored as text in `webhook.delivery.status` (sql/schema.sql
/// checks the same four values, and the partial indexes name `pending` and `delivering`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Waiting for `next_attempt_at`.
    Pending,
    /// Claimed by a worker; `next_attempt_at` is the lease's expiry.
    Delivering,
    Delivered,
    /// Dead letter: kept until redelivered or purged.
    Failed,
    /// A census change in a message: its state is the message row's (`batch_id`).
    Batched,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Pending,
        Status::Delivering,
        Status::Delivered,
        Status::Failed,
        Status::Batched,
    ];

    pub const fn as_sql(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Delivering => "delivering",
            Status::Delivered => "delivered",
            Status::Failed => "failed",
            Status::Batched => "batched",
        }
    }

    pub fn from_sql(value: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_sql() == value)
    }

    /// Whether the delivery is finished with, so that it may be redelivered or purged.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Delivered | Status::Failed)
    }
}

/// SQL that deletes the deliveries whose ids `selection` (a query of one `bigint` column)
/// returns, with their attempts and, for a census message, the changes it carries; it counts
/// the changes deleted (a message row is not one). Retention, `purge` and `drop_endpoint` all
/// delete through it. Rows are reached by primary key (`= ANY`) and a message's changes through
/// `delivery_batch` (`batch_id = ANY`), so the plan does not depend on the queue's statistics
/// (see worker::claim::PLANNER_SETTINGS). A change that `selection` names and whose message it
/// names too is deleted once: PostgreSQL skips a row the same statement already deleted.
pub fn delete_sql(selection: &str) -> String {
    format!(
        "WITH gone AS (
    DELETE FROM webhook.delivery WHERE id = ANY (ARRAY({selection}))
    RETURNING id, records
), carried AS (
    DELETE FROM webhook.delivery
    WHERE status = 'batched'
      AND batch_id = ANY (ARRAY(SELECT id FROM gone WHERE records IS NOT NULL))
    RETURNING id
), attempts AS (
    DELETE FROM webhook.attempt WHERE delivery_id = ANY (ARRAY(SELECT id FROM gone))
)
SELECT (SELECT count(*) FROM gone WHERE records IS NULL) + (SELECT count(*) FROM carried)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_its_sql_text() {
        for s in Status::ALL {
            assert_eq!(Status::from_sql(s.as_sql()), Some(s));
        }
        assert_eq!(Status::from_sql("retry"), None);
    }

    #[test]
    fn schema_checks_exactly_these_statuses() {
        let schema = include_str!("../sql/schema.sql");
        let listed = Status::ALL.map(|s| format!("'{}'", s.as_sql())).join(", ");
        assert!(
            schema.contains(&format!("CHECK (status IN ({listed}))")),
            "sql/schema.sql must check status IN ({listed})"
        );
    }
}
