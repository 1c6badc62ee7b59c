//! webhook: row changes to signed HTTP webhooks, from inside PostgreSQL.
//!
//! capture (trigger) -> webhook.delivery (queue table) -> worker (claim, sign, send, record).

mod api;
mod capture;
mod endpoint;
mod enqueue;
mod error;
mod guc;
mod network;
mod payload;
mod schedule;
mod shmem;
mod sign;
mod subscription;
mod table;
mod worker;

use pgrx::prelude::*;

pgrx::pg_module_magic!(name, version);

pgrx::extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
pgrx::extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: a plain read of a flag PostgreSQL sets before loading preloaded libraries.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    guc::register(preloading);
    if preloading {
        shmem::init();
        worker::register();
    }
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
