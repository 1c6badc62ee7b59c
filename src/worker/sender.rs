//! The HTTP sender pool: plain Rust threads that sign and send, and hand outcomes back to the
//! worker's main thread through a channel. Nothing here touches PostgreSQL.

use crate::network::NetworkPolicy;
use crate::schedule;
use crate::sign;
use crossbeam_channel::{unbounded, Receiver, Sender};
use std::io::Read;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
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

#[derive(Debug)]
pub struct Job {
    pub delivery_id: i64,
    pub attempt: i32,
    pub attempt_in_cycle: i32,
    pub destination: Arc<Destination>,
    pub body: String,
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct Outcome {
    pub delivery_id: i64,
    pub attempt: i32,
    pub attempt_in_cycle: i32,
    pub endpoint_id: i64,
    pub result: Attempt,
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
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
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

pub struct Pool {
    jobs: Sender<Job>,
    job_rx: Receiver<Job>,
    results_tx: Sender<Outcome>,
    results: Receiver<Outcome>,
    threads: Vec<JoinHandle<()>>,
    agent: ureq::Agent,
}

impl Pool {
    pub fn new(policy: SharedPolicy) -> Pool {
        let (jobs, job_rx) = unbounded();
        let (results_tx, results) = unbounded();
        Pool {
            jobs,
            job_rx,
            results_tx,
            results,
            threads: Vec::new(),
            agent: agent(policy),
        }
    }

    /// Grow to `n` sender threads (never shrinks; idle threads just wait).
    pub fn ensure_threads(&mut self, n: usize) {
        while self.threads.len() < n {
            let jobs = self.job_rx.clone();
            let results = self.results_tx.clone();
            let agent = self.agent.clone();
            let main_pid = std::process::id() as libc::pid_t;
            let handle = std::thread::Builder::new()
                .name(format!("webhook-sender-{}", self.threads.len()))
                .spawn(move || sender_thread(agent, jobs, results, main_pid))
                .expect("spawning a sender thread");
            self.threads.push(handle);
        }
    }

    pub fn submit(&self, job: Job) {
        self.jobs
            .send(job)
            .expect("the pool holds a receiver, so the channel is open");
    }

    pub fn finished(&self) -> Vec<Outcome> {
        self.results.try_iter().collect()
    }
}

fn sender_thread(
    agent: ureq::Agent,
    jobs: Receiver<Job>,
    results: Sender<Outcome>,
    main_pid: libc::pid_t,
) {
    block_signals();
    while let Ok(job) = jobs.recv() {
        let msg_id = job.delivery_id.to_string();
        let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            send(
                &agent,
                &job.destination,
                &msg_id,
                job.body.as_bytes(),
                job.timeout,
            )
        }))
        .unwrap_or_else(|_| Attempt {
            started_at: 0.0,
            duration: Duration::ZERO,
            status: None,
            error: Some("internal error while sending (panic in the HTTP client)".into()),
            response_body: None,
            retry_after: None,
        });
        let outcome = Outcome {
            delivery_id: job.delivery_id,
            attempt: job.attempt,
            attempt_in_cycle: job.attempt_in_cycle,
            endpoint_id: job.destination.endpoint_id,
            result: attempt,
        };
        if results.send(outcome).is_err() {
            break;
        }
        wake_main_thread(main_pid);
    }
}

/// Tell the worker's main thread an outcome is waiting. This thread blocks every signal, so the
/// process-directed SIGUSR1 is taken by the main thread, whose PostgreSQL handler sets its latch:
/// no PostgreSQL function runs here.
fn wake_main_thread(main_pid: libc::pid_t) {
    unsafe { libc::kill(main_pid, libc::SIGUSR1) };
}

/// Signals belong to PostgreSQL's handlers on the main thread; keep them off sender threads.
pub fn block_signals() {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}
