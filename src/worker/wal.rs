//! The capture worker (WAL capture, SPEC §8), a process of its own beside the delivery
//! workers, so that reading the WAL and sending run on separate cores: it keeps the slot and
//! publication, moves tables between the capture modes after a restart, reads the slot and
//! queues the changes, and raises or resolves the lag alert. In trigger mode it only finishes
//! what WAL mode left (reads the slot up to where the triggers took over, then drops it) and
//! exits. An error ends it; PostgreSQL starts it again a second later.

use crate::capture::{attach, wal};
use crate::error::{not_null, OrRaise, Result};
use crate::events;
use crate::guc::{self, Capture};
use crate::shmem;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// The capture worker's nice value: when the CPUs are saturated, the writers whose changes it
/// reads go first, and it catches up when they ease (the lag shows in webhook.capture_lag).
const NICE: i32 = 10;
/// How long the worker sleeps when the WAL has not moved. A client's writing transaction
/// wakes it as it commits (shmem::wake_capture_at_commits); the poll finds the rest (writes of
/// other background processes).
const IDLE_POLL: Duration = Duration::from_millis(10);

pub fn register() {
    BackgroundWorkerBuilder::new("webhook capture worker")
        .set_type("webhook capture worker")
        .set_function("webhook_capture_main")
        .set_library("webhook")
        .enable_spi_access()
        .set_start_time(pgrx::bgworkers::BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

/// One step in its own transaction; an error ends the worker (so nothing half-updated is
/// seen again: the closure's captures may be unwind-unsafe).
fn step<R>(f: impl FnOnce() -> Result<R>) -> R {
    let f = std::panic::AssertUnwindSafe(f);
    BackgroundWorker::transaction(move || {
        let f = f;
        (f.0)().or_raise()
    })
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn webhook_capture_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = guc::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    // SAFETY: lowers this process's own scheduling priority; no memory is touched. A failure
    // (not permitted) leaves the priority as it was, which is harmless.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) };
    if guc::capture() == Capture::Wal {
        log!("webhook capture worker started in database \"{database}\"");
    }
    shmem::publish_capture_latch();
    let mut reader = WalReader::new();
    let mut version_ok = false;
    let mut version_checked: Option<Instant> = None;
    while !super::shutdown_requested() {
        super::reload_config_if_asked();
        // Looked at again every second: the extension may be dropped (or updated) meanwhile.
        if !version_ok || version_checked.is_none_or(|t| t.elapsed() >= LOOK_EVERY) {
            version_ok = step(super::claim::schema_version).as_deref() == Some(super::VERSION);
            version_checked = Some(Instant::now());
        }
        let turn = reader.turn(version_ok);
        if guc::capture() == Capture::Trigger && reader.finished() {
            return;
        }
        if let Turn::Later(pause) = turn {
            // Not waiting on the latch: commits meanwhile only set it, without a signal.
            std::thread::sleep(pause);
        } else if let Turn::Idle = turn {
            // SAFETY: MyLatch is this process's own latch, set by PostgreSQL before any
            // extension code runs.
            unsafe {
                pg_sys::WaitLatch(
                    pg_sys::MyLatch,
                    (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH)
                        as i32,
                    if version_ok {
                        IDLE_POLL.as_millis() as i64
                    } else {
                        1000
                    },
                    pg_sys::PG_WAIT_EXTENSION,
                );
                pg_sys::ResetLatch(pg_sys::MyLatch);
            }
        }
        pgrx::check_for_interrupts!();
    }
    // Stopped by SIGTERM with work left: at a shutdown PostgreSQL starts no worker again, but
    // the SIGTERM may come from PostgreSQL invalidating the slot this worker holds (past
    // max_slot_wal_keep_size) or from pg_terminate_backend. Exit code 1 has the worker started
    // again a second later (code 0 would end it for good); it then finds the slot lost.
    drop(reader);
    // SAFETY: ends the process as PostgreSQL's own exit path does, outside any transaction;
    // the slot is released by PostgreSQL's exit callbacks.
    unsafe { pg_sys::proc_exit(1) };
}

/// The size of the longest WAL page header (SizeOfXLogLongPHD, at a segment's start).
const PAGE_HEADER_MAX: u64 = 40;
/// Messages read from the slot per transaction (whole transactions: a large one is read whole).
const READ_LIMIT: usize = 5_000;
/// While the WAL grows slowly, read at most this often after a read (a commit after a quiet
/// spell is read at once).
const READ_EVERY: Duration = Duration::from_millis(5);
/// While the WAL grows fast (past BUSY_WAL_PER_S), read at most this often. Each read costs
/// about a millisecond besides its changes (a transaction, the version check, the decoding
/// context's work per call): reading every 5 ms took a quarter of a core under a steady write
/// load to unwatched tables; every 20 ms takes a sixteenth.
const READ_EVERY_BUSY: Duration = Duration::from_millis(20);
/// WAL bytes a second above which the WAL counts as growing fast (50 commits/s of small rows
/// write some 50 kB/s; two pgbench clients inserting rows, 3 MB/s).
const BUSY_WAL_PER_S: f64 = 1024.0 * 1024.0;
/// While reads reset the catalog caches, how often a running-transactions record is written
/// so that the slot's restart point can move past the last catalog change.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
/// How often the slot, the modes of the tables and the lag alert are looked at.
const LOOK_EVERY: Duration = Duration::from_secs(1);

pub struct WalReader {
    /// The slot, its position row and the publication exist (WAL mode).
    ready: bool,
    /// The open decoding context (holding the slot), once the first read opened it.
    wal: Option<wal::Reader>,
    /// A slot is left to read (trigger mode after WAL mode).
    draining: bool,
    warned_wal_level: bool,
    /// The WAL insert position when the last read reached the end of the WAL.
    caught_up_at_lsn: Option<u64>,
    /// The WAL flush position before the last read that reached the end: every transaction
    /// that committed before it is queued (or skipped as not watched).
    read_upto: Option<u64>,
    last_read: Option<Instant>,
    last_look: Option<Instant>,
    last_snapshot: Instant,
}

/// What a turn of the loop leaves to do.
pub enum Turn {
    /// More to read now.
    More,
    /// The WAL moved, but it was read less than READ_EVERY (or READ_EVERY_BUSY) ago: read again
    /// after this pause.
    Later(Duration),
    /// Nothing to read: sleep until a commit or the poll.
    Idle,
}

/// What to do with the tables' capture this time round.
enum Look {
    Nothing,
    Read,
}

fn insert_lsn() -> u64 {
    // SAFETY: reads the WAL insert position from shared memory under its spinlock; callable
    // in any backend, in or out of a transaction.
    unsafe { pg_sys::GetXLogInsertRecPtr() }
}

impl WalReader {
    pub fn new() -> WalReader {
        WalReader {
            ready: false,
            wal: None,
            draining: false,
            warned_wal_level: false,
            caught_up_at_lsn: None,
            read_upto: None,
            last_read: None,
            last_look: None,
            last_snapshot: Instant::now(),
        }
    }

    /// Trigger mode: nothing (left) to read.
    fn finished(&self) -> bool {
        self.last_look.is_some() && !self.draining
    }

    /// One turn of the loop. `ready`: the extension is installed at this library's version.
    pub fn turn(&mut self, ready: bool) -> Turn {
        let look_due = self.last_look.is_none_or(|t| t.elapsed() >= LOOK_EVERY);
        if look_due {
            self.last_look = Some(Instant::now());
        }
        let installed = ready || (look_due && step(super::claim::schema_version).is_some());
        if !installed && look_due {
            // DROP EXTENSION cannot drop a slot: the worker does.
            self.wal = None;
            if step(wal::slot::exists) {
                step(wal::slot::drop_all);
                log!("webhook: dropped the WAL capture's slot and publication (the extension is gone)");
                *self = WalReader::new();
                self.last_look = Some(Instant::now());
            }
            return Turn::Idle;
        }
        if !ready {
            return Turn::Idle;
        }
        let look = match guc::capture() {
            Capture::Wal => self.look_wal(look_due),
            Capture::Trigger => self.look_trigger(look_due),
        };
        match look {
            Look::Nothing => Turn::Idle,
            Look::Read => self.read(),
        }
    }

    fn look_wal(&mut self, look_due: bool) -> Look {
        if !self.ready {
            if !look_due {
                return Look::Nothing;
            }
            let level: Option<String> =
                step(|| Ok(Spi::get_one("SELECT current_setting('wal_level')")?));
            if level.as_deref() != Some("logical") {
                if !self.warned_wal_level {
                    warning!(
                        "webhook: webhook.capture = 'wal' needs wal_level = logical (it is {}); nothing is captured from the WAL until it is set and the server restarted",
                        level.unwrap_or_default()
                    );
                    self.warned_wal_level = true;
                }
                return Look::Nothing;
            }
            self.prepare_slot();
            self.ready = true;
        }
        if look_due {
            let read_upto = self.read_upto.unwrap_or(0);
            step(|| convert_to_wal(read_upto));
            self.alert_on_lag();
        }
        Look::Read
    }

    fn look_trigger(&mut self, look_due: bool) -> Look {
        if look_due && !self.draining {
            self.draining = step(wal::slot::exists);
            if self.draining {
                step(convert_to_trigger);
            }
        }
        if !self.draining {
            return Look::Nothing;
        }
        let read_upto = self.read_upto;
        if look_due && read_upto.is_some_and(|upto| step(|| wal_ranges_done(upto))) {
            step(|| {
                Spi::run("UPDATE webhook.subscription SET wal_from = NULL, wal_until = NULL")?;
                Spi::run("DELETE FROM webhook.capture_state")?;
                Ok(())
            });
            self.wal = None;
            step(wal::slot::drop_all);
            log!(
                "webhook: WAL capture's slot read up to where the triggers took over, and dropped"
            );
            self.draining = false;
            return Look::Nothing;
        }
        Look::Read
    }

    /// Create the slot (in a transaction of its own) and remember where it starts; a slot
    /// remembered but missing was lost (a failover, or invalidated by max_slot_wal_keep_size).
    fn prepare_slot(&mut self) {
        // First: pgoutput looks the publication up as of each change it decodes, and fails on
        // changes made before it existed.
        step(wal::slot::ensure_publication);
        let (exists, remembered) = (step(wal::slot::exists), step(wal::slot::remembered));
        if !exists {
            step(wal::slot::create);
            if remembered {
                warning!(
                    "webhook: the WAL capture's replication slot {} was gone (a failover to a standby, or invalidated by max_slot_wal_keep_size): changes made while it was missing were not captured; run webhook.sync() for the watched tables to send their rows again",
                    wal::slot::name()
                );
                step(|| {
                    Spi::connect_mut(|c| {
                        events::emit(
                            c,
                            events::CAPTURE_LAG_RAISED,
                            serde_json::json!({"lag_bytes": null, "lag_ms": null}),
                            None,
                        )
                    })?;
                    Ok(())
                });
            }
            step(wal::slot::remember);
            log!(
                "webhook: created the WAL capture's replication slot {}",
                wal::slot::name()
            );
        } else if !remembered {
            step(wal::slot::remember);
        }
    }

    /// Read the slot if the WAL moved since it was last read to the end (at most every
    /// READ_EVERY then).
    fn read(&mut self) -> Turn {
        let lsn = insert_lsn();
        if self.caught_up_at_lsn == Some(lsn) {
            shmem::capture_caught_up();
            return Turn::Idle;
        }
        if let (Some(read_at), Some(read_lsn)) = (self.last_read, self.caught_up_at_lsn) {
            let elapsed = read_at.elapsed();
            let rate = lsn.saturating_sub(read_lsn) as f64 / elapsed.as_secs_f64().max(0.001);
            let every = if rate > BUSY_WAL_PER_S {
                READ_EVERY_BUSY
            } else {
                READ_EVERY
            };
            if let Some(pause) = every.checked_sub(elapsed) {
                return Turn::Later(pause);
            }
        }
        self.last_read = Some(Instant::now());
        // Logical decoding reads only flushed WAL. Commits made with synchronous_commit = off
        // wait for the WAL writer (up to wal_writer_delay, 200 ms by default): flush them now.
        // The insert position is where the next record goes: right after a page's header when
        // the last record ended at the page's end, and that header is not written yet
        // (XLogFlush raises an ERROR for it). Flush up to the page's start then.
        let in_page = lsn % u64::from(pg_sys::XLOG_BLCKSZ);
        let upto = if in_page <= PAGE_HEADER_MAX {
            lsn - in_page
        } else {
            lsn
        };
        // SAFETY: flushes the WAL up to a position already inserted (XLogFlush waits for
        // insertions in progress below it), as any committing backend does.
        unsafe { pg_sys::XLogFlush(upto) };
        // SAFETY: reads the WAL flush position from shared memory; no timeline is asked for.
        let flushed = unsafe { pg_sys::GetFlushRecPtr(std::ptr::null_mut()) };
        let reader = std::panic::AssertUnwindSafe(&mut self.wal);
        let progress = step(move || {
            let reader = reader;
            let wal = match reader.0 {
                Some(wal) => wal,
                None => reader.0.insert(wal::Reader::open()?),
            };
            wal.step(flushed, READ_LIMIT)
        });
        // Committed: the slot may let go of what was read.
        if let Some(wal) = &mut self.wal {
            wal.confirm(progress.read_to);
        }
        if progress.caches_reset && self.last_snapshot.elapsed() >= SNAPSHOT_EVERY {
            // SAFETY: writes one running-transactions WAL record, as the background writer does
            // every 15 s: decoding it lets the slot's restart point move past the last catalog
            // change, after which reads stop resetting the catalog caches.
            unsafe { pg_sys::LogStandbySnapshot() };
            self.last_snapshot = Instant::now();
        }
        if progress.caught_up {
            self.caught_up_at_lsn = Some(lsn);
            self.read_upto = Some(progress.read_to);
            shmem::capture_caught_up();
            Turn::Idle
        } else {
            self.caught_up_at_lsn = None;
            Turn::More
        }
    }

    /// capture.lag.raised / capture.lag.resolved as the slot's lag crosses the setting.
    fn alert_on_lag(&mut self) {
        let Some(state) = step(wal::slot::state) else {
            return;
        };
        let over = state.lag_bytes > guc::capture_lag_alert_bytes();
        let raised = shmem::capture_lag_raised(None);
        if over == raised {
            return;
        }
        let event = if over {
            events::CAPTURE_LAG_RAISED
        } else {
            events::CAPTURE_LAG_RESOLVED
        };
        let data = serde_json::json!({"lag_bytes": state.lag_bytes, "lag_ms": wal::lag_ms()});
        step(|| {
            Spi::connect_mut(|c| events::emit(c, event, data.clone(), None))?;
            Ok(())
        });
        shmem::capture_lag_raised(Some(over));
        if let Some(status) = state.wal_status.filter(|s| s == "lost") {
            warning!("webhook: the WAL capture's replication slot is {status}");
        }
    }
}

/// Tables still captured by the trigger `watch` made in trigger mode: move them to the WAL,
/// unless the slot has not read up to where an earlier switch back to triggers happened.
fn convert_to_wal(read_upto: u64) -> Result<()> {
    convert(
        "SELECT DISTINCT t.tgrelid AS relid, t.tgrelid::regclass::text AS name
         FROM pg_catalog.pg_trigger t
         WHERE t.tgname = 'webhook_capture'
           AND t.tgfoid = 'webhook.capture()'::pg_catalog.regprocedure
           AND NOT EXISTS (SELECT FROM webhook.subscription s
                           WHERE s.relid::oid = t.tgrelid AND s.wal_until > $1::pg_catalog.pg_lsn)",
        read_upto,
        "is now captured from the WAL",
    )
}

/// Tables read from the WAL until the restart in trigger mode: give them their trigger back.
fn convert_to_trigger() -> Result<()> {
    convert(
        "SELECT DISTINCT relid::oid AS relid, relid::text AS name FROM webhook.subscription
         WHERE wal_from IS NOT NULL AND wal_until IS NULL AND $1::pg_catalog.pg_lsn IS NOT NULL",
        0,
        "is captured by its trigger again",
    )
}

/// Bring the capture of each table `sql` lists (relid, name; $1: an LSN) in line with the mode.
fn convert(sql: &str, lsn: u64, what: &str) -> Result<()> {
    let tables: Vec<(pg_sys::Oid, String)> = Spi::connect(|c| {
        c.select(sql, None, &[wal::slot::lsn_text(lsn).into()])?
            .map(|r| Ok((not_null(&r, "relid")?, not_null(&r, "name")?)))
            .collect::<Result<Vec<_>>>()
    })?;
    for (relid, name) in tables {
        Spi::connect_mut(|c| attach::sync(c, relid))?;
        log!("webhook: table {name} {what}");
    }
    Ok(())
}

/// Whether the slot has been read past every WAL range (trigger mode: it may go).
fn wal_ranges_done(read_upto: u64) -> Result<bool> {
    Ok(Spi::get_one_with_args::<bool>(
        "SELECT NOT EXISTS (SELECT FROM webhook.subscription s
                            WHERE s.wal_from IS NOT NULL
                              AND (s.wal_until IS NULL OR s.wal_until > $1::pg_catalog.pg_lsn))",
        &[wal::slot::lsn_text(read_upto).into()],
    )?
    .unwrap_or(true))
}
