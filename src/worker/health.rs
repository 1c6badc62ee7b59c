//! Endpoint health from attempt outcomes: consecutive failures, and when to raise or resolve an
//! alert or disable the endpoint (SPEC §6). Pure Rust; `claim::record` reads the state and
//! writes the decision in the outcome's transaction, with the endpoint rows locked.

use crate::events;
use serde_json::{json, Value};

/// One endpoint's outcomes in one recorded batch, in completion order (event deliveries left out).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Batch {
    /// Some attempt succeeded.
    pub succeeded: bool,
    /// Failed attempts after the last success (all of them if none succeeded).
    pub trailing_failures: i32,
    /// Some attempt failed.
    pub failed: bool,
    /// The last failed attempt's status code and error.
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
}

impl Batch {
    pub fn add(&mut self, success: bool, status_code: Option<i32>, error: Option<String>) {
        if success {
            self.succeeded = true;
            self.trailing_failures = 0;
        } else {
            self.failed = true;
            self.trailing_failures += 1;
            self.last_status_code = status_code;
            self.last_error = error;
        }
    }
}

/// The endpoint as it is before the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub name: String,
    pub consecutive_failures: i32,
    pub enabled: bool,
    /// An alert is open (endpoint.alert.raised sent, not resolved yet).
    pub raised: bool,
    /// Seconds since its current run of failures began; None if its last attempt succeeded.
    pub failing_secs: Option<f64>,
    /// That start, RFC 3339 UTC.
    pub failing_since: Option<String>,
}

/// How a timestamp column changes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    Keep,
    Now,
    Clear,
}

impl Change {
    pub fn as_sql(self) -> &'static str {
        match self {
            Change::Keep => "keep",
            Change::Now => "now",
            Change::Clear => "clear",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub consecutive_failures: i32,
    pub failing_since: Change,
    pub alert: Change,
    pub disable: bool,
    /// Events about this endpoint, in order: (type, data).
    pub events: Vec<(&'static str, Value)>,
}

/// What `batch` does to an endpoint in `state`, given webhook.alert_threshold and
/// webhook.disable_after (seconds, 0 = never).
pub fn decide(state: &State, batch: &Batch, threshold: i32, disable_after: i32) -> Decision {
    let mut events = Vec::new();
    let consecutive_failures = if batch.succeeded {
        batch.trailing_failures
    } else {
        state
            .consecutive_failures
            .saturating_add(batch.trailing_failures)
    };
    let failing_since = match (batch.succeeded, batch.trailing_failures > 0) {
        (true, false) => Change::Clear,
        (true, true) => Change::Now,
        (false, true) if state.failing_secs.is_none() => Change::Now,
        _ => Change::Keep,
    };
    let mut raised = state.raised;
    let mut alert = Change::Keep;
    if batch.succeeded && raised {
        let down_for_ms = (state.failing_secs.unwrap_or(0.0) * 1000.0)
            .round()
            .max(0.0) as i64;
        events.push((
            events::ALERT_RESOLVED,
            json!({"endpoint": state.name, "down_for_ms": down_for_ms}),
        ));
        raised = false;
        alert = Change::Clear;
    }
    if !raised && consecutive_failures >= threshold && batch.trailing_failures > 0 {
        events.push((
            events::ALERT_RAISED,
            json!({
                "endpoint": state.name,
                "consecutive_failures": consecutive_failures,
                "last_status_code": batch.last_status_code,
                "last_error": batch.last_error,
            }),
        ));
        alert = Change::Now;
    }
    // Failing without a success for disable_after: only a run of failures that began before
    // this batch can be that old.
    let disable = disable_after > 0
        && state.enabled
        && failing_since == Change::Keep
        && batch.trailing_failures > 0
        && state
            .failing_secs
            .is_some_and(|secs| secs >= f64::from(disable_after));
    if disable {
        events.push((
            events::ENDPOINT_DISABLED,
            json!({"endpoint": state.name, "failing_since": state.failing_since}),
        ));
    }
    Decision {
        consecutive_failures,
        failing_since,
        alert,
        disable,
        events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(cf: i32, raised: bool, failing_secs: Option<f64>) -> State {
        State {
            name: "e".into(),
            consecutive_failures: cf,
            enabled: true,
            raised,
            failing_secs,
            failing_since: failing_secs.map(|_| "2026-01-01T00:00:00.000000Z".into()),
        }
    }

    fn failures(n: i32) -> Batch {
        let mut b = Batch::default();
        for _ in 0..n {
            b.add(false, Some(500), Some("HTTP 500".into()));
        }
        b
    }

    fn types(d: &Decision) -> Vec<&str> {
        d.events.iter().map(|(t, _)| *t).collect()
    }

    #[test]
    fn raised_once_at_the_threshold_then_quiet_then_resolved_once() {
        let d = decide(&state(8, false, Some(1.0)), &failures(1), 10, 0);
        assert!(d.events.is_empty());
        let d = decide(&state(9, false, Some(1.0)), &failures(1), 10, 0);
        assert_eq!(types(&d), [events::ALERT_RAISED]);
        assert_eq!(d.alert, Change::Now);
        assert_eq!(d.events[0].1["consecutive_failures"], 10);
        assert_eq!(d.events[0].1["last_status_code"], 500);
        let d = decide(&state(10, true, Some(2.0)), &failures(3), 10, 0);
        assert!(d.events.is_empty());
        assert_eq!(d.alert, Change::Keep);
        let mut ok = Batch::default();
        ok.add(true, Some(200), None);
        let d = decide(&state(13, true, Some(2.5)), &ok, 10, 0);
        assert_eq!(types(&d), [events::ALERT_RESOLVED]);
        assert_eq!(d.events[0].1["down_for_ms"], 2500);
        assert_eq!(
            (d.alert, d.failing_since, d.consecutive_failures),
            (Change::Clear, Change::Clear, 0)
        );
        let d = decide(&state(0, false, None), &ok, 10, 0);
        assert!(d.events.is_empty());
    }

    #[test]
    fn disabled_after_failing_long_enough_unless_zero() {
        let d = decide(&state(1, false, None), &failures(1), 10, 1);
        assert!(!d.disable && d.failing_since == Change::Now);
        let d = decide(&state(3, false, Some(0.5)), &failures(1), 10, 1);
        assert!(!d.disable);
        let d = decide(&state(4, false, Some(1.2)), &failures(1), 10, 1);
        assert!(d.disable);
        assert_eq!(types(&d), [events::ENDPOINT_DISABLED]);
        assert_eq!(
            d.events[0].1["failing_since"],
            "2026-01-01T00:00:00.000000Z"
        );
        let d = decide(&state(4, false, Some(1e9)), &failures(1), 10, 0);
        assert!(!d.disable);
        let mut disabled = state(4, false, Some(5.0));
        disabled.enabled = false;
        assert!(!decide(&disabled, &failures(1), 10, 1).disable);
    }
}
