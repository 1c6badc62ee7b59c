//! The capture trigger's writes into `webhook.delivery`: a heap insert and one insert per ready
//! index, without the executor, the way PostgreSQL writes its own catalogs. This is the write
//! path's hot spot, and a planned SPI insert spent most of its time starting and stopping an
//! executor, checking constraints and compiling index predicates for a single row.
//!
//! What this relies on, checked when first seen: the queue table's columns are the ones below,
//! its indexes are on plain columns, and partial-index predicates test `status` only (every new
//! delivery is `pending`, so whether an index takes new rows is decided once per index).
//! No user code runs here: the queue table may have no triggers, no rules and no CHECK
//! constraint but the extension's own on `status` (which a new `pending` row satisfies); a
//! queue table that gained any of them is refused with an error naming it, never bypassed.

use crate::delivery::Status;
use crate::error::WebhookError;
use pgrx::pg_sys;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::CStr;
use std::rc::Rc;

/// One delivery row to queue.
pub struct NewDelivery<'a> {
    pub id: i64,
    pub endpoint_id: i64,
    pub subscription_id: Option<i64>,
    pub table_name: &'a str,
    pub operation: &'a str,
    pub payload: &'a str,
    /// The webhook-id; None for a census change, which gets its message's when batched.
    pub message_id: Option<&'a str>,
    /// An ordered endpoint's key hashes (payload::order_keys); None otherwise.
    pub order_keys: Option<(i64, Option<i64>)>,
}

/// Where each column this module fills sits in the queue table's tuple (0-based).
struct Layout {
    /// The queue table this layout was read from.
    relid: pg_sys::Oid,
    natts: usize,
    id: usize,
    endpoint_id: usize,
    subscription_id: usize,
    table_name: usize,
    operation: usize,
    payload: usize,
    status: usize,
    attempts: usize,
    cycle_start: usize,
    next_attempt_at: usize,
    created_at: usize,
    /// Absent while the extension is not updated to 0.3.0 (the library is newer than the
    /// schema until `ALTER EXTENSION webhook UPDATE`).
    message_id: Option<usize>,
    /// Columns every new delivery leaves NULL: with `status`, the only ones a partial index's
    /// predicate may test, so that whether it takes a new delivery is the same for all of them.
    always_null: Vec<usize>,
    /// The key hashes of ordered endpoints (issue 15): absent before the update, like message_id.
    order_key: Option<usize>,
    order_key_old: Option<usize>,
}

/// Columns left NULL in a new delivery.
const NULL_COLUMNS: [&str; 3] = ["last_status_code", "last_error", "delivered_at"];
/// Columns 0.3.0 added and a new delivery leaves NULL (batch_id and records are set by the
/// worker when it batches census changes, sync_run_id by a sync run); absent before the update.
const NEW_NULL_COLUMNS: [&str; 3] = ["batch_id", "records", "sync_run_id"];

/// An index of the queue table, as new deliveries need it.
struct IndexSpec {
    /// Heap positions (0-based) of the index columns, key and included.
    columns: Vec<usize>,
    unique: bool,
    /// Whether a new (`pending`) delivery belongs in this index (its predicate holds).
    takes_new_rows: bool,
    info: *mut pg_sys::IndexInfo,
}

/// The one CHECK constraint of the extension's own queue table (sql/schema.sql).
const OWN_CHECK: &str = "delivery_status_check";

thread_local! {
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
    static LAYOUT: RefCell<Option<Rc<Layout>>> = const { RefCell::new(None) };
    static INDEXES: RefCell<HashMap<pg_sys::Oid, Rc<IndexSpec>>> = RefCell::new(HashMap::new());
    static QUEUE: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

/// The layout is rebuilt, and checked again, after the queue table's relcache entry is
/// invalidated (ALTER TABLE, CREATE TRIGGER, CREATE RULE, a new constraint or index). Index specs
/// are keyed by index OID, and an index's definition never changes under its OID.
///
/// # Safety
/// Called only by PostgreSQL's relcache invalidation processing, on the backend's main thread,
/// with the Datum it was registered with (unused) and the invalidated relation's OID
/// (InvalidOid for all).
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    if relid == pg_sys::InvalidOid || relid == QUEUE.with(Cell::get) {
        LAYOUT.with(|l| {
            if let Ok(mut l) = l.try_borrow_mut() {
                *l = None;
            }
        });
    }
}

fn register_invalidation_callback() {
    if !CALLBACK_REGISTERED.with(Cell::get) {
        // SAFETY: the callback is a #[pg_guard] function that only touches this thread's state;
        // PostgreSQL keeps it for the life of the backend, as long as this library is loaded.
        unsafe {
            pg_sys::CacheRegisterRelcacheCallback(
                Some(on_relcache_invalidation),
                pg_sys::Datum::from(0),
            )
        };
        CALLBACK_REGISTERED.with(|r| r.set(true));
    }
}

fn internal(message: String) -> ! {
    WebhookError::WrongState(format!(
        "{message}; the queue table webhook.delivery must keep the extension's own definition"
    ))
    .raise()
}

/// The name of column `i` of `desc`, or None for a dropped column.
///
/// # Safety
/// `desc` must be a valid tuple descriptor with more than `i` attributes.
unsafe fn attribute_name(desc: pg_sys::TupleDesc, i: usize) -> Option<String> {
    // SAFETY: the caller guarantees `i` is within the descriptor's attributes.
    let attr = unsafe { &*(*desc).attrs.as_ptr().add(i) };
    (!attr.attisdropped).then(|| {
        // SAFETY: attname is a NUL-terminated NameData inside the attribute.
        unsafe { CStr::from_ptr(attr.attname.data.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    })
}

fn name_of(data: &[std::ffi::c_char]) -> String {
    // SAFETY: every NameData and catalog name PostgreSQL hands out is NUL-terminated.
    unsafe { CStr::from_ptr(data.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Refuse a queue table that gained code a direct insert would bypass: a trigger, a rule, or a
/// CHECK constraint other than the extension's own.
///
/// # Safety
/// `rel` must be the open queue table.
unsafe fn refuse_user_code(rel: pg_sys::Relation) {
    // SAFETY: an open relation's trigger descriptor is NULL or valid while it is open, with
    // `numtriggers` triggers whose names are NUL-terminated.
    let trigger = unsafe {
        let triggers = (*rel).trigdesc;
        (!triggers.is_null() && (*triggers).numtriggers > 0).then(|| {
            CStr::from_ptr((*(*triggers).triggers).tgname)
                .to_string_lossy()
                .into_owned()
        })
    };
    if let Some(name) = trigger {
        internal(format!(
            "webhook.delivery has trigger \"{name}\", which capture's direct insert would bypass"
        ));
    }
    // SAFETY: an open relation's rule lock is NULL or valid while it is open.
    let has_rules = unsafe { !(*rel).rd_rules.is_null() && (*(*rel).rd_rules).numLocks > 0 };
    if has_rules {
        internal("webhook.delivery has a rule, which capture's direct insert would bypass".into());
    }
    // SAFETY: an open relation's descriptor constraints are NULL or hold `num_check` CHECK
    // constraints whose names are NUL-terminated.
    let checks: Vec<String> = unsafe {
        let constr = (*(*rel).rd_att).constr;
        if constr.is_null() {
            Vec::new()
        } else {
            (0..(*constr).num_check as usize)
                .map(|i| {
                    CStr::from_ptr((*(*constr).check.add(i)).ccname)
                        .to_string_lossy()
                        .into_owned()
                })
                .collect()
        }
    };
    if let Some(name) = checks.iter().find(|name| *name != OWN_CHECK) {
        internal(format!(
            "webhook.delivery has CHECK constraint \"{name}\", which capture's direct insert would bypass"
        ));
    }
}

/// Where each column sits in the queue table, read (and the table checked) once per backend
/// and again after the table changes.
///
/// # Safety
/// `rel` must be the open queue table.
unsafe fn layout(rel: pg_sys::Relation) -> Rc<Layout> {
    // SAFETY: the caller guarantees `rel` is open, so its relcache entry is valid.
    let relid = unsafe { (*rel).rd_id };
    if let Some(l) = LAYOUT.with(|l| l.borrow().clone()) {
        if l.relid == relid {
            return l;
        }
    }
    // SAFETY: the caller's contract.
    unsafe { refuse_user_code(rel) };
    // SAFETY: an open relation's descriptor is valid while it is open.
    let desc = unsafe { (*rel).rd_att };
    // SAFETY: as above.
    let natts = unsafe { (*desc).natts } as usize;
    let mut positions: HashMap<String, usize> = HashMap::new();
    for i in 0..natts {
        // SAFETY: `i` is below the descriptor's natts.
        if let Some(name) = unsafe { attribute_name(desc, i) } {
            positions.insert(name, i);
        }
    }
    // Columns 0.3.0 added may be missing (the library is newer than the schema until
    // `ALTER EXTENSION webhook UPDATE`); every other column must be there.
    let message_id = positions.remove("message_id");
    let order_key = positions.remove("order_key");
    let order_key_old = positions.remove("order_key_old");
    let mut always_null: Vec<usize> = NEW_NULL_COLUMNS
        .iter()
        .filter_map(|name| positions.remove(*name))
        .collect();
    let mut take = |name: &str| {
        positions
            .remove(name)
            .unwrap_or_else(|| internal(format!("webhook.delivery has no column \"{name}\"")))
    };
    let layout = Layout {
        relid,
        natts,
        id: take("id"),
        endpoint_id: take("endpoint_id"),
        subscription_id: take("subscription_id"),
        table_name: take("table_name"),
        operation: take("operation"),
        payload: take("payload"),
        status: take("status"),
        attempts: take("attempts"),
        cycle_start: take("cycle_start"),
        next_attempt_at: take("next_attempt_at"),
        created_at: take("created_at"),
        message_id,
        always_null: Vec::new(),
        order_key,
        order_key_old,
    };
    for name in NULL_COLUMNS {
        always_null.push(take(name));
    }
    let layout = Layout {
        always_null,
        ..layout
    };
    if let Some(extra) = positions.keys().next() {
        internal(format!(
            "webhook.delivery has an unexpected column \"{extra}\""
        ));
    }
    let layout = Rc::new(layout);
    LAYOUT.with(|l| *l.borrow_mut() = Some(layout.clone()));
    layout
}

/// Does `predicate` (an implicit-AND list) hold for the new row in `slot`?
///
/// # Safety
/// `predicate` must be an index predicate of the queue table and `slot` hold one of its rows.
unsafe fn predicate_holds(predicate: *mut pg_sys::List, slot: *mut pg_sys::TupleTableSlot) -> bool {
    // SAFETY: a throwaway executor state evaluates the predicate over the slot and is freed.
    unsafe {
        let estate = pg_sys::CreateExecutorState();
        let econtext = pg_sys::CreateExprContext(estate);
        (*econtext).ecxt_scantuple = slot;
        let state = pg_sys::ExecPrepareQual(predicate, estate);
        let holds = pg_sys::ExecQual(state, econtext);
        pg_sys::FreeExecutorState(estate);
        holds
    }
}

/// What inserting a new delivery into `index` needs, worked out once per index.
///
/// # Safety
/// `index` must be an open index of the open queue table `heap`, `layout` read from `heap`, and
/// `tuple` a new delivery formed for `heap`.
unsafe fn index_spec(
    index: pg_sys::Relation,
    heap: pg_sys::Relation,
    layout: &Layout,
    tuple: pg_sys::HeapTuple,
) -> Rc<IndexSpec> {
    // SAFETY: the caller guarantees `index` is open, so its relcache entry is valid.
    let oid = unsafe { (*index).rd_id };
    if let Some(spec) = INDEXES.with(|i| i.borrow().get(&oid).cloned()) {
        return spec;
    }
    // SAFETY: an open index's pg_class and pg_index rows are valid while it is open.
    let (name, form) = unsafe {
        (
            name_of(&(*(*index).rd_rel).relname.data),
            &*(*index).rd_index,
        )
    };
    // Only B-tree indexes: their IndexInfo, cached for the backend's life below, holds no state
    // that points into a relcache entry (GIN and BRIN keep such pointers in theirs).
    // SAFETY: an open index's pg_class row is valid while it is open.
    let access_method = unsafe { (*(*index).rd_rel).relam };
    if access_method != pg_sys::BTREE_AM_OID {
        internal(format!(
            "index \"{name}\" on webhook.delivery is not a B-tree index"
        ));
    }
    if form.indisexclusion || (form.indisunique && !form.indimmediate) {
        internal(format!(
            "index \"{name}\" on webhook.delivery is an exclusion or deferrable constraint"
        ));
    }
    // SAFETY: indkey holds indnatts attribute numbers.
    let keys = unsafe { form.indkey.values.as_slice(form.indnatts as usize) };
    let columns = keys
        .iter()
        .map(|&attnum| {
            if attnum <= 0 {
                internal(format!(
                    "index \"{name}\" on webhook.delivery indexes an expression"
                ));
            }
            attnum as usize - 1
        })
        .collect();
    // SAFETY: the predicate and slot come from this index and its heap; the slot is dropped
    // before the block ends.
    let takes_new_rows = unsafe {
        let predicate = pg_sys::RelationGetIndexPredicate(index);
        if predicate.is_null() {
            true
        } else {
            let mut used: *mut pg_sys::Bitmapset = std::ptr::null_mut();
            pg_sys::pull_varattnos(predicate.cast(), 1, &mut used);
            let member_of =
                |column: usize| column as i32 + 1 - pg_sys::FirstLowInvalidHeapAttributeNumber;
            let allowed: Vec<i32> = std::iter::once(layout.status)
                .chain(layout.always_null.iter().copied())
                .map(member_of)
                .collect();
            let mut member = pg_sys::bms_next_member(used, -1);
            while member >= 0 {
                if !allowed.contains(&member) {
                    internal(format!(
                        "the predicate of index \"{name}\" on webhook.delivery tests a column other than status and the columns a new delivery leaves NULL"
                    ));
                }
                member = pg_sys::bms_next_member(used, member);
            }
            let slot = pg_sys::MakeSingleTupleTableSlot((*heap).rd_att, &pg_sys::TTSOpsHeapTuple);
            pg_sys::ExecStoreHeapTuple(tuple, slot, false);
            let holds = predicate_holds(predicate, slot);
            pg_sys::ExecDropSingleTupleTableSlot(slot);
            holds
        }
    };
    // IndexInfo lives as long as the backend; index AMs may keep state in it.
    // SAFETY: `index` is open (the caller's contract); the switch to TopMemoryContext is undone
    // right after, or, if BuildIndexInfo raises, by the transaction abort's memory context reset.
    let info = unsafe {
        let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        let info = pg_sys::BuildIndexInfo(index);
        pg_sys::MemoryContextSwitchTo(old);
        info
    };
    let spec = Rc::new(IndexSpec {
        columns,
        unique: form.indisunique,
        takes_new_rows,
        info,
    });
    INDEXES.with(|i| i.borrow_mut().insert(oid, spec.clone()));
    spec
}

/// `s` as a text datum, palloc'd in the current memory context.
fn text_datum(s: &str) -> pg_sys::Datum {
    // SAFETY: copies `s.len()` bytes from a valid &str.
    let text = unsafe { pg_sys::cstring_to_text_with_len(s.as_ptr().cast(), s.len() as i32) };
    pg_sys::Datum::from(text)
}

/// The new delivery's column values and NULL flags, one per attribute of the queue table.
fn row_values(layout: &Layout, delivery: &NewDelivery) -> (Vec<pg_sys::Datum>, Vec<bool>) {
    let mut values = vec![pg_sys::Datum::from(0); layout.natts];
    let mut nulls = vec![true; layout.natts];
    // SAFETY: reads the current transaction's start time, set whenever a transaction runs.
    let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    let mut set = |i: usize, value: pg_sys::Datum| {
        values[i] = value;
        nulls[i] = false;
    };
    set(layout.id, delivery.id.into());
    set(layout.endpoint_id, delivery.endpoint_id.into());
    if let Some(s) = delivery.subscription_id {
        set(layout.subscription_id, s.into());
    }
    set(layout.table_name, text_datum(delivery.table_name));
    set(layout.operation, text_datum(delivery.operation));
    set(layout.payload, text_datum(delivery.payload));
    set(layout.status, text_datum(Status::Pending.as_sql()));
    set(layout.attempts, 0i32.into());
    set(layout.cycle_start, 0i32.into());
    set(layout.next_attempt_at, now.into());
    set(layout.created_at, now.into());
    match (delivery.message_id, layout.message_id) {
        (Some(m), Some(column)) => set(column, text_datum(m)),
        (Some(_), None) => internal("webhook.delivery has no column \"message_id\"".into()),
        (None, _) => {}
    }
    if let Some((key, old)) = delivery.order_keys {
        let column = |c: Option<usize>, name: &str| {
            c.unwrap_or_else(|| internal(format!("webhook.delivery has no column \"{name}\"")))
        };
        set(column(layout.order_key, "order_key"), key.into());
        if let Some(old) = old {
            set(column(layout.order_key_old, "order_key_old"), old.into());
        }
    }
    (values, nulls)
}

/// Add the entry for `tuple` to `index`, if the index takes new deliveries.
///
/// # Safety
/// `index` must be an open, ready index of the open queue table `heap`; `tuple` the delivery
/// just inserted into `heap` from `values` and `nulls`; `layout` read from `heap`.
unsafe fn insert_index_entry(
    index: pg_sys::Relation,
    heap: pg_sys::Relation,
    layout: &Layout,
    tuple: pg_sys::HeapTuple,
    values: &[pg_sys::Datum],
    nulls: &[bool],
) {
    // SAFETY: the caller's contract is index_spec's.
    let spec = unsafe { index_spec(index, heap, layout, tuple) };
    if !spec.takes_new_rows {
        return;
    }
    let mut key: Vec<pg_sys::Datum> = spec.columns.iter().map(|&c| values[c]).collect();
    let mut key_nulls: Vec<bool> = spec.columns.iter().map(|&c| nulls[c]).collect();
    let check = if spec.unique {
        pg_sys::IndexUniqueCheck::UNIQUE_CHECK_YES
    } else {
        pg_sys::IndexUniqueCheck::UNIQUE_CHECK_NO
    };
    // SAFETY: the key has one datum per index column, taken from the heap row the entry points
    // at (`t_self` of the tuple just inserted); `spec.info` was built for this index.
    unsafe {
        pg_sys::index_insert(
            index,
            key.as_mut_ptr(),
            key_nulls.as_mut_ptr(),
            &mut (*tuple).t_self,
            heap,
            check,
            false,
            spec.info,
        )
    };
}

/// Insert one `pending` delivery into the queue table `queue` (webhook.delivery's OID).
pub fn insert(queue: pg_sys::Oid, delivery: &NewDelivery) {
    register_invalidation_callback();
    QUEUE.with(|q| q.set(queue));
    let lock = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
    let keep_lock = pg_sys::NoLock as pg_sys::LOCKMODE;
    // SAFETY: opens the queue table by its OID with the lock an INSERT takes; the lock is kept
    // to the transaction's end, as the executor does, and the relation is closed below.
    let heap = unsafe { pg_sys::table_open(queue, lock) };
    // SAFETY: `heap` is the open queue table.
    let layout = unsafe { layout(heap) };
    let (mut values, mut nulls) = row_values(&layout, delivery);
    // SAFETY: one value and NULL flag per attribute of heap's descriptor (layout.natts), each
    // of its column's type: layout found every column by name in the extension's own table.
    let tuple =
        unsafe { pg_sys::heap_form_tuple((*heap).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr()) };
    // SAFETY: `tuple` was formed for `heap`'s descriptor; heap_insert sets its `t_self`.
    unsafe { pg_sys::simple_heap_insert(heap, tuple) };
    // SAFETY: `heap` is open; the list is freed below.
    let indexes = unsafe { pg_sys::RelationGetIndexList(heap) };
    // SAFETY: the length of a valid (possibly empty) list.
    let count = unsafe { pg_sys::list_length(indexes) };
    for n in 0..count {
        // SAFETY: `n` is within the list; each OID is an index of the queue table, opened with
        // the heap's lock mode and closed below.
        let index = unsafe { pg_sys::index_open(pg_sys::list_nth_oid(indexes, n), lock) };
        // An index still being built concurrently is not ready for inserts yet.
        // SAFETY: an open index's pg_index row is valid while it is open.
        if unsafe { (*(*index).rd_index).indisready } {
            // SAFETY: `index` is open and ready, `tuple` was just inserted into `heap` from
            // `values` and `nulls`, and `layout` was read from `heap`.
            unsafe { insert_index_entry(index, heap, &layout, tuple, &values, &nulls) };
        }
        // SAFETY: closes the index opened above; its lock stays to the transaction's end.
        unsafe { pg_sys::index_close(index, keep_lock) };
    }
    // SAFETY: frees the list and the tuple this function allocated, neither used again.
    unsafe {
        pg_sys::list_free(indexes);
        pg_sys::heap_freetuple(tuple);
    }
    // SAFETY: closes the table opened above; its lock stays to the transaction's end.
    unsafe { pg_sys::table_close(heap, keep_lock) };
}
