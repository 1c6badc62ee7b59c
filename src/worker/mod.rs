//! The delivery worker: claim due deliveries, hand them to the sender threads, record outcomes.
//! Only this main thread calls PostgreSQL; an error here ends the process (PostgreSQL restarts
//! it after a second), and leases make sure nothing claimed is lost.

mod claim;
mod health;
mod sender;
mod wal;

use crate::error::OrRaise;
use crate::{guc, http, shmem};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use sender::{Outcome, Pool};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The extension version whose schema the worker's statements are written for.
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Longest sleep when nothing is due; commits wake the worker sooner through its latch.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Sender threads wake the main thread for each outcome; this poll is only a safety net.
const RESULT_POLL: Duration = Duration::from_millis(50);
/// After a commit wakes the worker it lets further commits gather this long, so that a busy
/// write path wakes it at most a few hundred times a second instead of once per commit.
/// Commits meanwhile only set the latch: no signal is sent while the worker is not waiting.
const WAKE_DEBOUNCE: Duration = Duration::from_millis(2);
/// A lease outlives the attempt's timeout by this much before another claim may take it.
const LEASE_MARGIN: Duration = Duration::from_secs(10);
/// How often the first worker removes delivered deliveries past `webhook.retention`.
const RETENTION_EVERY: Duration = Duration::from_secs(60);
/// Rows deleted per retention transaction, and at most per pass (so the loop stays responsive).
const RETENTION_BATCH: i64 = 10_000;
const RETENTION_PASS_MAX: i64 = 200_000;
/// How often every claim cursor is dropped, so a full scan finds rows committed late with an
/// earlier time (a long transaction's captures, a redelivery).
const RESCAN_EVERY: Duration = Duration::from_secs(1);
/// Rows a sync run reads per chunk (one short transaction each, between two claims).
const SYNC_CHUNK_ROWS: i64 = 500;
/// How often a worker with no active sync run looks for a new one.
const SYNC_LOOK_EVERY: Duration = Duration::from_secs(1);
/// How long a stopping worker waits for requests in flight before leaving them to lease expiry.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

pub fn register() {
    wal::register();
    for slot in 0..guc::workers() {
        BackgroundWorkerBuilder::new(&format!("webhook delivery worker {slot}"))
            .set_type("webhook delivery worker")
            .set_function("webhook_worker_main")
            .set_library("webhook")
            .set_argument(Some(pg_sys::Datum::from(slot)))
            .enable_spi_access()
            .set_start_time(pgrx::bgworkers::BgWorkerStartTime::RecoveryFinished)
            .set_restart_time(Some(Duration::from_secs(1)))
            .load();
    }
}

struct Settings {
    delays: Vec<Duration>,
    timeout: Duration,
    concurrency: usize,
    per_endpoint: i32,
    claim_size: i64,
}

impl Settings {
    fn read() -> Settings {
        Settings {
            delays: guc::retry_delays(),
            timeout: guc::timeout(),
            concurrency: guc::max_concurrency(),
            per_endpoint: guc::max_concurrency_per_endpoint(),
            claim_size: guc::claim_size(),
        }
    }
}

fn shutdown_requested() -> bool {
    // SAFETY: a volatile read of a sig_atomic_t flag that pgrx's SIGTERM handler sets on this
    // (the main) thread, the way PostgreSQL's C code reads it.
    unsafe { std::ptr::read_volatile(&raw const pg_sys::ShutdownRequestPending) != 0 }
}

/// Reread postgresql.conf after a SIGHUP; true when it did.
fn reload_config_if_asked() -> bool {
    // SAFETY: a volatile read of a sig_atomic_t flag that pgrx's SIGHUP handler sets on this (the
    // main) thread, the way PostgreSQL's C code reads it.
    if unsafe { std::ptr::read_volatile(&raw const pg_sys::ConfigReloadPending) } == 0 {
        return false;
    }
    // SAFETY: as above; cleared before rereading, so a SIGHUP arriving meanwhile is not lost.
    unsafe { std::ptr::write_volatile(&raw mut pg_sys::ConfigReloadPending, 0) };
    // SAFETY: called on the worker's main thread outside any transaction, as PostgreSQL's own
    // background processes do on SIGHUP.
    unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
    true
}

/// Sleep on the latch; after a wake-up from idle (a commit), let further commits gather first.
fn wait(timeout: Duration, idle: bool) {
    // SAFETY: MyLatch is this process's own latch, set by PostgreSQL before any extension code
    // runs; only the main thread waits on it.
    let events = unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            timeout.as_millis().min(i64::MAX as u128) as i64,
            pg_sys::PG_WAIT_EXTENSION,
        )
    };
    if idle && events & pg_sys::WL_LATCH_SET as i32 != 0 && !shutdown_requested() {
        std::thread::sleep(WAKE_DEBOUNCE);
    }
    // SAFETY: as above; the caller's loop checks its flags after this reset, so no wake-up is lost.
    unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
    pgrx::check_for_interrupts!();
}

/// Run one step in its own transaction; an error is raised, which ends the worker. Its message
/// is published first (`webhook.workers.last_error`), so the restarted worker shows it.
fn step<R>(
    f: impl FnOnce() -> crate::error::Result<R> + std::panic::UnwindSafe + std::panic::RefUnwindSafe,
) -> R {
    BackgroundWorker::transaction(|| {
        PgTryBuilder::new(|| f().or_raise())
            .catch_others(|cause| {
                let message = match &cause {
                    CaughtError::PostgresError(e) | CaughtError::ErrorReport(e) => e.message(),
                    CaughtError::RustPanic { ereport, .. } => ereport.message(),
                };
                shmem::worker_stopping(Some(message));
                cause.rethrow()
            })
            .execute()
    })
}

fn record(outcomes: &[Outcome], delays: &[Duration]) {
    if !outcomes.is_empty() {
        step(|| claim::record(outcomes, delays));
    }
}

/// Delete delivered deliveries past `webhook.retention`; false when a pass cap left some behind.
fn apply_retention() -> bool {
    let retention = guc::retention_secs();
    if retention == 0 {
        return true;
    }
    let mut removed = 0;
    while removed < RETENTION_PASS_MAX {
        let n = step(|| claim::purge_delivered(retention, RETENTION_BATCH));
        removed += n;
        if n < RETENTION_BATCH || shutdown_requested() {
            break;
        }
    }
    if removed > 0 {
        log!("webhook: removed {removed} delivered deliveries older than webhook.retention");
    }
    removed < RETENTION_PASS_MAX
}

/// What the main loop keeps between iterations.
struct Loop {
    slot: usize,
    pool: Pool,
    policy: http::SharedPolicy,
    /// Requests in flight, per endpoint.
    in_flight: HashMap<i64, usize>,
    /// Whether the extension exists in this database yet, at this library's version.
    ready: bool,
    /// The older schema version last warned about.
    warned_version: Option<String>,
    last_retention: Option<Instant>,
    /// Whether a sync run was reading or sending at the last look, and when that was.
    sync_active: bool,
    last_sync_look: Instant,
    cursors: claim::Cursors,
    last_rescan: Instant,
}

impl Loop {
    fn new(slot: usize) -> Loop {
        let policy = http::SharedPolicy::new(guc::network_policy().into());
        Loop {
            slot,
            pool: Pool::new(policy.clone()),
            policy,
            in_flight: HashMap::new(),
            ready: false,
            warned_version: None,
            last_retention: None,
            sync_active: false,
            last_sync_look: Instant::now(),
            cursors: claim::Cursors::default(),
            last_rescan: Instant::now(),
        }
    }

    /// The worker's statements are written for this library's schema: after a package upgrade
    /// it waits, saying so once, until `ALTER EXTENSION webhook UPDATE` has run (capture keeps
    /// queueing meanwhile, so nothing is lost).
    fn schema_matches(&mut self, installed: Option<String>) -> bool {
        let Some(installed) = installed else {
            return false;
        };
        if installed == VERSION {
            return true;
        }
        if self.warned_version.as_deref() != Some(installed.as_str()) {
            warning!(
                "webhook: the extension's schema in this database is version {installed}, this library is {}; deliveries wait until ALTER EXTENSION webhook UPDATE is run",
                VERSION
            );
            self.warned_version = Some(installed);
        }
        false
    }

    fn total_in_flight(&self) -> usize {
        self.in_flight.values().sum()
    }

    /// Reread settings after a SIGHUP; the first worker removes old deliveries once a minute.
    fn housekeeping(&mut self) {
        if reload_config_if_asked() {
            *self.policy.write().unwrap_or_else(|p| p.into_inner()) = guc::network_policy();
            self.last_retention = None;
        }
        let due = self
            .last_retention
            .is_none_or(|t| t.elapsed() >= RETENTION_EVERY);
        if self.slot == 0 && self.ready && due {
            // A pass that stopped at its cap left more behind: take the next one on the next loop.
            self.last_retention = apply_retention().then(Instant::now);
        }
        if !self.ready {
            self.ready = self.schema_matches(step(claim::schema_version));
        }
    }

    /// Record the outcomes the sender threads have finished.
    fn collect_outcomes(&mut self, settings: &Settings) {
        let done = self.pool.finished();
        for outcome in &done {
            if let Some(n) = self.in_flight.get_mut(&outcome.endpoint_id) {
                *n = n.saturating_sub(1);
            }
        }
        record(&done, &settings.delays);
    }

    /// Claim what is due and hand it to the senders; returns how long the loop may sleep.
    fn claim_and_send(&mut self, settings: &Settings) -> Duration {
        let total_in_flight = self.total_in_flight();
        let free = settings.concurrency.saturating_sub(total_in_flight) as i64;
        if !self.ready || free == 0 {
            return IDLE_POLL;
        }
        let limit = free.min(settings.claim_size);
        let lease = settings.timeout + LEASE_MARGIN;
        if self.last_rescan.elapsed() >= RESCAN_EVERY {
            self.cursors.clear();
            self.last_rescan = Instant::now();
        }
        let caps = claim::Caps {
            per_endpoint: settings.per_endpoint,
            in_flight: &self.in_flight,
        };
        let timeout = settings.timeout;
        // An error ends the worker process, so the cursors cannot be seen half-updated.
        let cursors = std::panic::AssertUnwindSafe(&mut self.cursors);
        let (jobs, next_due) = step(move || {
            let cursors = cursors;
            let jobs = claim::claim(limit, lease, timeout, &caps, cursors.0)?;
            // While requests are in flight their outcomes wake the loop; the next due time
            // (a scan from the front of the index) matters only to an idle worker.
            let next_due = if (jobs.len() as i64) >= limit {
                Some(0.0)
            } else if jobs.is_empty() && total_in_flight == 0 {
                claim::next_due()?
            } else {
                None
            };
            Ok((jobs, next_due))
        });
        let claimed = jobs.len();
        for job in jobs {
            *self
                .in_flight
                .entry(job.destination.endpoint_id)
                .or_default() += 1;
            self.pool.submit(job);
        }
        let Some(secs) = next_due else {
            return IDLE_POLL;
        };
        let due_in = Duration::from_secs_f64(secs.max(0.0));
        // Overdue work that could not be claimed is held back by the per-endpoint cap or by
        // another worker's lock: only an outcome or a commit can change that, so wait.
        IDLE_POLL.min(if claimed == 0 {
            due_in.max(RESULT_POLL)
        } else {
            due_in
        })
    }

    /// The first worker reads sync runs, one chunk per loop between its claims, so live changes
    /// keep flowing during a run; true while a run has rows left to read (no sleeping then).
    /// Counting a run's finished deliveries is cheap, so idle loops do it too.
    fn read_sync_runs(&mut self) -> bool {
        if self.slot != 0 || !self.ready {
            return false;
        }
        // Without an active run, look for a new one once a second (a run's start waits at most
        // that long), so that a busy worker does not pay a transaction per loop for nothing.
        if !self.sync_active && self.last_sync_look.elapsed() < SYNC_LOOK_EVERY {
            return false;
        }
        self.last_sync_look = Instant::now();
        let (reading, active) = step(|| crate::capture::sync::step(SYNC_CHUNK_ROWS));
        self.sync_active = active;
        reading
    }

    /// Record what finishes within the grace period; the rest is resent after its lease.
    fn shut_down(self) {
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        let mut done = Vec::new();
        let total_in_flight = self.total_in_flight();
        while total_in_flight > done.len() && Instant::now() < deadline {
            done.extend(self.pool.finished());
            std::thread::sleep(RESULT_POLL);
        }
        record(&done, &guc::retry_delays());
        shmem::withdraw_latch(self.slot);
        shmem::worker_stopping(None);
        log!("webhook delivery worker {} stopped", self.slot);
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn webhook_worker_main(arg: pg_sys::Datum) {
    let slot = arg.value().min(shmem::MAX_WORKERS - 1);
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = guc::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    shmem::worker_started(slot);
    step(claim::configure_session);
    shmem::publish_latch(slot);
    log!("webhook delivery worker {slot} started in database \"{database}\"");

    let mut worker = Loop::new(slot);
    while !shutdown_requested() {
        worker.housekeeping();
        let settings = Settings::read();
        worker.pool.ensure_threads(settings.concurrency);
        worker.collect_outcomes(&settings);
        let mut sleep = worker.claim_and_send(&settings);
        if worker.read_sync_runs() {
            sleep = Duration::ZERO;
        }
        shmem::worker_looped(worker.total_in_flight());
        let busy = worker.total_in_flight() > 0;
        if busy {
            sleep = sleep.min(RESULT_POLL);
        }
        if !sleep.is_zero() {
            wait(sleep, !busy);
        }
    }
    worker.shut_down();
}
