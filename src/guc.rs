//! Every setting in one place, with its default and doc line.

use crate::network::NetworkPolicy;
use crate::schedule;
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::{CStr, CString};
use std::time::Duration;

pub static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));
/// SPEC §4's schedule: retries after 4, 8, 16, 32 and 64 seconds.
pub const DEFAULT_RETRY_DELAYS: &CStr = c"4s,8s,16s,32s,64s";
pub static RETRY_DELAYS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(DEFAULT_RETRY_DELAYS));
pub static TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
pub static WORKERS: GucSetting<i32> = GucSetting::<i32>::new(1);
pub static MAX_CONCURRENCY: GucSetting<i32> = GucSetting::<i32>::new(32);
pub static MAX_CONCURRENCY_PER_ENDPOINT: GucSetting<i32> = GucSetting::<i32>::new(16);
pub static CLAIM_SIZE: GucSetting<i32> = GucSetting::<i32>::new(500);
pub static ALLOWED_NETWORKS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c""));
pub static RETENTION_S: GucSetting<i32> = GucSetting::<i32>::new(7 * 86_400);
pub static ROTATION_OVERLAP_S: GucSetting<i32> = GucSetting::<i32>::new(86_400);
pub static ALERT_THRESHOLD: GucSetting<i32> = GucSetting::<i32>::new(10);
pub static DISABLE_AFTER_S: GucSetting<i32> = GucSetting::<i32>::new(5 * 86_400);
pub static CAPTURE: GucSetting<Capture> = GucSetting::<Capture>::new(Capture::Trigger);
/// In kB (the setting takes memory units): 1GB.
pub static CAPTURE_LAG_ALERT_KB: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);

/// How changes are captured (SPEC §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, pgrx::PostgresGucEnum)]
pub enum Capture {
    /// The AFTER ROW trigger, in the writer's transaction.
    #[name = c"trigger"]
    Trigger,
    /// Logical decoding of the WAL after commit, by the first worker.
    #[name = c"wal"]
    Wal,
}

fn register_postmaster_settings() {
    GucRegistry::define_string_guc(
        c"webhook.database",
        c"Database the delivery worker connects to.",
        c"The database where CREATE EXTENSION webhook was run.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"webhook.workers",
        c"Number of delivery workers; they share the queue without double sends.",
        c"",
        &WORKERS,
        1,
        crate::shmem::MAX_WORKERS as i32,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"webhook.capture",
        c"How row changes are captured: trigger (default) or wal.",
        c"wal reads committed changes back from the WAL by logical decoding (needs wal_level = logical); watched tables then have no trigger.",
        &CAPTURE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

/// The capture mode; `trigger` when the library is not preloaded (no worker could decode).
pub fn capture() -> Capture {
    CAPTURE.get()
}

/// `webhook.capture_lag_alert` in bytes.
pub fn capture_lag_alert_bytes() -> i64 {
    i64::from(CAPTURE_LAG_ALERT_KB.get()) * 1024
}

/// Define every setting. The postmaster-only ones (which database, how many workers) exist
/// only when the library is preloaded: PostgreSQL refuses to create them later, and a backend
/// that loads the library without preloading (CREATE EXTENSION, LOAD) has no worker to set up.
pub fn register(preloading: bool) {
    if preloading {
        register_postmaster_settings();
    }
    // SAFETY: the check hook is a #[pg_guard] function.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"webhook.retry_delays",
            c"Waits before retries 1, 2, ... of a failed delivery (e.g. 4s,8s,16s,32s,64s).",
            c"Comma-separated durations with units ms, s, min or h. After the last retry fails the delivery is failed.",
            &RETRY_DELAYS,
            GucContext::Sighup,
            GucFlags::default(),
            Some(check_retry_delays),
            None,
            None,
        );
    }
    GucRegistry::define_int_guc(
        c"webhook.timeout",
        c"Time limit of one delivery attempt (connect + send + response).",
        c"A timed-out attempt is a failure and is retried.",
        &TIMEOUT_MS,
        100,
        600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"webhook.max_concurrency",
        c"Requests a delivery worker keeps in flight at once.",
        c"",
        &MAX_CONCURRENCY,
        1,
        1024,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"webhook.max_concurrency_per_endpoint",
        c"Requests a delivery worker keeps in flight to any one endpoint.",
        c"Keeps a slow or timing-out endpoint from taking every sender.",
        &MAX_CONCURRENCY_PER_ENDPOINT,
        1,
        1024,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"webhook.claim_size",
        c"Deliveries a worker claims in one transaction.",
        c"Formerly webhook.batch_size; renamed so that it does not clash with an endpoint's batch_size.",
        &CLAIM_SIZE,
        1,
        10_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // SAFETY: the check hook is a #[pg_guard] function.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"webhook.allowed_networks",
            c"CIDR ranges that endpoints may reach although they are private, loopback or reserved.",
            c"Comma-separated, e.g. 127.0.0.0/8,::1/128. Other non-public destinations are refused.",
            &ALLOWED_NETWORKS,
            GucContext::Sighup,
            GucFlags::default(),
            Some(check_allowed_networks),
            None,
            None,
        );
    }
    GucRegistry::define_int_guc(
        c"webhook.retention",
        c"How long delivered deliveries (and their attempts) are kept; 0 keeps them forever.",
        c"Failed deliveries stay until redelivered or removed with webhook.purge().",
        &RETENTION_S,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"webhook.rotation_overlap",
        c"How long a secret replaced by rotate_secret keeps signing.",
        c"Each replaced secret signs until its own expiry, fixed when it was replaced; 0 stops it at once.",
        &ROTATION_OVERLAP_S,
        0,
        30 * 86_400,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"webhook.alert_threshold",
        c"Failed attempts in a row after which endpoint.alert.raised is sent about an endpoint.",
        c"Sent once when an endpoint's consecutive_failures reaches this; endpoint.alert.resolved follows its next success.",
        &ALERT_THRESHOLD,
        1,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"webhook.disable_after",
        c"How long an endpoint may fail without a success before it is disabled; 0 never disables.",
        c"Checked when an attempt fails; the disabled endpoint's deliveries wait, and endpoint.disabled is sent.",
        &DISABLE_AFTER_S,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"webhook.capture_lag_alert",
        c"WAL capture lag (bytes of WAL not yet captured) past which capture.lag.raised is sent.",
        c"webhook.capture = 'wal' only; capture.lag.resolved follows when the lag is back under it.",
        &CAPTURE_LAG_ALERT_KB,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_KB,
    );
}

/// Check hook of `webhook.retry_delays`.
///
/// # Safety
/// Called only by PostgreSQL's GUC machinery (call_string_check_hook), on the backend's main
/// thread, with `newval` pointing at the candidate value (NULL or a NUL-terminated string).
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn check_retry_delays(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pgrx::pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL calls this as a string check hook, which is what check_string requires.
    unsafe { check_string(newval, |raw| schedule::parse_delays(raw).map(|_| ())) }
}

/// Check hook of `webhook.allowed_networks`.
///
/// # Safety
/// Called only by PostgreSQL's GUC machinery (call_string_check_hook), on the backend's main
/// thread, with `newval` pointing at the candidate value (NULL or a NUL-terminated string).
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn check_allowed_networks(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pgrx::pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL calls this as a string check hook, which is what check_string requires.
    unsafe { check_string(newval, |raw| NetworkPolicy::parse(raw).map(|_| ())) }
}

/// A string GUC check hook body: reject the value with `parse`'s message as the detail.
///
/// # Safety
/// Must be called from a string GUC check hook on the backend's main thread: `newval` is NULL
/// or points at NULL or a NUL-terminated string valid for the call, and the GUC machinery reads
/// the error detail and code set here once the hook returns.
unsafe fn check_string(
    newval: *mut *mut std::ffi::c_char,
    parse: impl Fn(&str) -> Result<(), String>,
) -> bool {
    if newval.is_null() {
        return true;
    }
    // SAFETY: the caller guarantees a non-NULL `newval` points at the candidate value's pointer.
    let value = unsafe { *newval };
    if value.is_null() {
        return true;
    }
    // SAFETY: GUC string values are NUL-terminated and stay valid while the check hook runs.
    let raw = unsafe { CStr::from_ptr(value) }
        .to_string_lossy()
        .into_owned();
    match parse(&raw) {
        Ok(()) => true,
        Err(msg) => {
            let detail = CString::new(msg).unwrap_or_default();
            // SAFETY: inside a check hook (the caller's contract), where GUC_check_errcode only
            // records the code for the GUC machinery's report.
            unsafe {
                pgrx::pg_sys::GUC_check_errcode(
                    pgrx::PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE as i32,
                )
            };
            // SAFETY: `detail` is NUL-terminated; the copy is palloc'd in the current memory
            // context, which outlives the GUC machinery's report of this hook's failure.
            let copy = unsafe { pgrx::pg_sys::pstrdup(detail.as_ptr()) };
            // SAFETY: a static that only this backend's main thread touches; the GUC machinery
            // cleared it before calling the hook and reads it after the hook returns false.
            unsafe { pgrx::pg_sys::GUC_check_errdetail_string = copy };
            false
        }
    }
}

fn string(setting: &GucSetting<Option<CString>>) -> String {
    setting
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub fn database() -> String {
    string(&DATABASE)
}

pub fn retry_delays() -> Vec<Duration> {
    // The check hook rejects bad values, so this parses.
    schedule::parse_delays(&string(&RETRY_DELAYS)).unwrap_or_default()
}

pub fn timeout() -> Duration {
    Duration::from_millis(TIMEOUT_MS.get() as u64)
}

pub fn workers() -> usize {
    WORKERS.get() as usize
}

pub fn max_concurrency() -> usize {
    MAX_CONCURRENCY.get() as usize
}

pub fn max_concurrency_per_endpoint() -> i32 {
    MAX_CONCURRENCY_PER_ENDPOINT.get()
}

pub fn claim_size() -> i64 {
    CLAIM_SIZE.get() as i64
}

pub fn retention_secs() -> i32 {
    RETENTION_S.get()
}

pub fn rotation_overlap_secs() -> i32 {
    ROTATION_OVERLAP_S.get()
}

pub fn alert_threshold() -> i32 {
    ALERT_THRESHOLD.get()
}

pub fn disable_after_secs() -> i32 {
    DISABLE_AFTER_S.get()
}

pub fn network_policy() -> NetworkPolicy {
    // The check hook rejects bad values, so this parses.
    NetworkPolicy::parse(&string(&ALLOWED_NETWORKS)).unwrap_or_default()
}
