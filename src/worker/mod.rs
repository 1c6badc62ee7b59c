//! The delivery worker: claim due deliveries, hand them to the sender threads, record outcomes.
//! Only this main thread calls PostgreSQL.

mod queue;
pub mod sender;

use crate::{guc, shmem};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use sender::{Outcome, Pool};
use std::time::{Duration, Instant};

/// Longest sleep when nothing is due; commits wake the worker sooner through its latch.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How often finished requests are collected while some are in flight.
const RESULT_POLL: Duration = Duration::from_millis(5);
/// After a commit wakes the worker it lets further commits gather this long, so that a busy
/// write path wakes it at most a few hundred times a second instead of once per commit.
/// Commits meanwhile only set the latch: no signal is sent while the worker is not waiting.
const WAKE_DEBOUNCE: Duration = Duration::from_millis(2);
/// A lease outlives the attempt's timeout by this much before another claim may take it.
const LEASE_MARGIN: Duration = Duration::from_secs(10);
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
    batch: i64,
}

impl Settings {
    fn read() -> Settings {
        Settings {
            delays: guc::retry_delays(),
            timeout: guc::timeout(),
            concurrency: guc::max_concurrency(),
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

fn wait(timeout: Duration) {
    unsafe {
        let events = pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            timeout.as_millis().min(i64::MAX as u128) as i64,
            pg_sys::PG_WAIT_EXTENSION,
        );
        if events & pg_sys::WL_LATCH_SET as i32 != 0 && !shutdown_requested() {
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

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn webhook_worker_main(arg: pg_sys::Datum) {
    let slot = arg.value().min(shmem::MAX_WORKERS - 1);
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = guc::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    shmem::publish_latch(slot);
    log!("webhook delivery worker {slot} started in database \"{database}\"");

    let policy = sender::SharedPolicy::new(guc::network_policy().into());
    let mut pool = Pool::new(policy.clone());
    let mut in_flight = 0usize;
    let mut ready = false;
    while !shutdown_requested() {
        if reload_config_if_asked() {
            *policy.write().unwrap_or_else(|p| p.into_inner()) = guc::network_policy();
        }
        let settings = Settings::read();
        pool.ensure_threads(settings.concurrency);

        let done = pool.finished();
        in_flight -= done.len();
        record(&done, &settings.delays);

        let mut sleep = IDLE_POLL;
        if !ready {
            ready = BackgroundWorker::transaction(queue::ready);
        }
        let free = settings.concurrency.saturating_sub(in_flight) as i64;
        if ready && free > 0 {
            let limit = free.min(settings.batch);
            let lease = settings.timeout + LEASE_MARGIN;
            let (jobs, next_due) = BackgroundWorker::transaction(|| {
                let jobs = queue::claim(limit, lease, settings.timeout);
                let next_due = if (jobs.len() as i64) < limit {
                    queue::next_due()
                } else {
                    Some(0.0)
                };
                (jobs, next_due)
            });
            in_flight += jobs.len();
            for job in jobs {
                pool.submit(job);
            }
            if let Some(secs) = next_due {
                sleep = sleep.min(Duration::from_secs_f64(secs.max(0.0)));
            }
        }
        if in_flight > 0 {
            sleep = sleep.min(RESULT_POLL);
        }
        if !sleep.is_zero() {
            wait(sleep);
        }
    }

    // Record what finishes within the grace period; the rest is resent after its lease.
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    let mut done = Vec::new();
    while in_flight > done.len() && Instant::now() < deadline {
        done.extend(pool.finished());
        std::thread::sleep(RESULT_POLL);
    }
    record(&done, &guc::retry_delays());
    shmem::withdraw_latch(slot);
    log!("webhook delivery worker {slot} stopped");
}
