//! Shared memory: the delivery workers' latches, so a committing backend can wake them.
//! Exists only when the library is in shared_preload_libraries.

use pgrx::pg_sys;
use pgrx::{pg_guard, pg_shmem_init, PgAtomic};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub const MAX_WORKERS: usize = 16;

// SAFETY: "webhook_worker_latches" is this extension's own shared memory name; nothing else
// registers it.
static LATCHES: PgAtomic<[AtomicUsize; MAX_WORKERS]> =
    unsafe { PgAtomic::new(c"webhook_worker_latches") };
static PRELOADED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
    static WAKE_AT_COMMIT: Cell<bool> = const { Cell::new(false) };
}

/// Called from `_PG_init` while preloading.
pub fn init() {
    pg_shmem_init!(LATCHES);
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
