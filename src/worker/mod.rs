//! The delivery worker: claim due deliveries, hand them to the sender threads, record outcomes.
//! Only this main thread calls PostgreSQL.

mod queue;
pub mod sender;

use crate::{guc, shmem};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use sender::{Outcome, Pool};
use std::collections::HashMap;
use std::time::{Duration, Instant};

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
/// How long a stopping worker waits for requests in flight before leaving them to lease expiry.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

pub fn register() {
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
    batch: i64,
}

impl Settings {
    fn read() -> Settings {
        Settings {
            delays: guc::retry_delays(),
            timeout: guc::timeout(),
            concurrency: guc::max_concurrency(),
            per_endpoint: guc::max_concurrency_per_endpoint(),
            batch: guc::batch_size(),
        }
    }
}

fn shutdown_requested() -> bool {
    unsafe { std::ptr::read_volatile(&raw const pg_sys::ShutdownRequestPending) != 0 }
}

/// Reread postgresql.conf after a SIGHUP; true when it did.
fn reload_config_if_asked() -> bool {
    unsafe {
        if std::ptr::read_volatile(&raw const pg_sys::ConfigReloadPending) == 0 {
            return false;
        }
        std::ptr::write_volatile(&raw mut pg_sys::ConfigReloadPending, 0);
        pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
    }
    true
}

/// Sleep on the latch; after a wake-up from idle (a commit), let further commits gather first.
fn wait(timeout: Duration, idle: bool) {
    unsafe {
        let events = pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            timeout.as_millis().min(i64::MAX as u128) as i64,
            pg_sys::PG_WAIT_EXTENSION,
        );
        if idle && events & pg_sys::WL_LATCH_SET as i32 != 0 && !shutdown_requested() {
            std::thread::sleep(WAKE_DEBOUNCE);
        }
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pgrx::check_for_interrupts!();
}

fn record(outcomes: &[Outcome], delays: &[Duration]) {
    if !outcomes.is_empty() {
        BackgroundWorker::transaction(|| queue::record(outcomes, delays));
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
        let n =
            BackgroundWorker::transaction(|| queue::purge_delivered(retention, RETENTION_BATCH));
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

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn webhook_worker_main(arg: pg_sys::Datum) {
    let slot = arg.value().min(shmem::MAX_WORKERS - 1);
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = guc::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    BackgroundWorker::transaction(queue::configure_session);
    shmem::publish_latch(slot);
    log!("webhook delivery worker {slot} started in database \"{database}\"");

    let policy = sender::SharedPolicy::new(guc::network_policy().into());
    let mut pool = Pool::new(policy.clone());
    // Requests in flight, per endpoint.
    let mut in_flight: HashMap<i64, usize> = HashMap::new();
    let mut ready = false;
    let mut last_retention: Option<Instant> = None;
    let mut cursors = queue::Cursors::default();
    let mut last_rescan = Instant::now();
    while !shutdown_requested() {
        if reload_config_if_asked() {
            *policy.write().unwrap_or_else(|p| p.into_inner()) = guc::network_policy();
            last_retention = None;
        }
        if slot == 0 && ready && last_retention.is_none_or(|t| t.elapsed() >= RETENTION_EVERY) {
            // A pass that stopped at its cap left more behind: take the next one on the next loop.
            last_retention = apply_retention().then(Instant::now);
        }
        let settings = Settings::read();
        pool.ensure_threads(settings.concurrency);

        let done = pool.finished();
        for outcome in &done {
            if let Some(n) = in_flight.get_mut(&outcome.endpoint_id) {
                *n = n.saturating_sub(1);
            }
        }
        record(&done, &settings.delays);
        let total_in_flight: usize = in_flight.values().sum();

        let mut sleep = IDLE_POLL;
        if !ready {
            ready = BackgroundWorker::transaction(queue::ready);
        }
        let free = settings.concurrency.saturating_sub(total_in_flight) as i64;
        if ready && free > 0 {
            let limit = free.min(settings.batch);
            let lease = settings.timeout + LEASE_MARGIN;
            let caps = queue::Caps {
                per_endpoint: settings.per_endpoint,
                in_flight: &in_flight,
            };
            if last_rescan.elapsed() >= RESCAN_EVERY {
                cursors.clear();
                last_rescan = Instant::now();
            }
            // An error ends the worker process, so the cursors cannot be seen half-updated.
            let mut cursors = std::panic::AssertUnwindSafe(&mut cursors);
            let (jobs, next_due) = BackgroundWorker::transaction(move || {
                let jobs = queue::claim(limit, lease, settings.timeout, &caps, &mut cursors);
                // While requests are in flight their outcomes wake the loop; the next due time
                // (a scan from the front of the index) matters only to an idle worker.
                let next_due = if (jobs.len() as i64) >= limit {
                    Some(0.0)
                } else if jobs.is_empty() && total_in_flight == 0 {
                    queue::next_due()
                } else {
                    None
                };
                (jobs, next_due)
            });
            let claimed = jobs.len();
            for job in jobs {
                *in_flight.entry(job.destination.endpoint_id).or_default() += 1;
                pool.submit(job);
            }
            if let Some(secs) = next_due {
                let due_in = Duration::from_secs_f64(secs.max(0.0));
                // Overdue work that could not be claimed is held back by the per-endpoint cap or
                // by another worker's lock: only an outcome or a commit can change that, so wait.
                sleep = sleep.min(if claimed == 0 {
                    due_in.max(RESULT_POLL)
                } else {
                    due_in
                });
            }
        }
        let busy = in_flight.values().any(|n| *n > 0);
        if busy {
            sleep = sleep.min(RESULT_POLL);
        }
        if !sleep.is_zero() {
            wait(sleep, !busy);
        }
    }

    // Record what finishes within the grace period; the rest is resent after its lease.
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    let mut done = Vec::new();
    let total_in_flight: usize = in_flight.values().sum();
    while total_in_flight > done.len() && Instant::now() < deadline {
        done.extend(pool.finished());
        std::thread::sleep(RESULT_POLL);
    }
    record(&done, &guc::retry_delays());
    shmem::withdraw_latch(slot);
    log!("webhook delivery worker {slot} stopped");
}
