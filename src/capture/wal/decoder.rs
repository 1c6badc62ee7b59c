//! A logical decoding context kept open across reads, as a walsender keeps one: each WAL record
//! is decoded once, where `pg_logical_slot_peek_binary_changes` would set up a context for
//! each call and decode again everything since the slot's restart point. The built-in
//! `pgoutput` plugin writes the messages; they are collected here and queued by `super::step`
//! in the worker's transaction. The slot is confirmed only after that transaction committed.
//!
//! Everything is created inside a transaction, so PostgreSQL does not mark the worker as
//! decoding outside one (PROC_IN_LOGICAL_DECODING would hide its snapshots' xmin).

use super::slot;
use crate::error::{Result, WebhookError};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::ffi::CString;

// PostgreSQL functions the bindings lack (replication/decode.h), or wrap: the reader's
// callbacks are passed by address, so their C symbols are named here.
unsafe extern "C-unwind" {
    /// Decode one record the reader has read. Called through pg_guard_ffi_boundary.
    fn LogicalDecodingProcessRecord(
        ctx: *mut pg_sys::LogicalDecodingContext,
        record: *mut pg_sys::XLogReaderState,
    );
    fn read_local_xlog_page(
        state: *mut pg_sys::XLogReaderState,
        target_page: pg_sys::XLogRecPtr,
        request_len: std::ffi::c_int,
        target_record: pg_sys::XLogRecPtr,
        buffer: *mut std::ffi::c_char,
    ) -> std::ffi::c_int;
    fn wal_segment_open(
        state: *mut pg_sys::XLogReaderState,
        segment: pg_sys::XLogSegNo,
        timeline: *mut pg_sys::TimeLineID,
    );
    fn wal_segment_close(state: *mut pg_sys::XLogReaderState);
}

thread_local! {
    /// The messages the plugin wrote during the current `Decoder::read`, with their LSNs.
    static OUTPUT: RefCell<Vec<(u64, Vec<u8>)>> = const { RefCell::new(Vec::new()) };
}

/// The plugin is about to write a message: start it afresh.
///
/// # Safety
/// Called by PostgreSQL's logical decoding with the context it was created for.
#[pg_guard]
unsafe extern "C-unwind" fn prepare_write(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _lsn: pg_sys::XLogRecPtr,
    _xid: pg_sys::TransactionId,
    _last_write: bool,
) {
    // SAFETY: `out` is the context's output buffer, valid while it decodes.
    unsafe { pg_sys::resetStringInfo((*ctx).out) };
}

/// The plugin wrote a message: keep a copy.
///
/// # Safety
/// As `prepare_write`.
#[pg_guard]
unsafe extern "C-unwind" fn write(
    ctx: *mut pg_sys::LogicalDecodingContext,
    lsn: pg_sys::XLogRecPtr,
    _xid: pg_sys::TransactionId,
    _last_write: bool,
) {
    // SAFETY: `out` holds `len` bytes the plugin just wrote.
    let data = unsafe {
        let out = &*(*ctx).out;
        std::slice::from_raw_parts(out.data.cast::<u8>(), out.len as usize).to_vec()
    };
    OUTPUT.with(|o| o.borrow_mut().push((lsn, data)));
}

/// What one read returned.
pub struct Read {
    /// pgoutput messages, with the LSN PostgreSQL gives each.
    pub messages: Vec<(u64, Vec<u8>)>,
    /// Whether the WAL was read up to the position asked for.
    pub reached: bool,
    /// The end of the last record read: every transaction that committed before it was
    /// decoded (and its messages are above).
    pub upto: u64,
    /// Whether the caches were reset around this read (see `Decoder::caches_differ`).
    pub caches_reset: bool,
}

/// The open decoding context, holding the slot.
pub struct Decoder {
    ctx: *mut pg_sys::LogicalDecodingContext,
    /// PostgreSQL's count of shared invalidation messages (and cache resets) this process had
    /// processed at the last read.
    invalidations_seen: u64,
    /// A WAL position at or after the commit of the newest catalog change known: the insert
    /// position when the count last moved (or when the context was opened).
    catalog_changed_at: u64,
}

fn insert_lsn() -> u64 {
    // SAFETY: reads the WAL insert position from shared memory under its spinlock.
    unsafe { pg_sys::GetXLogInsertRecPtr() }
}

impl Decoder {
    /// Take the slot and open a context at its confirmed position (inside a transaction).
    pub fn open() -> Result<Decoder> {
        let name = CString::new(slot::name()).map_err(|e| WebhookError::Internal(e.to_string()))?;
        // SAFETY: the slot exists (the worker made it) and only this process uses it; the
        // context, its options and its reader are allocated in TopMemoryContext so they outlive
        // the transaction, and are freed by Drop. The reader reads only flushed WAL of this
        // server's timeline (read_local_xlog_page), opening segments with wal_segment_open.
        unsafe {
            pg_sys::ReplicationSlotAcquire(name.as_ptr(), true);
            let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
            let option = |key: &std::ffi::CStr, value: &std::ffi::CStr| {
                pg_sys::makeDefElem(
                    pg_sys::pstrdup(key.as_ptr()),
                    pg_sys::makeString(pg_sys::pstrdup(value.as_ptr())).cast(),
                    -1,
                )
            };
            let mut options: *mut pg_sys::List = std::ptr::null_mut();
            options = pg_sys::lappend(options, option(c"proto_version", c"1").cast());
            options = pg_sys::lappend(
                options,
                option(c"publication_names", c"webhook_capture").cast(),
            );
            let mut routine = pg_sys::XLogReaderRoutine {
                page_read: Some(read_local_xlog_page),
                segment_open: Some(wal_segment_open),
                segment_close: Some(wal_segment_close),
            };
            let ctx = pg_sys::CreateDecodingContext(
                pg_sys::InvalidXLogRecPtr as u64,
                options,
                false,
                &mut routine,
                Some(prepare_write),
                Some(write),
                None,
            );
            pg_sys::MemoryContextSwitchTo(old);
            // Decoding starts at the restart point, so that transactions committing after
            // the confirmed position are seen whole.
            pg_sys::XLogBeginRead((*ctx).reader, (*(*ctx).slot).data.restart_lsn);
            Ok(Decoder {
                ctx,
                invalidations_seen: pg_sys::SharedInvalidMessageCounter,
                catalog_changed_at: insert_lsn(),
            })
        }
    }

    /// Decode the WAL up to `end` (flushed), stopping early once `limit` messages were
    /// written (always after a whole record, so after whole transactions).
    pub fn read(&mut self, end: u64, limit: usize) -> Result<Read> {
        OUTPUT.with(|o| o.borrow_mut().clear());
        let mut error: *mut std::ffi::c_char = std::ptr::null_mut();
        // SAFETY: the context and its reader are open (self); each record the reader returns
        // is decoded before the next is read, as pg_logical_slot_get_changes does. The reader
        // allocates its buffers in the memory current when it first needs them, and keeps
        // them: the decoding context's own, which outlives the transaction.
        unsafe {
            let reader = (*self.ctx).reader;
            let reset = self.caches_differ();
            let old = pg_sys::MemoryContextSwitchTo((*self.ctx).context);
            if reset {
                pg_sys::InvalidateSystemCaches();
            }
            // (The reader moves EndRecPtr as it reads.)
            loop {
                if (*reader).EndRecPtr >= end {
                    break;
                }
                // Decoding a transaction ends its subtransaction, which leaves the
                // transaction's memory current: back to the context's own for the reader.
                pg_sys::MemoryContextSwitchTo((*self.ctx).context);
                let record = pg_sys::XLogReadRecord(reader, &mut error);
                if !error.is_null() {
                    pg_sys::MemoryContextSwitchTo(old);
                    let message = std::ffi::CStr::from_ptr(error).to_string_lossy();
                    return Err(WebhookError::Internal(format!(
                        "WAL capture: could not read the WAL: {message}"
                    )));
                }
                if !record.is_null() {
                    let ctx = self.ctx;
                    // SAFETY: an ERROR raised while decoding becomes a Rust panic here (on
                    // the main thread), as for any function of the bindings.
                    pg_sys::ffi::pg_guard_ffi_boundary(|| {
                        LogicalDecodingProcessRecord(ctx, reader)
                    });
                }
                if OUTPUT.with(|o| o.borrow().len()) >= limit {
                    break;
                }
                pgrx::check_for_interrupts!();
            }
            if reset {
                pg_sys::InvalidateSystemCaches();
            }
            pg_sys::MemoryContextSwitchTo(old);
            let messages = OUTPUT.with(|o| std::mem::take(&mut *o.borrow_mut()));
            Ok(Read {
                messages,
                reached: (*reader).EndRecPtr >= end,
                upto: (*reader).EndRecPtr,
                caches_reset: reset,
            })
        }
    }

    /// Whether the catalog caches must be reset around this read. Decoding builds catalog
    /// entries as of each change it replays (historic snapshots), the worker's own queries as
    /// of now: neither may see the other's when the catalogs changed in between, so
    /// pg_logical_slot_get_changes resets all caches before and after. They differ only if a
    /// catalog change committed after a change decoding may still replay, all of which lie at
    /// or after the slot's restart point. Every catalog change sends shared invalidations at
    /// its commit, counted as this process takes them in (all pending are taken in here):
    /// the insert position when the count moved bounds the change's commit from above. So the
    /// caches are reset until the restart point passes that position (within seconds: it moves
    /// at each running-transactions record), and not at all while the catalogs do not change.
    /// Resetting costs more than a millisecond a read in catalog lookups built again.
    fn caches_differ(&mut self) -> bool {
        // SAFETY: takes in pending invalidation messages, as any lock acquisition does (inside
        // the step's transaction); then plain reads of this process's counter and of the slot
        // it holds (only this process moves its restart point).
        unsafe {
            pg_sys::AcceptInvalidationMessages();
            if pg_sys::SharedInvalidMessageCounter != self.invalidations_seen {
                self.invalidations_seen = pg_sys::SharedInvalidMessageCounter;
                self.catalog_changed_at = insert_lsn();
            }
            self.catalog_changed_at >= (*(*self.ctx).slot).data.restart_lsn
        }
    }

    /// Tell the slot that every transaction committed before `lsn` is queued (committed): it
    /// may let go of the WAL before its restart point. Saved at the next checkpoint, or at
    /// once when the restart point moved; a crash before then reads a little again, which
    /// `webhook.capture_state` skips.
    pub fn confirm(&mut self, lsn: u64) {
        // SAFETY: the slot is this process's (acquired in open); both calls take the slot's
        // spinlock.
        unsafe {
            if (*(*self.ctx).slot).data.confirmed_flush < lsn {
                pg_sys::LogicalConfirmReceivedLocation(lsn);
                pg_sys::ReplicationSlotMarkDirty();
            }
        }
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: frees the context opened in `open` (calling the plugin's shutdown) and lets go
        // of the slot, as pg_logical_slot_get_changes does when it ends.
        unsafe {
            pg_sys::FreeDecodingContext(self.ctx);
            pg_sys::ReplicationSlotRelease();
        }
    }
}
