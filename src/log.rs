//! Keeps a secret an operator passes to `create_endpoint` or `rotate_secret` out of the server
//! log: an ERROR raised while such a call runs is logged without its STATEMENT and CONTEXT
//! lines, which would show the call, secret and all (`log_min_error_statement` is `error` by
//! default). Error messages never carry the secret themselves (`sign::validate_secret`).

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::Cell;
use std::sync::OnceLock;

thread_local! {
    static HIDE_NEXT_ERROR: Cell<bool> = const { Cell::new(false) };
}

static PREVIOUS_HOOK: OnceLock<pg_sys::emit_log_hook_type> = OnceLock::new();

/// While this lives, an ERROR is logged without the statement that raised it.
pub struct StatementHidden(());

pub fn statement_hidden_from_log() -> StatementHidden {
    HIDE_NEXT_ERROR.with(|h| h.set(true));
    StatementHidden(())
}

impl Drop for StatementHidden {
    fn drop(&mut self) {
        // An ERROR unwinds through here before PostgreSQL reports it: the hook clears the flag
        // then. (An ERROR caught by an exception block is never reported; the flag then hides
        // the next reported ERROR's statement too, which is only less logging.)
        if !std::thread::panicking() {
            HIDE_NEXT_ERROR.with(|h| h.set(false));
        }
    }
}

/// Install the hook; called once per process from `_PG_init`.
pub fn register() {
    // SAFETY: _PG_init runs on the backend's main thread before any error can be reported
    // through the hook; the previous hook is kept and chained, as PostgreSQL asks of hooks.
    unsafe {
        let _ = PREVIOUS_HOOK.set(pg_sys::emit_log_hook);
        pg_sys::emit_log_hook = Some(hide_statement);
    }
}

/// # Safety
/// Called only by PostgreSQL's error reporting, on the backend's main thread, with the
/// ErrorData being reported.
#[pg_guard]
unsafe extern "C-unwind" fn hide_statement(edata: *mut pg_sys::ErrorData) {
    // SAFETY: PostgreSQL passes the ErrorData being reported, valid and writable for this call.
    let edata = unsafe { &mut *edata };
    if edata.elevel >= pgrx::PgLogLevel::ERROR as i32 && HIDE_NEXT_ERROR.with(|h| h.replace(false))
    {
        edata.hide_stmt = true;
        edata.hide_ctx = true;
    }
    if let Some(Some(previous)) = PREVIOUS_HOOK.get() {
        // SAFETY: the hook that was installed before ours, called as PostgreSQL would.
        unsafe { previous(edata) };
    }
}
