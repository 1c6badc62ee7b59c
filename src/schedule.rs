//! Retry arithmetic (SPEC §4): the one place that decides what follows an attempt.

use crate::delivery::Status;
use std::time::Duration;

/// Parse a duration such as `250ms`, `4s`, `2min`, `1h` (a bare number means seconds).
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let s = raw.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        format!("invalid duration \"{raw}\": expected a number with a unit (ms, s, min, h)")
    })?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "invalid duration \"{raw}\": unknown unit \"{other}\"; accepted units are ms, s, min, h"
            ))
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
        return Err(format!(
            "invalid duration \"{raw}\": must be between 0 and 24h"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parse `webhook.retry_delays`: a comma-separated list (empty means no retries, at most 100).
pub fn parse_delays(raw: &str) -> Result<Vec<Duration>, String> {
    if raw.trim().is_empty() {
        return Ok(Vec::new());
    }
    let delays = raw
        .split(',')
        .map(parse_duration)
        .collect::<Result<Vec<_>, _>>()?;
    if delays.len() > 100 {
        return Err(format!(
            "{} retry delays given; at most 100 are accepted",
            delays.len()
        ));
    }
    Ok(delays)
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    Delivered,
    RetryAfter(Duration),
    Failed,
}

impl Next {
    /// The delivery's status after this step.
    pub fn status(self) -> Status {
        match self {
            Next::Delivered => Status::Delivered,
            Next::RetryAfter(_) => Status::Pending,
            Next::Failed => Status::Failed,
        }
    }

    /// How long until the next attempt, when there is one.
    pub fn retry_in(self) -> Option<Duration> {
        match self {
            Next::RetryAfter(d) => Some(d),
            _ => None,
        }
    }
}

/// `attempt_in_cycle` is 1 for the first attempt of a (re)delivery. A server-sent Retry-After may
/// lengthen, never shorten, the wait.
pub fn next_step(
    success: bool,
    attempt_in_cycle: i32,
    delays: &[Duration],
    retry_after: Option<Duration>,
) -> Next {
    if success {
        return Next::Delivered;
    }
    let index = attempt_in_cycle.max(1) as usize - 1;
    match delays.get(index) {
        Some(delay) => Next::RetryAfter(retry_after.map_or(*delay, |ra| ra.max(*delay))),
        None => Next::Failed,
    }
}

/// `Retry-After` as delay-seconds (the HTTP-date form is ignored), capped at one hour.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let secs: u64 = value.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(3600)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    /// The setting's own default, as `webhook.retry_delays` registers it.
    fn default_delays() -> Vec<Duration> {
        parse_delays(crate::guc::DEFAULT_RETRY_DELAYS.to_str().unwrap()).unwrap()
    }

    #[test]
    fn default_schedule_is_the_documented_one() {
        assert_eq!(default_delays(), vec![s(4), s(8), s(16), s(32), s(64)]);
    }

    #[test]
    fn units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration(" 2min").unwrap(), s(120));
        assert_eq!(parse_duration("1h").unwrap(), s(3600));
        assert_eq!(parse_duration("3").unwrap(), s(3));
        assert!(parse_duration("3d").unwrap_err().contains("\"d\""));
        assert!(parse_duration("x").is_err());
        assert!(parse_delays("1s,,2s").is_err());
        assert!(parse_delays("").unwrap().is_empty());
    }

    #[test]
    fn six_attempts_then_failed() {
        let d = default_delays();
        let waits: Vec<Next> = (1..=6).map(|a| next_step(false, a, &d, None)).collect();
        assert_eq!(
            waits,
            vec![
                Next::RetryAfter(s(4)),
                Next::RetryAfter(s(8)),
                Next::RetryAfter(s(16)),
                Next::RetryAfter(s(32)),
                Next::RetryAfter(s(64)),
                Next::Failed
            ]
        );
        assert_eq!(next_step(true, 6, &d, None), Next::Delivered);
    }

    #[test]
    fn retry_after_lengthens_never_shortens() {
        let d = vec![s(4)];
        assert_eq!(
            next_step(false, 1, &d, Some(s(30))),
            Next::RetryAfter(s(30))
        );
        assert_eq!(next_step(false, 1, &d, Some(s(1))), Next::RetryAfter(s(4)));
        assert_eq!(parse_retry_after("120"), Some(s(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("999999"), Some(s(3600)));
    }
}
