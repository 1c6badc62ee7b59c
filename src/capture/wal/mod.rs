//! WAL capture (SPEC §8): the capture worker reads committed changes back from a logical
//! replication slot (the built-in `pgoutput` plugin) and queues them through the same code as
//! the capture trigger (`super::queue_change`), so both modes send the same payloads.
//!
//! Reading is decode → queue → commit → confirm (`decoder`: one decoding context, kept open).
//! A slot is not transactional, so the end LSN of the last transaction whose changes were
//! queued is stored in `webhook.capture_state`, in the same transaction as the queue rows: a
//! transaction read again after a crash is skipped, and its changes keep the webhook-ids they
//! were queued with. The slot is confirmed up to what was read once that transaction committed.
//!
//! Each change is rendered with a descriptor of the columns it was made with (the `Relation`
//! message), laid out at the table's current attribute numbers wherever a column of the same
//! name and type still exists: the predicate, compiled for the table as it is, reads the
//! columns it names (which the DDL guard keeps), while `to_jsonb` renders the columns the row
//! had when it was written.

mod decoder;
mod pgoutput;
pub mod slot;

use super::payload::Op;
use super::row::Memory;
use super::{queue_change, table, Plan};
use crate::error::{Result, WebhookError};
use crate::shmem;
use crate::subscription::TableShape;
use decoder::Decoder;
use pgoutput::{Column, Message, Value};
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// A relation's plan for one column set, or None when the WAL path sends nothing for it (no
/// subscription takes changes from the WAL, or a hand-attached `capture()` trigger does).
type Cached = Option<Rc<WalPlan>>;

thread_local! {
    static PLANS: RefCell<HashMap<(u32, Vec<Column>), Cached>> = RefCell::new(HashMap::new());
    /// While the slot is read or advanced: PostgreSQL's count of shared invalidation messages
    /// (and cache resets) processed when it began.
    static DECODING_FROM: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The shared invalidation messages this backend has processed so far.
fn invalidations_processed() -> u64 {
    // SAFETY: a plain read of a counter PostgreSQL keeps for this backend (it is how
    // RangeVarGetRelidExtended detects invalidations); only the main thread touches it.
    unsafe { pg_sys::SharedInvalidMessageCounter }
}

/// Forget the plans of `relid` (all of them for InvalidOid, or when `all`); called by the
/// capture module's relcache invalidation callback. Each read and advance of the slot ends
/// with InvalidateSystemCaches (logicalfuncs.c), a reset of every cache that no catalog
/// change caused: that one is ignored, unless a real invalidation message or a cache reset
/// (both counted) was processed meanwhile.
pub(crate) fn forget(relid: pg_sys::Oid, all: bool) {
    if !all
        && relid == pg_sys::InvalidOid
        && DECODING_FROM.with(Cell::get) == Some(invalidations_processed())
    {
        return;
    }
    PLANS.with(|p| {
        if let Ok(mut plans) = p.try_borrow_mut() {
            if all || relid == pg_sys::InvalidOid {
                plans.clear();
            } else {
                plans.retain(|(r, _), _| *r != relid.to_u32());
            }
        }
    });
}

/// Where one column of a change goes in the plan's descriptor, and how its text is read.
struct Input {
    /// 0-based position in the descriptor.
    position: usize,
    function: Box<pg_sys::FmgrInfo>,
    io_param: pg_sys::Oid,
    type_modifier: i32,
}

/// `pg_attribute.attgenerated` of a stored generated column.
const GENERATED_STORED: u8 = b's';

/// The stored generated columns of a table, computed for each change from the columns it has,
/// as the executor computed them when the row was written (their expressions are immutable).
struct Generated {
    /// The plan's descriptor's slot, the expressions' input.
    slot: *mut pg_sys::TupleTableSlot,
    econtext: *mut pg_sys::ExprContext,
    /// Each generated column's position in the descriptor and its compiled expression.
    columns: Vec<(usize, *mut pg_sys::ExprState)>,
}

impl Generated {
    /// # Safety
    /// `desc` must be the plan's descriptor, with the table's attribute numbers for the
    /// columns the expressions read; `exprs` are the columns' generation expressions. Call
    /// with the plan's memory context current: everything built here lives in it.
    unsafe fn new(desc: pg_sys::TupleDesc, exprs: &[(usize, *mut pg_sys::Node)]) -> Generated {
        // SAFETY: a standalone slot and expression context in the current (plan's) memory;
        // the expressions are planned and compiled there too, reading the slot as their scan
        // tuple (a Var whose type does not match the slot's column raises an ERROR).
        unsafe {
            Generated {
                slot: pg_sys::MakeSingleTupleTableSlot(desc, &raw const pg_sys::TTSOpsHeapTuple),
                econtext: pg_sys::CreateStandaloneExprContext(),
                columns: exprs
                    .iter()
                    .map(|&(position, expr)| {
                        let planned = pg_sys::expression_planner(expr.cast());
                        (
                            position,
                            pg_sys::ExecInitExpr(planned, std::ptr::null_mut()),
                        )
                    })
                    .collect(),
            }
        }
    }

    /// Fill in the generated columns of `tuple` (whose datums and nulls are given).
    ///
    /// # Safety
    /// `tuple` must be formed from `desc`, the descriptor `self` was built for.
    unsafe fn compute(
        &self,
        desc: pg_sys::TupleDesc,
        tuple: pg_sys::HeapTuple,
        datums: &mut [pg_sys::Datum],
        nulls: &mut [bool],
    ) -> pg_sys::HeapTuple {
        // SAFETY: the slot and context are the plan's; each expression is evaluated in the
        // context's per-tuple memory, and its results are copied into the new tuple before
        // that memory is reset. The slot does not own `tuple` and lets go of it at the end.
        unsafe {
            pg_sys::ExecStoreHeapTuple(tuple, self.slot, false);
            (*self.econtext).ecxt_scantuple = self.slot;
            for &(position, state) in &self.columns {
                let Some(eval) = (*state).evalfunc else {
                    continue;
                };
                let old = pg_sys::MemoryContextSwitchTo((*self.econtext).ecxt_per_tuple_memory);
                let mut isnull = false;
                datums[position] = eval(state, self.econtext, &mut isnull);
                pg_sys::MemoryContextSwitchTo(old);
                nulls[position] = isnull;
            }
            let computed = pg_sys::heap_form_tuple(desc, datums.as_mut_ptr(), nulls.as_mut_ptr());
            pg_sys::ExecClearTuple(self.slot);
            pg_sys::MemoryContextReset((*self.econtext).ecxt_per_tuple_memory);
            computed
        }
    }
}

struct WalPlan {
    plan: Plan,
    desc: pg_sys::TupleDesc,
    natts: usize,
    inputs: Vec<Input>,
    generated: Option<Generated>,
    /// Owns `desc` and the input functions' state.
    _memory: Memory,
}

const SUBSCRIPTIONS_SQL: &str = "SELECT e.name,
        (s.wal_from OPERATOR(pg_catalog.-) '0/0'::pg_catalog.pg_lsn)::pg_catalog.int8 AS wal_from,
        (s.wal_until OPERATOR(pg_catalog.-) '0/0'::pg_catalog.pg_lsn)::pg_catalog.int8 AS wal_until
    FROM webhook.subscription s JOIN webhook.endpoint e ON e.id OPERATOR(pg_catalog.=) s.endpoint_id
    WHERE s.relid::pg_catalog.oid OPERATOR(pg_catalog.=) $1 AND s.wal_from IS NOT NULL
    ORDER BY e.name";

/// The arguments (endpoint names, each NUL-terminated) of the enabled triggers calling
/// `webhook.capture()` that `watch` did not make: those endpoints get the table's changes from
/// the trigger, so the WAL path leaves them out (never twice).
const HAND_ATTACHED_SQL: &str = "SELECT t.tgargs FROM pg_catalog.pg_trigger t
    WHERE t.tgrelid OPERATOR(pg_catalog.=) $1
      AND t.tgfoid OPERATOR(pg_catalog.=) 'webhook.capture()'::pg_catalog.regprocedure
      AND t.tgname OPERATOR(pg_catalog.<>) 'webhook_capture'
      AND t.tgenabled OPERATOR(pg_catalog.<>) 'D'";

/// The descriptor a change's columns are rendered with: the table's current attribute numbers
/// for columns that still exist with the same name and type, the table's stored generated
/// columns (pgoutput does not send them: they are computed, see `Generated`), dropped
/// placeholders for other current columns the change did not have, and the change's other
/// columns after them. Returns the descriptor, each change column's position and the
/// positions of the generated columns.
///
/// # Safety
/// `current` must be a valid descriptor; call with the plan's memory context current.
unsafe fn change_desc(
    current: pg_sys::TupleDesc,
    columns: &[Column],
) -> (pg_sys::TupleDesc, Vec<usize>, Vec<usize>) {
    // SAFETY: the caller guarantees `current` is valid; its attribute array holds natts entries.
    let attrs = unsafe { (*current).attrs.as_slice((*current).natts as usize) };
    let mut positions = Vec::with_capacity(columns.len());
    let mut extra = 0;
    for c in columns {
        let same = attrs.iter().position(|a| {
            !a.attisdropped
                && a.atttypid.to_u32() == c.type_oid
                // SAFETY: attname is a NUL-terminated NameData.
                && unsafe { std::ffi::CStr::from_ptr(a.attname.data.as_ptr()) }.to_bytes()
                    == c.name.as_bytes()
                && !positions.contains(&(a.attnum as usize - 1))
        });
        positions.push(same.unwrap_or_else(|| {
            extra += 1;
            attrs.len() + extra - 1
        }));
    }
    let natts = attrs.len() + extra;
    // SAFETY: a new descriptor of natts attributes, each initialised below exactly once.
    let desc = unsafe { pg_sys::CreateTemplateTupleDesc(natts as i32) };
    let mut generated = Vec::new();
    for position in 0..natts {
        let attno = (position + 1) as i16;
        match positions.iter().position(|&p| p == position) {
            Some(i) => {
                let c = &columns[i];
                let name = std::ffi::CString::new(c.name.replace('\0', "")).unwrap_or_default();
                // SAFETY: attno is within the descriptor; the type OID comes from the WAL and
                // is looked up in pg_type (an unknown one raises an ERROR).
                unsafe {
                    pg_sys::TupleDescInitEntry(
                        desc,
                        attno,
                        name.as_ptr(),
                        pg_sys::Oid::from(c.type_oid),
                        c.type_modifier,
                        0,
                    )
                };
            }
            None if attrs
                .get(position)
                .is_some_and(|a| !a.attisdropped && a.attgenerated as u8 == GENERATED_STORED) =>
            {
                let a = &attrs[position];
                generated.push(position);
                // SAFETY: attno is within the descriptor; name, type, modifier and collation
                // are the current table's own column's.
                unsafe {
                    pg_sys::TupleDescInitEntry(
                        desc,
                        attno,
                        a.attname.data.as_ptr(),
                        a.atttypid,
                        a.atttypmod,
                        0,
                    );
                    pg_sys::TupleDescInitEntryCollation(desc, attno, a.attcollation);
                }
            }
            None => {
                // SAFETY: as above, with a built-in type; the attribute is then marked dropped,
                // so `to_jsonb` skips it and every tuple holds NULL there.
                unsafe {
                    pg_sys::TupleDescInitEntry(
                        desc,
                        attno,
                        c"........pg.dropped........".as_ptr(),
                        pg_sys::INT4OID,
                        -1,
                        0,
                    );
                    (*desc).attrs.as_mut_slice(natts)[position].attisdropped = true;
                }
            }
        }
    }
    (desc, positions, generated)
}

/// The plan for a relation's changes made with `columns`; None when nothing is captured.
fn plan_for(relid: u32, namespace: &str, name: &str, columns: &[Column]) -> Result<Cached> {
    let key = (relid, columns.to_vec());
    if let Some(cached) = PLANS.with(|p| p.borrow().get(&key).cloned()) {
        return Ok(cached);
    }
    let generation = super::generation();
    // In a subtransaction: a plan that cannot be built (an error of PostgreSQL's included)
    // costs this change, not the worker (it would fail again at the same change forever).
    let built = match super::sync::in_subtransaction(|| {
        build(pg_sys::Oid::from(relid), namespace, name, columns)
    }) {
        Ok(built) => built,
        Err(e) => {
            warning!(
                "webhook: WAL capture of {namespace}.{name}: a change written with the columns ({}) cannot be captured and is not sent: {e}",
                columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
            );
            return Ok(None);
        }
    };
    if super::generation() == generation {
        PLANS.with(|p| p.borrow_mut().insert(key, built.clone()));
    }
    Ok(built)
}

fn build(relid: pg_sys::Oid, namespace: &str, name: &str, columns: &[Column]) -> Result<Cached> {
    super::register_invalidation_callback();
    // Read with a snapshot of now (`update` takes one per statement; a read-only `select` would
    // use the step's, taken before the slot was read): a subscription made just before the
    // change was committed before it, so it is seen.
    let (mut subscriptions, hand_endpoints) = Spi::connect_mut(|c| {
        let subs = c
            .update(SUBSCRIPTIONS_SQL, None, &[relid.into()])?
            .map(|r| {
                Ok((
                    crate::error::not_null::<String>(&r, "name")?,
                    crate::error::not_null::<i64>(&r, "wal_from")? as u64,
                    r.get_by_name::<i64, _>("wal_until")?.map(|u| u as u64),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut hand: Vec<String> = Vec::new();
        for row in c.update(HAND_ATTACHED_SQL, None, &[relid.into()])? {
            let args = crate::error::not_null::<Vec<u8>>(&row, "tgargs")?;
            hand.extend(
                args.split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned()),
            );
        }
        Ok::<_, WebhookError>((subs, hand))
    })?;
    subscriptions.retain(|(endpoint, _, _)| !hand_endpoints.contains(endpoint));
    if subscriptions.is_empty() {
        return Ok(None);
    }
    let current = table::load(relid)?;
    let memory = Memory::new(c"webhook wal plan");
    // SAFETY: the table exists (its subscriptions do: dropping it removes them); it is opened
    // and closed again under AccessShareLock, which the transaction keeps.
    let relation = unsafe { pg_sys::relation_open(relid, pg_sys::AccessShareLock as i32) };
    // SAFETY: the open relation's descriptor; the new descriptor lives in `memory`.
    let (desc, positions, generated) =
        memory.run(|| unsafe { change_desc((*relation).rd_att, columns) });
    let generated: Vec<(usize, *mut pg_sys::Node)> = generated
        .into_iter()
        .map(|position| {
            // SAFETY: the generation expression of a stored generated column of the open
            // relation, copied into the plan's memory.
            let expr = memory
                .run(|| unsafe { pg_sys::build_column_default(relation, (position + 1) as i32) });
            (position, expr)
        })
        .filter(|(_, expr)| !expr.is_null())
        .collect();
    // SAFETY: closes what was opened above, keeping the lock.
    unsafe { pg_sys::relation_close(relation, pg_sys::NoLock as i32) };
    // SAFETY: registers the descriptor's row type (a copy) in the backend's record type cache,
    // so `to_jsonb` can find it from the tuples' headers.
    let desc = unsafe { pg_sys::BlessTupleDesc(desc) };
    // SAFETY: `desc` was just built with natts attributes.
    let natts = unsafe { (*desc).natts } as usize;
    // SAFETY: as above; attribute names are NUL-terminated NameData.
    let live: Vec<(String, bool)> = unsafe { (*desc).attrs.as_slice(natts) }
        .iter()
        .filter(|a| !a.attisdropped)
        .map(|a| {
            // SAFETY: as above.
            let name = unsafe { std::ffi::CStr::from_ptr(a.attname.data.as_ptr()) };
            (
                name.to_string_lossy().into_owned(),
                a.atttypid == pg_sys::TEXTARRAYOID,
            )
        })
        .collect();
    // The change's columns in the descriptor's order, as the trigger sees the table's.
    let shape = TableShape {
        qualified_name: format!("{namespace}.{name}"),
        schema: namespace.to_string(),
        table: name.to_string(),
        primary_key: current
            .primary_key
            .into_iter()
            .filter(|k| live.iter().any(|(c, _)| c == k))
            .collect(),
        columns: live,
    };
    let names: Vec<&str> = subscriptions.iter().map(|(n, _, _)| n.as_str()).collect();
    // SAFETY: `desc` describes the tuples this plan renders, as the blessed RECORD type, with
    // the table's attribute numbers for every column a subscription names (change_desc).
    let mut plan = unsafe {
        super::plan(
            "WAL capture",
            relid,
            desc,
            pg_sys::RECORDOID,
            shape,
            &names,
            super::Misfit::LeaveOut,
        )?
    };
    for target in &mut plan.targets {
        target.wal_range = subscriptions
            .iter()
            .find(|(n, _, _)| *n == target.endpoint_name)
            .map(|(_, from, until)| (*from, *until));
    }
    let inputs = columns
        .iter()
        .zip(positions)
        .map(|(c, position)| {
            let mut function = Box::new(pg_sys::FmgrInfo::default());
            let (mut input, mut io_param) = (pg_sys::InvalidOid, pg_sys::InvalidOid);
            // SAFETY: the type exists (the descriptor was built from it); the function's state
            // lives in `memory`, which the plan owns.
            unsafe {
                pg_sys::getTypeInputInfo(pg_sys::Oid::from(c.type_oid), &mut input, &mut io_param);
                pg_sys::fmgr_info_cxt(input, function.as_mut(), memory.context());
            }
            Input {
                position,
                function,
                io_param,
                type_modifier: c.type_modifier,
            }
        })
        .collect();
    let generated = (!generated.is_empty()).then(|| {
        // SAFETY: `desc` has the table's attribute numbers for the columns the expressions
        // read (change_desc); built in the plan's memory.
        memory.run(|| unsafe { Generated::new(desc, &generated) })
    });
    Ok(Some(Rc::new(WalPlan {
        plan,
        desc,
        natts,
        inputs,
        generated,
        _memory: memory,
    })))
}

impl WalPlan {
    /// A heap tuple of the plan's descriptor from a change's column values; `Unchanged` (a
    /// TOASTed value an UPDATE kept) is taken from `base`, the old row. Palloc'd in the
    /// current memory context.
    fn tuple(&self, values: &[Value], base: Option<&[Value]>) -> pg_sys::HeapTuple {
        let mut datums = vec![pg_sys::Datum::from(0); self.natts];
        let mut nulls = vec![true; self.natts];
        for (i, input) in self.inputs.iter().enumerate() {
            let value = match values.get(i) {
                Some(Value::Unchanged) => base.and_then(|b| b.get(i)).unwrap_or(&Value::Null),
                Some(v) => v,
                None => &Value::Null,
            };
            let Value::Text(text) = value else {
                continue;
            };
            // SAFETY: a NUL-terminated copy of the text in the current memory context, read by
            // the column type's input function, as COPY FROM would.
            datums[input.position] = unsafe {
                let cstr = pg_sys::pnstrdup(text.as_ptr().cast(), text.len());
                pg_sys::InputFunctionCall(
                    std::ptr::from_ref(input.function.as_ref()).cast_mut(),
                    cstr,
                    input.io_param,
                    input.type_modifier,
                )
            };
            nulls[input.position] = false;
        }
        // SAFETY: datums and nulls hold natts entries each, for the plan's descriptor.
        let tuple =
            unsafe { pg_sys::heap_form_tuple(self.desc, datums.as_mut_ptr(), nulls.as_mut_ptr()) };
        match &self.generated {
            // SAFETY: `tuple` was just formed from the descriptor `generated` was built for.
            Some(generated) => unsafe {
                generated.compute(self.desc, tuple, &mut datums, &mut nulls)
            },
            None => tuple,
        }
    }
}

/// How long since the capture worker last read the WAL up to its end; None when it has not since
/// the server started.
pub fn lag_ms() -> Option<i64> {
    // SAFETY: reads the system clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    shmem::capture_caught_up_at().map(|at| ((now - at) / 1000).max(0))
}

/// What one step did.
pub struct Progress {
    /// Whether the read reached the position asked for.
    pub caught_up: bool,
    /// Every transaction that committed before this position was read (and its changes
    /// queued, or skipped as not watched).
    pub read_to: u64,
    /// The catalog caches were reset around the read, as they are until the slot's restart
    /// point passes the last catalog change (`decoder`).
    pub caches_reset: bool,
}

/// Messages queued in one subtransaction.
const CHUNK: usize = 1000;

/// The transaction being read.
struct Txn {
    skip: bool,
    occurred_at: Rc<str>,
}

/// A change to queue: the `row`-th message of a fetch.
struct Work {
    plan: Rc<WalPlan>,
    row: usize,
    lsn: u64,
    occurred_at: Rc<str>,
}

/// The WAL's insert position.
fn insert_lsn() -> u64 {
    // SAFETY: reads the WAL insert position from shared memory under its spinlock.
    unsafe { pg_sys::GetXLogInsertRecPtr() }
}

fn parse(data: &[u8]) -> Result<Message<'_>> {
    pgoutput::parse(data).map_err(|e| WebhookError::Internal(format!("WAL capture: {e}")))
}

/// Queue the changes of one fetch in a subtransaction; if that fails, queue them one by one,
/// each in a subtransaction of its own, and skip (with a WARNING naming it) any that fails,
/// as the trigger would have failed the write that made it. True when a worker needs waking.
fn queue_all(work: &[Work], rows: &[(u64, Vec<u8>)], memory: &Memory) -> Result<bool> {
    let one = |w: &Work| -> Result<bool> {
        let message = parse(&rows[w.row].1)?;
        let wake = memory.run(|| apply(&w.plan, &message, w.lsn, &w.occurred_at));
        memory.reset();
        Ok(wake)
    };
    let all = super::sync::in_subtransaction(|| {
        work.iter().try_fold(false, |wake, w| Ok(one(w)? || wake))
    });
    if let Ok(wake) = all {
        return Ok(wake);
    }
    memory.reset();
    let mut wake = false;
    for w in work {
        match super::sync::in_subtransaction(|| one(w)) {
            Ok(woke) => wake |= woke,
            Err(e) => {
                memory.reset();
                warning!(
                    "webhook: the change of table {} at WAL position {} could not be captured and is not sent: {e}",
                    w.plan.plan.table.qualified_name,
                    slot::lsn_text(w.lsn)
                );
            }
        }
    }
    Ok(wake)
}

/// The capture worker's reading state: the open decoding context and the relations pgoutput
/// has described (it describes each once, and again after an invalidation).
pub struct Reader {
    decoder: Decoder,
    relations: HashMap<u32, (String, String, Vec<Column>)>,
    /// The transaction being read (a read ends after whole records, and so whole transactions,
    /// but one may still be open when a read ends early).
    txn: Option<Txn>,
}

impl Reader {
    /// Take the slot and open a decoding context at its confirmed position (in a transaction).
    pub fn open() -> Result<Reader> {
        Ok(Reader {
            decoder: decoding(Decoder::open)?,
            relations: HashMap::new(),
            txn: None,
        })
    }

    /// After the step's transaction committed: every transaction before `lsn` is queued.
    pub fn confirm(&mut self, lsn: u64) {
        self.decoder.confirm(lsn);
    }

    /// Decode the WAL up to `end` (flushed), or about `limit` messages, and queue the changes,
    /// in the caller's transaction; call `confirm` with `Progress::read_to` once it committed.
    pub fn step(&mut self, end: u64, limit: usize) -> Result<Progress> {
        let slot = slot::name();
        // Before decoding (and building plans) takes any lock: a session that locks
        // webhook.capture_state holds the worker back before it holds a lock on any table.
        if !slot::installed()? {
            return Ok(Progress {
                caught_up: true,
                read_to: 0,
                caches_reset: false,
            });
        }
        let applied = slot::applied_lsn(&slot)?;
        let read = decoding(|| self.decoder.read(end, limit))?;
        let memory = Memory::new(c"webhook wal change");
        let mut last_end = applied;
        let mut wake = false;
        let mut accepted_upto = 0u64;
        for chunk in read.messages.chunks(CHUNK) {
            // First what to queue, then queue it: a change that cannot be queued (its
            // predicate raises an error, say) must not stop capture at that LSN for good.
            let mut work: Vec<Work> = Vec::new();
            for (row, (lsn, data)) in chunk.iter().enumerate() {
                match parse(data)? {
                    Message::Begin {
                        final_lsn,
                        commit_time,
                        ..
                    } => {
                        self.txn = Some(Txn {
                            skip: final_lsn < applied,
                            occurred_at: super::rfc3339(commit_time).into(),
                        });
                    }
                    Message::Commit { end_lsn, .. } => {
                        if self.txn.take().is_some_and(|t| !t.skip) {
                            last_end = last_end.max(end_lsn);
                        }
                    }
                    Message::Relation {
                        relid,
                        namespace,
                        name,
                        columns,
                        ..
                    } => {
                        self.relations.insert(relid, (namespace, name, columns));
                    }
                    Message::Insert { relid, .. }
                    | Message::Update { relid, .. }
                    | Message::Delete { relid, .. } => {
                        let Some(t) = self.txn.as_ref().filter(|t| !t.skip) else {
                            continue;
                        };
                        let Some((namespace, name, columns)) = self.relations.get(&relid) else {
                            return Err(WebhookError::Internal(format!(
                                "WAL capture: a change of relation {relid} came before its description"
                            )));
                        };
                        // A subscription or hand-made trigger committed before this change
                        // sent its invalidation before the change was written: take in every
                        // invalidation sent before the WAL's current end, once per stretch.
                        if *lsn >= accepted_upto {
                            accepted_upto = insert_lsn();
                            // SAFETY: processes pending catalog invalidations, as acquiring a
                            // lock does; inside the step's transaction.
                            unsafe { pg_sys::AcceptInvalidationMessages() };
                        }
                        if let Some(plan) = plan_for(relid, namespace, name, columns)? {
                            work.push(Work {
                                plan,
                                row,
                                lsn: *lsn,
                                occurred_at: t.occurred_at.clone(),
                            });
                        }
                    }
                    Message::Other(_) => {}
                }
            }
            wake |= queue_all(&work, chunk, &memory)?;
        }
        if last_end > applied {
            Spi::connect_mut(|client| slot::record_applied(client, &slot, last_end))?;
        }
        if wake {
            shmem::wake_workers_at_commit();
        }
        Ok(Progress {
            caught_up: read.reached,
            read_to: read.upto,
            caches_reset: read.caches_reset,
        })
    }
}

/// Read or advance the slot with `f`: without the LOG lines PostgreSQL writes each time logical
/// decoding starts (many a second; LOG ranks above ERROR in the server log's order, so only
/// `fatal` hides it, and what `f` raises is still reported, as the worker's FATAL), and
/// keeping the plans through the cache reset decoding ends with (see `forget`).
fn decoding<R>(f: impl FnOnce() -> R) -> R {
    DECODING_FROM.with(|d| d.set(Some(invalidations_processed())));
    let result = quiet_log(f);
    DECODING_FROM.with(|d| d.set(None));
    result
}

fn quiet_log<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: a GUC nesting level of the current transaction, as a function's SET clause
    // opens; the setting is restored when the level is closed below, or by the transaction's
    // abort if `f` raises. The worker is a superuser, so the SUSET setting is allowed.
    let level = unsafe {
        let level = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            c"log_min_messages".as_ptr(),
            c"fatal".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        level
    };
    let result = f();
    // SAFETY: closes the level opened above (restoring log_min_messages).
    unsafe { pg_sys::AtEOXact_GUC(true, level) };
    result
}

/// Queue one change for the subscriptions whose WAL range holds its LSN.
fn apply(plan: &WalPlan, message: &Message, lsn: u64, occurred_at: &str) -> bool {
    let (op, old, new) = match message {
        Message::Insert { new, .. } => (Op::Insert, None, Some(plan.tuple(new, None))),
        Message::Update { old, new, .. } => {
            let Some(old) = old else {
                warning!(
                    "webhook: an UPDATE of {} came without its old row (REPLICA IDENTITY is not FULL); not sent",
                    plan.plan.table.qualified_name
                );
                return false;
            };
            (
                Op::Update,
                Some(plan.tuple(old, None)),
                Some(plan.tuple(new, Some(old))),
            )
        }
        Message::Delete { old, .. } => (Op::Delete, Some(plan.tuple(old, None)), None),
        _ => return false,
    };
    let in_range = |t: &super::Target| {
        t.wal_range
            .is_some_and(|(from, until)| lsn >= from && until.is_none_or(|u| lsn < u))
    };
    // SAFETY: both tuples were formed from the plan's descriptor, the one its targets were
    // built for.
    unsafe { queue_change(&plan.plan, op, old, new, plan.desc, occurred_at, in_range) }
}
