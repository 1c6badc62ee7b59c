//! webhook: row changes to signed HTTP webhooks, from inside PostgreSQL.
//!
//! capture (trigger) -> webhook.delivery (queue table) -> worker (claim, sign, send, record).
//!
//! - `capture`: the write path, inside the writer's transaction: trigger, plan cache, payload,
//!   enqueue. Never does network I/O.
//! - `api`: the SQL functions, one file per thing they manage.
//! - `worker`: the background worker: claims, sender pool, outcome recording.
//! - `http`: the one HTTP client, used by the worker and by `test_endpoint`.
//! - Pure modules with unit tests: `endpoint` and `subscription` (validated options), `sign`,
//!   `schedule`, `network`, `delivery` (the queue's states), `message` (message ids, census
//!   batches), `events` (lifecycle and alert events); leaves: `guc`, `error`, `shmem`, `log`
//!   (keeps secrets out of the server log).

mod api;
mod capture;
mod delivery;
mod endpoint;
mod error;
mod events;
mod guc;
mod http;
mod log;
mod message;
mod network;
mod schedule;
mod schema;
mod shmem;
mod sign;
mod subscription;
mod worker;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

use pgrx::prelude::*;

pgrx::pg_module_magic!(name, version);

pgrx::extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
pgrx::extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: a plain read of a flag PostgreSQL sets before loading preloaded libraries.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    guc::register(preloading);
    log::register();
    if preloading {
        shmem::init();
        worker::register();
        if guc::capture() == guc::Capture::Wal {
            shmem::wake_capture_at_commits();
        }
    }
    // SAFETY: called from _PG_init on the main thread after the extension's GUCs are defined,
    // as PostgreSQL documents; the prefix is a NUL-terminated static string.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"webhook".as_ptr()) };
}

/// Used by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'webhook'"]
    }
}
