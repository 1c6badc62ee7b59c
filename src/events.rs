//! Lifecycle and alert events (SPEC §6): which types exist, and `emit`, the one way to queue
//! one. An event is a delivery row like any other (signed, retried, dead-lettered), marked by
//! its `operation`, the event type (`sync.started`, `endpoint.alert.raised`, ...: every type
//! has a dot, no row operation has one), with `table_name` and `subscription_id` NULL and a
//! `msg_` webhook-id of its own per receiving endpoint. Its body is the envelope
//! `{"type", "timestamp", "data"}`.
//!
//! Event deliveries never raise events: the worker leaves their outcomes out of endpoint health
//! (alerts, disabling) and never sends `delivery.failed` for them, so no event causes another.

use crate::error::{Result, WebhookError};
use crate::{message, shmem};
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

pub const SYNC_TRIGGERED: &str = "sync.triggered";
pub const SYNC_STARTED: &str = "sync.started";
pub const SYNC_COMPLETED: &str = "sync.completed";
pub const SYNC_SUCCESS: &str = "sync.success";
pub const SYNC_FAILED: &str = "sync.failed";
pub const ALERT_RAISED: &str = "endpoint.alert.raised";
pub const ALERT_RESOLVED: &str = "endpoint.alert.resolved";
pub const ENDPOINT_DISABLED: &str = "endpoint.disabled";
pub const DELIVERY_FAILED: &str = "delivery.failed";
pub const CAPTURE_LAG_RAISED: &str = "capture.lag.raised";
pub const CAPTURE_LAG_RESOLVED: &str = "capture.lag.resolved";

/// Every event type an endpoint may subscribe to, in SPEC §6's order.
pub const TYPES: &[&str] = &[
    SYNC_TRIGGERED,
    SYNC_STARTED,
    SYNC_COMPLETED,
    SYNC_SUCCESS,
    SYNC_FAILED,
    ALERT_RAISED,
    ALERT_RESOLVED,
    ENDPOINT_DISABLED,
    DELIVERY_FAILED,
    CAPTURE_LAG_RAISED,
    CAPTURE_LAG_RESOLVED,
];

/// An event delivery row, in SQL over `webhook.delivery` (alias `d`): its operation is an event
/// type, and only event types contain a dot.
pub const IS_EVENT_SQL: &str = "position('.' in d.operation) > 0";

/// The subscribed set `subscribe_events` stores: known types only, each once, in given order.
pub fn validate(events: &[String]) -> Result<Vec<String>> {
    let mut set: Vec<String> = Vec::new();
    for e in events {
        if !TYPES.contains(&e.as_str()) {
            return Err(WebhookError::invalid(format!(
                "unknown event type \"{e}\"; accepted: {}",
                TYPES.join(", ")
            )));
        }
        if !set.contains(e) {
            set.push(e.clone());
        }
    }
    Ok(set)
}

/// The body of one event: `{"type", "timestamp" (RFC 3339, UTC), "data"}`.
pub fn envelope(event_type: &str, data: Value) -> String {
    let timestamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    json!({"type": event_type, "timestamp": timestamp, "data": data}).to_string()
}

/// Queue `event_type` with `data` (exactly SPEC §6's keys for the type) to every endpoint
/// subscribed to it, except `about_endpoint` (an alert or disabled event is never sent to the
/// endpoint it is about; pass None for sync.* and delivery.failed). One delivery per endpoint,
/// due now, each with its own webhook-id; returns their delivery ids in endpoint id order (none
/// when nobody subscribes). Runs in the caller's transaction: nothing is sent unless it commits.
pub fn emit(
    client: &mut SpiClient,
    event_type: &str,
    data: Value,
    about_endpoint: Option<i64>,
) -> Result<Vec<i64>> {
    debug_assert!(
        TYPES.contains(&event_type),
        "unknown event type {event_type}"
    );
    let endpoints: Vec<i64> = client
        .select(
            "SELECT e.id FROM webhook.endpoint e
             WHERE $1 = ANY (e.events) AND e.id IS DISTINCT FROM $2 ORDER BY e.id",
            None,
            &[event_type.into(), about_endpoint.into()],
        )?
        .map(|row| crate::error::not_null(&row, "id"))
        .collect::<Result<_>>()?;
    if endpoints.is_empty() {
        return Ok(Vec::new());
    }
    let body = envelope(event_type, data);
    let message_ids: Vec<String> = endpoints.iter().map(|_| message::new_id()).collect();
    let ids = client
        .update(
            "INSERT INTO webhook.delivery (endpoint_id, operation, payload, message_id)
             SELECT u.endpoint_id, $2, $3, u.message_id
             FROM unnest($1::int8[], $4::text[]) WITH ORDINALITY AS u(endpoint_id, message_id, n)
             ORDER BY u.n
             RETURNING id",
            None,
            &[
                endpoints.into(),
                event_type.into(),
                body.into(),
                message_ids.into(),
            ],
        )?
        .map(|row| crate::error::not_null(&row, "id"))
        .collect::<Result<Vec<i64>>>()?;
    shmem::wake_workers_at_commit();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_a_dot_and_validate_names_the_accepted_ones() {
        assert!(TYPES.iter().all(|t| t.contains('.')));
        let ok = validate(&["sync.started".into(), "sync.started".into()]).unwrap();
        assert_eq!(ok, vec!["sync.started".to_string()]);
        let err = validate(&["sync.start".into()]).unwrap_err().to_string();
        assert!(
            err.contains("\"sync.start\"") && err.contains("endpoint.alert.raised"),
            "{err}"
        );
    }

    #[test]
    fn envelope_has_type_timestamp_and_data() {
        let v: Value = serde_json::from_str(&envelope(ALERT_RESOLVED, json!({"a": 1}))).unwrap();
        assert_eq!(v["type"], ALERT_RESOLVED);
        assert_eq!(v["data"], json!({"a": 1}));
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
