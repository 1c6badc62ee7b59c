//! The capture trigger: row -> payload -> queue insert, in the writer's transaction. No I/O.
//!
//! Runs as whatever role writes the table. Queue rows are written without SQL (`enqueue`); the
//! subscription look-ups (once per session) and `nextval` run as the owner of the queue table,
//! the way PostgreSQL's own foreign-key triggers switch user, with every operator qualified.

pub mod attach;
mod enqueue;
mod payload;
pub mod predicate;
mod row;
pub mod sync;
pub mod table;
pub mod wal;

use crate::endpoint::Format;
use crate::error::Result as WebhookResult;
use crate::error::{not_null, OrRaise, WebhookError};
use crate::subscription::{Events, Options, Shape, TableShape};
use crate::{message, shmem};
use enqueue::NewDelivery;
use payload::{Change, Meta, Op, Row};
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiHeapTupleData};
use predicate::Predicate;
use row::ToJsonb;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// One endpoint a trigger sends to, with that endpoint's subscription for the table.
pub(crate) struct Target {
    endpoint_id: i64,
    endpoint_name: String,
    /// A disabled endpoint still captures, but its deliveries need no worker wake-up.
    enabled: bool,
    format: Format,
    /// Ordering per key (SPEC §7): its deliveries carry their key's hash.
    ordered: bool,
    subscription_id: Option<i64>,
    shape: Shape,
    /// The subscription's predicate, compiled for the table's current shape.
    predicate: Option<Predicate>,
    /// The columns an UPDATE must change (any of them) to be worth rendering as JSON at all;
    /// an UPDATE that leaves their images untouched is not sent (SPEC §5).
    update_attnums: Vec<i32>,
    /// WAL capture (SPEC §8): the changes this subscription takes from the WAL, by LSN
    /// (from, until); None for a trigger's targets.
    pub(crate) wal_range: Option<(u64, Option<u64>)>,
}

/// Everything a trigger needs per row, built once per backend and trigger.
pub(crate) struct Plan {
    relid: pg_sys::Oid,
    table: TableShape,
    targets: Vec<Target>,
    to_jsonb: ToJsonb,
    queue_owner: pg_sys::Oid,
    queue: pg_sys::Oid,
    sequence: pg_sys::Oid,
    /// Whether the queue has message ids (0.3.0); until `ALTER EXTENSION webhook UPDATE` a
    /// rownd change's message id is its delivery id, as before.
    message_ids: bool,
}

thread_local! {
    static PLANS: RefCell<HashMap<pg_sys::Oid, Rc<Plan>>> = RefCell::new(HashMap::new());
    static GENERATION: Cell<u64> = const { Cell::new(0) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
    /// webhook.endpoint's OID: the API invalidates its relcache entry when an endpoint changes.
    static ENDPOINT_TABLE: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    static OCCURRED_AT: RefCell<Option<(i64, Rc<str>)>> = const { RefCell::new(None) };
}

/// The subscription columns each schema version has beyond 0.2.0's. Between a package upgrade
/// and `ALTER EXTENSION webhook UPDATE` this library runs against the older schema: capture
/// keeps working there, with the options that schema can hold.
fn filter_columns(schema_version: &str) -> &'static str {
    if crate::schema::before_0_3(schema_version) {
        "NULL::pg_catalog.text AS behavior, NULL::pg_catalog.text[] AS changed,
         NULL::pg_catalog.text AS predicate_node, 'none'::pg_catalog.text AS ordering"
    } else {
        "s.behavior, s.changed, s.predicate_node, e.ordering"
    }
}

fn targets_sql(schema_version: &str) -> String {
    format!(
        "SELECT e.id AS endpoint_id, e.format, e.enabled, s.id AS subscription_id, s.events, s.columns,
        s.rename::pg_catalog.text AS rename, s.redact, s.lookup, s.visibility_column, s.name,
        {}
    FROM webhook.endpoint e{TARGETS_FROM}",
        filter_columns(schema_version)
    )
}

const TARGETS_FROM: &str = "
    LEFT JOIN webhook.subscription s ON s.endpoint_id OPERATOR(pg_catalog.=) e.id
                                    AND s.relid::pg_catalog.oid OPERATOR(pg_catalog.=) $1
    WHERE e.name OPERATOR(pg_catalog.=) $2";

/// The extension owner owns the queue; looked up without touching schema webhook, with the
/// installed schema's version.
const OWNER_SQL: &str =
    "SELECT e.extowner, e.extversion::pg_catalog.text FROM pg_catalog.pg_extension e
    WHERE e.extname OPERATOR(pg_catalog.=) 'webhook'";
const QUEUE_SQL: &str = "SELECT 'webhook.delivery'::pg_catalog.regclass::pg_catalog.oid,
    'webhook.delivery_id_seq'::pg_catalog.regclass::pg_catalog.oid,
    'webhook.endpoint'::pg_catalog.regclass::pg_catalog.oid";
const MESSAGE_IDS_SQL: &str = "SELECT EXISTS (SELECT FROM pg_catalog.pg_attribute a
    WHERE a.attrelid OPERATOR(pg_catalog.=) 'webhook.delivery'::pg_catalog.regclass
      AND a.attname OPERATOR(pg_catalog.=) 'message_id' AND NOT a.attisdropped)";

/// Plans are dropped whenever PostgreSQL invalidates the watched table's relcache entry (its
/// columns or triggers changed, or the API changed one of its subscriptions), and all of them
/// when the API invalidates webhook.endpoint's (an endpoint changed).
///
/// # Safety
/// Called only by PostgreSQL's relcache invalidation processing, on the backend's main thread,
/// with the Datum it was registered with (unused) and the invalidated relation's OID
/// (InvalidOid for all).
#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    GENERATION.with(|g| g.set(g.get() + 1));
    PLANS.with(|p| {
        if let Ok(mut plans) = p.try_borrow_mut() {
            if relid == pg_sys::InvalidOid || relid == ENDPOINT_TABLE.with(Cell::get) {
                plans.clear();
            } else {
                plans.retain(|_, plan| plan.relid != relid);
            }
        }
    });
    wal::forget(relid, relid == ENDPOINT_TABLE.with(Cell::get));
}

/// Counts relcache invalidations: a plan built while it moved may be stale, so is not kept.
fn generation() -> u64 {
    GENERATION.with(Cell::get)
}

pub(crate) fn register_invalidation_callback() {
    CALLBACK_REGISTERED.with(|r| {
        if !r.get() {
            // SAFETY: the callback is a #[pg_guard] function that only touches this thread's
            // state; PostgreSQL keeps it for the life of the backend, as long as this library is
            // loaded.
            unsafe {
                pg_sys::CacheRegisterRelcacheCallback(
                    Some(on_relcache_invalidation),
                    pg_sys::Datum::from(0),
                )
            };
            r.set(true);
        }
    });
}

/// Run `f` as the queue owner; PostgreSQL restores the user on error (transaction abort).
fn as_user<R>(user: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_context = 0;
    // SAFETY: both out-pointers are valid locals; it only reads this backend's current user state.
    unsafe { pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context) };
    // SAFETY: the saved user and context are restored below; if `f` raises, the (sub)transaction
    // abort restores the user and context saved when the (sub)transaction began.
    unsafe {
        pg_sys::SetUserIdAndSecContext(
            user,
            saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        )
    };
    let result = f();
    // SAFETY: puts back exactly the user and context read above, ending the switch.
    unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) };
    result
}

/// The extension owner and the installed schema version.
pub(crate) fn extension() -> WebhookResult<(pg_sys::Oid, String)> {
    let missing = || WebhookError::Internal("extension webhook is not installed".into());
    let (owner, version) = Spi::get_two::<pg_sys::Oid, String>(OWNER_SQL)?;
    Ok((owner.ok_or_else(missing)?, version.ok_or_else(missing)?))
}

fn column<T: IntoDatum + FromDatum>(
    row: &SpiHeapTupleData,
    name: &str,
) -> WebhookResult<Option<T>> {
    Ok(row.get_by_name(name)?)
}

/// The subscription options stored for this endpoint and table, or the defaults when the
/// trigger was attached by hand without `watch`.
pub(crate) fn stored_options(row: &SpiHeapTupleData) -> WebhookResult<Options> {
    if column::<i64>(row, "subscription_id")?.is_none() {
        return Ok(Options {
            rename: serde_json::json!({}),
            ..Default::default()
        });
    }
    let rename: Option<String> = column(row, "rename")?;
    let behavior: Option<String> = column(row, "behavior")?;
    Ok(Options {
        // With a behaviour, the stored events are the behaviour's own.
        events: match behavior {
            Some(_) => None,
            None => Some(column(row, "events")?.unwrap_or_default()),
        },
        behavior,
        changed: column(row, "changed")?,
        columns: column(row, "columns")?,
        rename: rename
            .and_then(|r| serde_json::from_str(&r).ok())
            .unwrap_or_else(|| serde_json::json!({})),
        redact: column(row, "redact")?.unwrap_or_default(),
        lookup: column(row, "lookup")?,
        visibility_column: column(row, "visibility_column")?,
        name: column(row, "name")?,
    })
}

/// One trigger argument's endpoint and its subscription for the table.
fn target(
    c: &SpiClient,
    trigger_name: &str,
    table: &TableShape,
    relid: pg_sys::Oid,
    desc: pg_sys::TupleDesc,
    name: &str,
    targets_sql: &str,
) -> WebhookResult<Target> {
    let found = c.select(targets_sql, None, &[relid.into(), name.into()])?;
    let Some(row) = found.into_iter().next() else {
        return Err(WebhookError::UnknownEndpointInTrigger {
            endpoint: name.to_string(),
            trigger: trigger_name.to_string(),
            table: table.qualified_name.clone(),
        });
    };
    let shape = stored_options(&row)?.resolve(table).map_err(|e| {
        WebhookError::WrongState(format!(
            "trigger \"{trigger_name}\" on {}: subscription of endpoint \"{name}\" no longer fits the table: {e}",
            table.qualified_name
        ))
    })?;
    let format: Option<String> = column(&row, "format")?;
    let node: Option<String> = column(&row, "predicate_node")?;
    // SAFETY: `desc` is the watched table's current descriptor, the shape the stored predicate
    // was analysed for (the DDL guard refuses retyping or dropping a column it reads).
    let predicate = node
        .map(|n| unsafe { Predicate::compile(&n, desc) })
        .transpose()?;
    let visibility = shape.visibility_column.iter();
    let update_columns: Option<Vec<&String>> = match (&shape.changed, shape.only_sent_changes) {
        (Some(cols), _) => Some(cols.iter().chain(visibility).collect()),
        (None, true) => Some(
            shape
                .fields
                .iter()
                .map(|(c, _)| c)
                .chain(visibility)
                .collect(),
        ),
        (None, false) => None,
    };
    // SAFETY: `desc` is a valid descriptor of the table.
    let update_attnums = unsafe {
        match update_columns {
            Some(cols) => row::attnums(desc, cols),
            None => row::live_attnums(desc),
        }
    };
    Ok(Target {
        predicate,
        update_attnums,
        wal_range: None,
        endpoint_id: not_null(&row, "endpoint_id")?,
        endpoint_name: name.to_string(),
        enabled: column(&row, "enabled")?.unwrap_or(true),
        format: format
            .as_deref()
            .and_then(|f| Format::parse(f).ok())
            .unwrap_or(Format::Rownd),
        subscription_id: column(&row, "subscription_id")?,
        ordered: column::<String>(&row, "ordering")?.as_deref() == Some("key"),
        shape,
    })
}

fn build_plan(
    trigger_name: &str,
    relation: pg_sys::Relation,
    endpoint_names: &[String],
) -> WebhookResult<Plan> {
    // SAFETY: the trigger's open relation, valid for the call.
    let (relid, desc, row_type) = unsafe {
        (
            (*relation).rd_id,
            (*relation).rd_att,
            (*(*relation).rd_rel).reltype,
        )
    };
    let table = table::load(relid)?;
    let names: Vec<&str> = endpoint_names.iter().map(String::as_str).collect();
    // SAFETY: the relation's own descriptor and row type.
    unsafe {
        plan(
            trigger_name,
            relid,
            desc,
            row_type,
            table,
            &names,
            Misfit::Fail,
        )
    }
}

/// What `plan` does with a subscription whose options do not fit the rows' columns.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Misfit {
    /// The trigger: an error (the DDL guard keeps the table fitting its subscriptions).
    Fail,
    /// WAL capture: rows read from the WAL have the columns they had when they were written,
    /// maybe before a column the options name existed. That endpoint is left out of the plan
    /// (those rows are not sent to it), with a WARNING.
    LeaveOut,
}

/// A plan for rows of `relid` described by `desc`, whose composite type is `row_type`, sent to
/// the endpoints named.
///
/// # Safety
/// `desc` must describe the rows the plan is used for, `row_type` must be their type (or
/// RECORD for a blessed descriptor), and `desc` must have the table's attribute numbers for
/// every column a subscription names.
pub(crate) unsafe fn plan(
    label: &str,
    relid: pg_sys::Oid,
    desc: pg_sys::TupleDesc,
    row_type: pg_sys::Oid,
    table: TableShape,
    endpoint_names: &[&str],
    misfit: Misfit,
) -> WebhookResult<Plan> {
    register_invalidation_callback();
    let (queue_owner, schema_version) = extension()?;
    let targets_sql = targets_sql(&schema_version);
    as_user(queue_owner, || {
        Spi::connect(|c| {
            let missing = || WebhookError::Internal("the queue's objects are missing".into());
            let (queue, sequence, endpoint_table) =
                c.select(QUEUE_SQL, None, &[])?
                    .first()
                    .get_three::<pg_sys::Oid, pg_sys::Oid, pg_sys::Oid>()?;
            ENDPOINT_TABLE.with(|e| e.set(endpoint_table.unwrap_or(pg_sys::InvalidOid)));
            let mut targets = Vec::with_capacity(endpoint_names.len());
            for name in endpoint_names {
                match target(c, label, &table, relid, desc, name, &targets_sql) {
                    Ok(t) => targets.push(t),
                    Err(WebhookError::WrongState(e)) if misfit == Misfit::LeaveOut => {
                        let why = e
                            .split_once("fits the table: ")
                            .map_or(e.as_str(), |(_, w)| w);
                        warning!(
                            "webhook: {label} of {}: the options of endpoint \"{name}\" do not fit changes written with the columns ({}): {why}; those changes are not sent to it",
                            table.qualified_name,
                            table.columns.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>().join(", ")
                        );
                    }
                    Err(e) => return Err(e),
                }
            }
            let message_ids = c
                .select(MESSAGE_IDS_SQL, None, &[])?
                .first()
                .get_one::<bool>()?
                .unwrap_or(false);
            Ok(Plan {
                relid,
                targets,
                // SAFETY: the caller guarantees `row_type` is the rows' type.
                to_jsonb: unsafe { ToJsonb::new(row_type) },
                queue_owner,
                message_ids,
                queue: queue.ok_or_else(missing)?,
                sequence: sequence.ok_or_else(missing)?,
                table,
            })
        })
    })
}

fn plan_for(trigger: &pg_sys::Trigger, relation: pg_sys::Relation) -> Rc<Plan> {
    register_invalidation_callback();
    if let Some(plan) = PLANS.with(|p| p.borrow().get(&trigger.tgoid).cloned()) {
        return plan;
    }
    let generation = GENERATION.with(|g| g.get());
    // SAFETY: PostgreSQL's trigger name is NUL-terminated and valid for the trigger call.
    let name = unsafe { std::ffi::CStr::from_ptr(trigger.tgname) }
        .to_string_lossy()
        .into_owned();
    let args: Vec<String> = (0..trigger.tgnargs as usize)
        .map(|i| {
            // SAFETY: tgargs holds tgnargs NUL-terminated strings, valid for the trigger call.
            unsafe { std::ffi::CStr::from_ptr(*trigger.tgargs.add(i)) }
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    if args.is_empty() {
        WebhookError::WrongState(format!(
            "trigger \"{name}\" calls webhook.capture() without arguments; pass the endpoint names, e.g. EXECUTE FUNCTION webhook.capture('my_endpoint')"
        ))
        .raise();
    }
    let plan = Rc::new(build_plan(&name, relation, &args).or_raise());
    if GENERATION.with(|g| g.get()) == generation {
        PLANS.with(|p| p.borrow_mut().insert(trigger.tgoid, plan.clone()));
    }
    plan
}

fn parse_row(json: &str) -> Row<'_> {
    Row::parse(json).unwrap_or_else(|e| {
        WebhookError::Internal(format!("to_jsonb gave no JSON object: {e}")).raise()
    })
}

/// A PostgreSQL timestamp (microseconds since 2000-01-01 UTC) as RFC 3339, as payloads send it.
pub(crate) fn rfc3339(pg_epoch_us: i64) -> String {
    let unix_ns = (pg_epoch_us as i128 + 946_684_800_000_000) * 1000;
    time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The capturing transaction's start time, RFC 3339; formatted once per transaction.
fn occurred_at() -> Rc<str> {
    // SAFETY: only reads the backend's transaction start time; called on the main thread from
    // the trigger, inside the capturing transaction.
    let pg_epoch_us = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    OCCURRED_AT.with(|cached| {
        let mut cached = cached.borrow_mut();
        if let Some((at, text)) = &*cached {
            if *at == pg_epoch_us {
                return text.clone();
            }
        }
        let text: Rc<str> = rfc3339(pg_epoch_us).into();
        *cached = Some((pg_epoch_us, text.clone()));
        text
    })
}

/// What one target does with the row change, decided before any JSON is rendered.
#[derive(Clone, Copy, PartialEq)]
enum Decision {
    Skip,
    /// Send as this operation (an UPDATE can enter or leave the predicate's rows: SPEC §5).
    Send(Op),
    /// An UPDATE whose images differ in the columns that matter: decided on the JSON values.
    CheckUpdate,
}

impl Target {
    fn wants(&self, op: Op) -> bool {
        let e: &Events = &self.shape.events;
        match op {
            Op::Insert => e.insert,
            Op::Update => e.update,
            Op::Delete => e.delete,
        }
    }

    /// # Safety
    /// The tuples must be the trigger's own, described by `desc`.
    unsafe fn decide(
        &self,
        op: Op,
        old: Option<pg_sys::HeapTuple>,
        new: Option<pg_sys::HeapTuple>,
        desc: pg_sys::TupleDesc,
        owner: pg_sys::Oid,
    ) -> Decision {
        // The predicate runs as the extension owner, whoever writes the table.
        let holds = |tuple: Option<pg_sys::HeapTuple>| match (&self.predicate, tuple) {
            (None, _) => true,
            // SAFETY: the caller's tuples, of the table the predicate was compiled for.
            (Some(p), Some(t)) => as_user(owner, || unsafe { p.holds(t) }),
            (Some(_), None) => false,
        };
        let effective = match op {
            Op::Insert | Op::Delete => {
                if !self.wants(op) || !holds(old.or(new)) {
                    return Decision::Skip;
                }
                op
            }
            Op::Update => match (holds(old), holds(new)) {
                (true, true) => Op::Update,
                (true, false) => Op::Delete,
                (false, true) => Op::Insert,
                (false, false) => return Decision::Skip,
            },
        };
        if !self.wants(effective) {
            return Decision::Skip;
        }
        if effective != Op::Update {
            return Decision::Send(effective);
        }
        let (Some(o), Some(n)) = (old, new) else {
            return Decision::Skip;
        };
        // SAFETY: the caller's tuples and descriptor; update_attnums are columns of `desc`.
        if unsafe { row::same_images(o, n, desc, &self.update_attnums) } {
            Decision::Skip
        } else {
            Decision::CheckUpdate
        }
    }
}

/// Decide, render and queue one row change for every target `active` accepts; true when a
/// delivery for an enabled endpoint was queued (the workers need waking at commit).
///
/// # Safety
/// `old` and `new` must be valid heap tuples described by `desc`, the descriptor the plan's
/// targets were built for.
pub(crate) unsafe fn queue_change(
    plan: &Plan,
    op: Op,
    old: Option<pg_sys::HeapTuple>,
    new: Option<pg_sys::HeapTuple>,
    desc: pg_sys::TupleDesc,
    occurred_at: &str,
    active: impl Fn(&Target) -> bool,
) -> bool {
    let decisions: Vec<Decision> = plan
        .targets
        .iter()
        .map(|t| {
            if !active(t) {
                return Decision::Skip;
            }
            // SAFETY: the caller's tuples and descriptor.
            unsafe { t.decide(op, old, new, desc, plan.queue_owner) }
        })
        .collect();
    if decisions.iter().all(|d| *d == Decision::Skip) {
        return false;
    }
    // SAFETY: the caller's tuples belong to the rows `desc` describes; the text lives in the
    // current memory context.
    let render = |t: Option<pg_sys::HeapTuple>| t.map(|t| unsafe { plan.to_jsonb.render(t, desc) });
    let (old_json, new_json) = (render(old), render(new));
    let old_row = old_json.map(parse_row);
    let new_row = new_json.map(parse_row);
    let mut wake = false;
    for (target, decision) in plan.targets.iter().zip(decisions) {
        let change = match decision {
            Decision::Skip => continue,
            Decision::Send(Op::Insert) => Change {
                op: Op::Insert,
                old: None,
                new: new_row.as_ref(),
            },
            Decision::Send(Op::Delete) => Change {
                op: Op::Delete,
                old: old_row.as_ref(),
                new: None,
            },
            Decision::Send(Op::Update) | Decision::CheckUpdate => {
                let (Some(o), Some(n)) = (old_row.as_ref(), new_row.as_ref()) else {
                    continue;
                };
                if !payload::update_is_sent(&target.shape, o, n) {
                    continue;
                }
                Change {
                    op: Op::Update,
                    old: Some(o),
                    new: Some(n),
                }
            }
        };
        // nextval checks privileges on the sequence, which the queue owner has.
        // SAFETY: nextval_oid takes one regclass argument, which `plan.sequence` (a sequence's
        // OID) is, and returns a non-NULL int8.
        let id: i64 = as_user(plan.queue_owner, || unsafe {
            pgrx::direct_function_call(
                pg_sys::nextval_oid,
                &[Some(pg_sys::Datum::from(plan.sequence))],
            )
        })
        .unwrap_or_else(|| WebhookError::Internal("nextval returned NULL".into()).raise());
        // A rownd change is its own message; census changes get theirs when the worker batches
        // them (crate::message).
        let message_id = match target.format {
            Format::Rownd if plan.message_ids => Some(message::new_id()),
            Format::Rownd => Some(id.to_string()),
            Format::Census => None,
        };
        let meta = Meta {
            id: message_id.as_deref().unwrap_or_default(),
            occurred_at,
            sync_run_id: None,
        };
        let body = match target.format {
            Format::Rownd => payload::rownd(&target.shape, &plan.table, &change, &meta),
            Format::Census => payload::census(
                &target.shape,
                &plan.table,
                &change,
                &meta,
                &target.endpoint_name,
                target.subscription_id,
            ),
        };
        enqueue::insert(
            plan.queue,
            &NewDelivery {
                id,
                endpoint_id: target.endpoint_id,
                subscription_id: target.subscription_id,
                table_name: &plan.table.qualified_name,
                operation: payload::operation(&target.shape, &change),
                payload: &body,
                message_id: message_id.as_deref().filter(|_| plan.message_ids),
                order_keys: target
                    .ordered
                    .then(|| payload::order_keys(&target.shape, &change)),
            },
        );
        wake |= target.enabled;
    }
    wake
}

#[pg_trigger]
fn capture<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible> {
    let data = trigger.trigger_data();
    let event = data.tg_event;
    let tg = trigger.trigger();
    if !pgrx::trigger_support::trigger_fired_for_row(event)
        || !pgrx::trigger_support::trigger_fired_after(event)
    {
        // SAFETY: PostgreSQL's trigger name is NUL-terminated and valid for the trigger call.
        let name = unsafe { std::ffi::CStr::from_ptr(tg.tgname) }.to_string_lossy();
        WebhookError::WrongState(format!(
            "trigger \"{name}\": webhook.capture() must be an AFTER ... FOR EACH ROW trigger"
        ))
        .raise();
    }
    let (op, old, new) = if pgrx::trigger_support::trigger_fired_by_insert(event) {
        (Op::Insert, None, Some(data.tg_trigtuple))
    } else if pgrx::trigger_support::trigger_fired_by_update(event) {
        (Op::Update, Some(data.tg_trigtuple), Some(data.tg_newtuple))
    } else {
        (Op::Delete, Some(data.tg_trigtuple), None)
    };
    let relation = data.tg_relation;
    let plan = plan_for(tg, relation);
    // SAFETY: tg_relation is the open relation the trigger fired on; its descriptor lives as
    // long as it is open.
    let desc = unsafe { (*relation).rd_att };
    // SAFETY: the trigger's own tuples, described by the relation's descriptor.
    let wake = unsafe { queue_change(&plan, op, old, new, desc, &occurred_at(), |_| true) };
    if wake {
        shmem::wake_workers_at_commit();
    }
    Ok(None)
}
