//! The one HTTP client: agent and destination policy, signed headers, send, the attempt's
//! outcome, and the loader that turns an endpoint row into a destination. Used by the worker's
//! sender threads and by `test_endpoint`. Sending never touches PostgreSQL; loading does.

use crate::error::{not_null, Result};
use crate::network::NetworkPolicy;
use crate::{schedule, sign};
use pgrx::spi::SpiHeapTupleData;
use pgrx::JsonB;
use std::io::Read;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// At most this much of a response body is read and kept.
pub const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

pub const USER_AGENT: &str = concat!("pg-webhook/", env!("CARGO_PKG_VERSION"));

/// Where and how to send; shared by every job of one endpoint in a claim.
#[derive(Debug)]
pub struct Destination {
    pub endpoint_id: i64,
    pub url: String,
    pub method: String,
    pub headers: Vec<(String, String)>,
    /// Live secrets, newest first: `X-Signature` uses the newest.
    pub secrets: Vec<String>,
}

/// The destination policy, shared with the resolver and replaced when settings are reloaded.
pub type SharedPolicy = Arc<RwLock<NetworkPolicy>>;

/// Resolves names, then keeps only the addresses the policy allows: the check is on the very
/// addresses the connector then uses, so DNS rebinding cannot slip a private address through.
#[derive(Debug)]
struct GuardedResolver {
    inner: ureq::unversioned::resolver::DefaultResolver,
    policy: SharedPolicy,
}

impl ureq::unversioned::resolver::Resolver for GuardedResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> std::result::Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let resolved = self.inner.resolve(uri, config, timeout)?;
        let policy = self.policy.read().unwrap_or_else(|p| p.into_inner());
        let mut allowed = self.empty();
        let mut refusal = None;
        for addr in &resolved {
            match policy.check(addr.ip()) {
                Ok(()) => allowed.push(*addr),
                Err(why) => refusal = Some(why),
            }
        }
        match (allowed.is_empty(), refusal) {
            (true, Some(why)) => Err(ureq::Error::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                why,
            ))),
            _ => Ok(allowed),
        }
    }
}

pub fn agent(policy: SharedPolicy) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .user_agent(USER_AGENT)
        .max_idle_connections(256)
        .max_idle_connections_per_host(64)
        .build();
    ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::default(),
        GuardedResolver {
            inner: Default::default(),
            policy,
        },
    )
}

/// The headers of one attempt, signed now (SPEC §3).
pub fn signed_headers(dest: &Destination, msg_id: &str, body: &[u8]) -> Vec<(String, String)> {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut headers = dest.headers.clone();
    headers.push(("Content-Type".into(), "application/json".into()));
    if let Some(newest) = dest.secrets.first() {
        headers.push(("X-Signature".into(), sign::x_signature(newest, body)));
    }
    headers.push(("webhook-id".into(), msg_id.to_string()));
    headers.push(("webhook-timestamp".into(), timestamp.to_string()));
    headers.push((
        "webhook-signature".into(),
        sign::standard_signature(&dest.secrets, msg_id, timestamp, body),
    ));
    headers
}

/// Send one signed request now; never panics on network errors.
pub fn send(
    agent: &ureq::Agent,
    dest: &Destination,
    msg_id: &str,
    body: &[u8],
    timeout: Duration,
) -> Attempt {
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let clock = Instant::now();
    let headers = signed_headers(dest, msg_id, body);
    let builder = match dest.method.as_str() {
        "PUT" => agent.put(&dest.url),
        "PATCH" => agent.patch(&dest.url),
        _ => agent.post(&dest.url),
    };
    let mut builder = builder.config().timeout_global(Some(timeout)).build();
    for (name, value) in &headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let result = builder.send(body).map(|mut response| {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(schedule::parse_retry_after)
            .filter(|_| status == 429 || status == 503);
        let mut kept = Vec::new();
        let read = response
            .body_mut()
            .as_reader()
            .take(MAX_RESPONSE_BYTES)
            .read_to_end(&mut kept);
        (status, retry_after, kept, read.err())
    });
    let duration = clock.elapsed();
    match result {
        Ok((status, retry_after, kept, read_error)) => Attempt {
            started_at,
            duration,
            status: Some(status),
            error: match (read_error, (200..300).contains(&status)) {
                (Some(e), _) if e.to_string().contains("timeout") => Some(format!(
                    "timeout: the response body was not complete within {} ms",
                    timeout.as_millis()
                )),
                (Some(e), _) => Some(format!("reading the response failed: {e}")),
                (None, true) => None,
                (None, false) => Some(format!("HTTP {status}")),
            },
            response_body: Some(String::from_utf8_lossy(&kept).into_owned()),
            retry_after,
        },
        Err(e) => Attempt {
            started_at,
            duration,
            status: None,
            error: Some(describe(&e, timeout)),
            response_body: None,
            retry_after: None,
        },
    }
}

fn describe(e: &ureq::Error, timeout: Duration) -> String {
    match e {
        ureq::Error::Timeout(_) => format!(
            "timeout: no complete response within {} ms",
            timeout.as_millis()
        ),
        other => other.to_string(),
    }
}

/// What one HTTP exchange gave.
#[derive(Debug)]
pub struct Attempt {
    /// Unix seconds.
    pub started_at: f64,
    pub duration: Duration,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub response_body: Option<String>,
    pub retry_after: Option<Duration>,
}

impl Attempt {
    pub fn success(&self) -> bool {
        self.error.is_none() && self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// Start a thread that never runs PostgreSQL's signal handlers: signals are blocked in the
/// calling thread around the spawn, so the new thread starts with every signal blocked (a
/// thread inherits its creator's mask) and no signal can reach it before it could block them.
/// The caller's mask is restored afterwards.
pub fn spawn_without_signals<T: Send + 'static>(
    name: String,
    body: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    // SAFETY: sigset_t is plain data, for which all zero bytes is a valid value; sigfillset
    // fills `all` in next, and pthread_sigmask fills `saved`.
    let (mut all, mut saved): (libc::sigset_t, libc::sigset_t) =
        unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    // SAFETY: `all` is a valid, writable sigset_t.
    unsafe { libc::sigfillset(&mut all) };
    // SAFETY: changes only this thread's mask, saving the old one in a valid `saved`.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut saved) };
    let spawned = std::thread::Builder::new().name(name).spawn(body);
    // SAFETY: restores this thread's own mask from the value saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &saved, std::ptr::null_mut()) };
    spawned
}

/// The endpoint columns a destination is made of, for `SELECT {DESTINATION_COLUMNS} FROM
/// webhook.endpoint ...`; `Destination::from_row` reads them by name. `previous_secrets`: the
/// rotated-out secrets still inside their overlap, last retired first.
pub const DESTINATION_COLUMNS: &str = "id, url, method, headers, secret,
       ARRAY(SELECT p.secret FROM webhook.previous_secret p
             WHERE p.endpoint_id = endpoint.id AND p.expires_at > now()
             ORDER BY p.retired_at DESC) AS previous_secrets";

impl Destination {
    /// The destination an endpoint row describes (a row selected with DESTINATION_COLUMNS).
    /// Headers were validated when they were stored: anything but a string value is skipped.
    pub fn from_row(row: &SpiHeapTupleData) -> Result<Destination> {
        let headers: Option<JsonB> = row.get_by_name("headers")?;
        let headers = headers
            .and_then(|h| h.0.as_object().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_string())))
            .collect();
        let current: String = not_null(row, "secret")?;
        let previous: Vec<Option<String>> =
            row.get_by_name("previous_secrets")?.unwrap_or_default();
        Ok(Destination {
            endpoint_id: not_null(row, "id")?,
            url: not_null(row, "url")?,
            method: not_null(row, "method")?,
            headers,
            secrets: live_secrets(current, previous.into_iter().flatten()),
        })
    }
}

/// The secrets that sign, newest first, each once.
fn live_secrets(current: String, previous: impl Iterator<Item = String>) -> Vec<String> {
    let mut secrets = vec![current];
    for secret in previous {
        if !secrets.contains(&secret) {
            secrets.push(secret);
        }
    }
    secrets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_secrets_are_newest_first_without_repeats() {
        let s = |v: &str| v.to_string();
        assert_eq!(live_secrets(s("c"), std::iter::empty()), [s("c")]);
        assert_eq!(
            live_secrets(s("c"), [s("b"), s("a"), s("c"), s("b")].into_iter()),
            [s("c"), s("b"), s("a")]
        );
    }
}
