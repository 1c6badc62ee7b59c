//! Shared memory: the delivery workers' latches, so a committing backend can wake them, and
//! their health (`webhook.workers`). Exists only when the library is in shared_preload_libraries.

use pgrx::pg_sys;
use pgrx::{pg_guard, pg_shmem_init, PGRXSharedMemory, PgAtomic, PgLwLock};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub const MAX_WORKERS: usize = 16;

// SAFETY: "webhook_worker_latches" is this extension's own shared memory name; nothing else
// registers it.
static LATCHES: PgAtomic<[AtomicUsize; MAX_WORKERS]> =
    unsafe { PgAtomic::new(c"webhook_worker_latches") };
static PRELOADED: AtomicBool = AtomicBool::new(false);
// SAFETY: "webhook_capture_status" is this extension's own shared memory name.
/// WAL capture (SPEC §8): [when the capture worker last had read the whole WAL (a
/// TimestampTz), whether capture.lag.raised is in force (0 or 1), the capture worker's latch].
static CAPTURE_STATUS: PgAtomic<[AtomicUsize; 3]> =
    unsafe { PgAtomic::new(c"webhook_capture_status") };

/// Bytes of a worker's last error kept (the message is cut at a character boundary).
const ERROR_LEN: usize = 512;

/// What one worker slot publishes. `pid` 0: no worker runs in the slot (never started, stopped,
/// or ended by an error and not restarted yet); `last_error` outlives the process, so the
/// restarted worker's row shows why its predecessor ended.
#[derive(Clone, Copy)]
pub struct Health {
    pub pid: i32,
    pub started_at: pg_sys::TimestampTz,
    pub last_loop_at: pg_sys::TimestampTz,
    pub in_flight: i32,
    error_len: u16,
    error: [u8; ERROR_LEN],
}

impl Default for Health {
    fn default() -> Health {
        Health {
            pid: 0,
            started_at: 0,
            last_loop_at: 0,
            in_flight: 0,
            error_len: 0,
            error: [0; ERROR_LEN],
        }
    }
}

impl Health {
    pub fn last_error(&self) -> Option<String> {
        (self.error_len > 0)
            .then(|| String::from_utf8_lossy(&self.error[..self.error_len as usize]).into_owned())
    }

    fn set_error(&mut self, message: &str) {
        let mut end = message.len().min(ERROR_LEN);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        self.error[..end].copy_from_slice(&message.as_bytes()[..end]);
        self.error_len = end as u16;
    }
}

#[derive(Clone, Copy, Default)]
pub struct Workers([Health; MAX_WORKERS]);

// SAFETY: plain old data (integers and a byte array), no pointers: valid at any address and in
// any process that maps the segment.
unsafe impl PGRXSharedMemory for Workers {}

// SAFETY: "webhook_worker_health" is this extension's own shared memory and LWLock tranche name.
static WORKERS: PgLwLock<Workers> = unsafe { PgLwLock::new(c"webhook_worker_health") };

thread_local! {
    /// This process's worker slot, once it has published itself.
    static MY_SLOT: Cell<Option<usize>> = const { Cell::new(None) };
}

thread_local! {
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
    static WAKE_AT_COMMIT: Cell<bool> = const { Cell::new(false) };
    /// The committing transaction wrote (has an id): the capture worker has WAL to read.
    static WROTE: Cell<bool> = const { Cell::new(false) };
}

/// Called from `_PG_init` while preloading.
pub fn init() {
    pg_shmem_init!(LATCHES);
    pg_shmem_init!(WORKERS);
    pg_shmem_init!(CAPTURE_STATUS);
    PRELOADED.store(true, Ordering::Relaxed);
}

/// A worker publishes its latch (which lives in shared memory, in its PGPROC).
pub fn publish_latch(slot: usize) {
    // SAFETY: a plain read of MyLatch, which PostgreSQL sets before any extension code runs; in a
    // worker with shared memory access it is the PGPROC's procLatch, at the same address everywhere.
    let latch = unsafe { pg_sys::MyLatch } as usize;
    LATCHES.get()[slot].store(latch, Ordering::SeqCst);
}

pub fn withdraw_latch(slot: usize) {
    LATCHES.get()[slot].store(0, Ordering::SeqCst);
}

fn now() -> pg_sys::TimestampTz {
    // SAFETY: reads the system clock; callable in any PostgreSQL process.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// A worker starting in `slot` shows itself in `webhook.workers` (keeping the last error).
pub fn worker_started(slot: usize) {
    MY_SLOT.with(|s| s.set(Some(slot)));
    let now = now();
    let mut workers = WORKERS.exclusive();
    let h = &mut workers.0[slot];
    // SAFETY: a plain read of MyProcPid, set by PostgreSQL before any extension code runs.
    h.pid = unsafe { pg_sys::MyProcPid };
    h.started_at = now;
    h.last_loop_at = now;
    h.in_flight = 0;
}

/// Once per loop: the worker is alive, with this many requests in flight.
pub fn worker_looped(in_flight: usize) {
    let Some(slot) = MY_SLOT.with(Cell::get) else {
        return;
    };
    let now = now();
    let mut workers = WORKERS.exclusive();
    workers.0[slot].last_loop_at = now;
    workers.0[slot].in_flight = in_flight.min(i32::MAX as usize) as i32;
}

/// The worker stops: its row goes; with `error`, the reason stays for its successor's row.
pub fn worker_stopping(error: Option<&str>) {
    let Some(slot) = MY_SLOT.with(Cell::get) else {
        return;
    };
    let mut workers = WORKERS.exclusive();
    let h = &mut workers.0[slot];
    h.pid = 0;
    h.in_flight = 0;
    if let Some(message) = error {
        h.set_error(message);
    }
}

/// Every slot with a running worker, by slot; empty unless preloaded.
pub fn workers() -> Vec<Health> {
    if !PRELOADED.load(Ordering::Relaxed) {
        return Vec::new();
    }
    let workers = WORKERS.share();
    workers.0.iter().filter(|h| h.pid != 0).copied().collect()
}

/// The first worker has read the WAL up to its end (WAL capture).
pub fn capture_caught_up() {
    if PRELOADED.load(Ordering::Relaxed) {
        CAPTURE_STATUS.get()[0].store(now().max(0) as usize, Ordering::Relaxed);
    }
}

/// When the WAL was last read up to its end (None: not since the server started).
pub fn capture_caught_up_at() -> Option<pg_sys::TimestampTz> {
    if !PRELOADED.load(Ordering::Relaxed) {
        return None;
    }
    match CAPTURE_STATUS.get()[0].load(Ordering::Relaxed) {
        0 => None,
        at => Some(at as pg_sys::TimestampTz),
    }
}

/// Whether capture.lag.raised is in force; `set` changes it and returns the previous value.
pub fn capture_lag_raised(set: Option<bool>) -> bool {
    if !PRELOADED.load(Ordering::Relaxed) {
        return false;
    }
    let flag = &CAPTURE_STATUS.get()[1];
    match set {
        Some(v) => flag.swap(usize::from(v), Ordering::Relaxed) != 0,
        None => flag.load(Ordering::Relaxed) != 0,
    }
}

/// The capture worker publishes its latch, for `wake_capture_at_commits`.
pub fn publish_capture_latch() {
    if PRELOADED.load(Ordering::Relaxed) {
        // SAFETY: as in publish_latch.
        let latch = unsafe { pg_sys::MyLatch } as usize;
        CAPTURE_STATUS.get()[2].store(latch, Ordering::SeqCst);
    }
}

/// WAL capture: every client backend's writing transaction wakes the capture worker as it
/// commits, so a change is read within a millisecond instead of at the worker's next poll.
/// Registered while preloading (backends inherit it), when `webhook.capture = 'wal'`.
pub fn wake_capture_at_commits() {
    // SAFETY: the callback is a #[pg_guard] function that only touches this thread's state and
    // shared memory; registered once, in the postmaster, before any backend is forked.
    unsafe { pg_sys::RegisterXactCallback(Some(on_capture_xact_event), std::ptr::null_mut()) };
}

/// # Safety
/// Called only by PostgreSQL's CallXactCallbacks, on the backend's main thread, with the null
/// argument it was registered with.
#[pg_guard]
unsafe extern "C-unwind" fn on_capture_xact_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT => {
            // SAFETY: plain reads of this backend's type and its transaction's id (if any).
            let wrote = unsafe {
                pg_sys::MyBackendType == pg_sys::BackendType::B_BACKEND
                    && pg_sys::GetTopTransactionIdIfAny() != pg_sys::InvalidTransactionId
            };
            WROTE.with(|w| w.set(wrote));
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT if WROTE.with(|w| w.replace(false)) => {
            let latch = CAPTURE_STATUS.get()[2].load(Ordering::SeqCst);
            if latch != 0 {
                // SAFETY: as in wake_workers: a published procLatch, in shared memory for the
                // life of the cluster; a stale one only causes a spurious wake-up.
                unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
            }
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PREPARE => {
            WROTE.with(|w| w.set(false));
        }
        _ => {}
    }
}

/// Wake the workers now (WAL capture: `watch` waiting for the slot).
pub fn wake_workers_now() {
    if PRELOADED.load(Ordering::Relaxed) {
        wake_workers();
    }
}

fn wake_workers() {
    for slot in LATCHES.get().iter() {
        let latch = slot.load(Ordering::SeqCst);
        if latch != 0 {
            // A stale latch (its worker gone, the PGPROC reused) only causes a spurious wake-up.
            // SAFETY: a non-zero slot holds a worker's procLatch, which lives in shared memory for
            // the life of the cluster (a crash restart reinitialises the slots); SetLatch may be
            // called on any process's shared latch.
            unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
        }
    }
}

/// Ask for the workers to be woken when the current transaction commits.
/// Cheap enough for every captured row: the callback is registered once per backend.
pub fn wake_workers_at_commit() {
    if !PRELOADED.load(Ordering::Relaxed) {
        return;
    }
    WAKE_AT_COMMIT.with(|w| w.set(true));
    CALLBACK_REGISTERED.with(|r| {
        if !r.get() {
            // SAFETY: the callback is a #[pg_guard] function that only touches this thread's state
            // and ignores its argument; registered once per backend, while this library stays loaded.
            unsafe { pg_sys::RegisterXactCallback(Some(on_xact_event), std::ptr::null_mut()) };
            r.set(true);
        }
    });
}

/// Wakes the workers when a transaction that captured rows commits.
///
/// # Safety
/// Called only by PostgreSQL's CallXactCallbacks, on the backend's main thread, with the
/// transaction event and the null argument it was registered with (`wake_workers_at_commit`).
#[pg_guard]
unsafe extern "C-unwind" fn on_xact_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT if WAKE_AT_COMMIT.with(|w| w.replace(false)) => {
            wake_workers();
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PREPARE => {
            WAKE_AT_COMMIT.with(|w| w.set(false));
        }
        _ => {}
    }
}
