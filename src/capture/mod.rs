//! The capture trigger: row -> payload -> queue insert, in the writer's transaction. No I/O.
//!
//! Runs as whatever role writes the table. Queue rows are written without SQL (`enqueue`); the
//! subscription look-ups (once per session) and `nextval` run as the owner of the queue table,
//! the way PostgreSQL's own foreign-key triggers switch user, with every operator qualified.

mod enqueue;
mod payload;
pub mod table;

use crate::endpoint::Format;
use crate::error::Result as WebhookResult;
use crate::error::{not_null, OrRaise, WebhookError};
use crate::subscription::{Events, Options, Shape, TableShape};
use crate::{message, shmem};
use enqueue::NewDelivery;
use payload::{Change, Meta, Op, Row};
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiHeapTupleData};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// One endpoint a trigger sends to, with that endpoint's subscription for the table.
struct Target {
    endpoint_id: i64,
    endpoint_name: String,
    /// A disabled endpoint still captures, but its deliveries need no worker wake-up.
    enabled: bool,
    format: Format,
    subscription_id: Option<i64>,
    shape: Shape,
}

/// Everything a trigger needs per row, built once per backend and trigger.
struct Plan {
    relid: pg_sys::Oid,
    table: TableShape,
    targets: Vec<Target>,
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

const TARGETS_SQL: &str =
    "SELECT e.id AS endpoint_id, e.format, e.enabled, s.id AS subscription_id, s.events, s.columns,
        s.rename::pg_catalog.text AS rename, s.redact, s.lookup, s.visibility_column, s.name
    FROM webhook.endpoint e
    LEFT JOIN webhook.subscription s ON s.endpoint_id OPERATOR(pg_catalog.=) e.id
                                    AND s.relid::pg_catalog.oid OPERATOR(pg_catalog.=) $1
    WHERE e.name OPERATOR(pg_catalog.=) $2";

/// The extension owner owns the queue; looked up without touching schema webhook.
const OWNER_SQL: &str = "SELECT e.extowner FROM pg_catalog.pg_extension e
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
}

fn register_invalidation_callback() {
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

fn queue_owner() -> WebhookResult<pg_sys::Oid> {
    Spi::get_one::<pg_sys::Oid>(OWNER_SQL)?
        .ok_or_else(|| WebhookError::Internal("extension webhook is not installed".into()))
}

fn column<T: IntoDatum + FromDatum>(
    row: &SpiHeapTupleData,
    name: &str,
) -> WebhookResult<Option<T>> {
    Ok(row.get_by_name(name)?)
}

/// The subscription options stored for this endpoint and table, or the defaults when the
/// trigger was attached by hand without `watch`.
fn stored_options(row: &SpiHeapTupleData) -> WebhookResult<Options> {
    if column::<i64>(row, "subscription_id")?.is_none() {
        return Ok(Options {
            events: Events::ALL.to_list(),
            rename: serde_json::json!({}),
            ..Default::default()
        });
    }
    let rename: Option<String> = column(row, "rename")?;
    Ok(Options {
        events: column(row, "events")?.unwrap_or_default(),
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
    name: &str,
) -> WebhookResult<Target> {
    let found = c.select(TARGETS_SQL, None, &[relid.into(), name.into()])?;
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
    Ok(Target {
        endpoint_id: not_null(&row, "endpoint_id")?,
        endpoint_name: name.to_string(),
        enabled: column(&row, "enabled")?.unwrap_or(true),
        format: format
            .as_deref()
            .and_then(|f| Format::parse(f).ok())
            .unwrap_or(Format::Rownd),
        subscription_id: column(&row, "subscription_id")?,
        shape,
    })
}

fn build_plan(
    trigger_name: &str,
    relid: pg_sys::Oid,
    endpoint_names: &[String],
) -> WebhookResult<Plan> {
    let table = table::load(relid)?;
    let queue_owner = queue_owner()?;
    as_user(queue_owner, || {
        Spi::connect(|c| {
            let missing = || WebhookError::Internal("the queue's objects are missing".into());
            let (queue, sequence, endpoint_table) =
                c.select(QUEUE_SQL, None, &[])?
                    .first()
                    .get_three::<pg_sys::Oid, pg_sys::Oid, pg_sys::Oid>()?;
            ENDPOINT_TABLE.with(|e| e.set(endpoint_table.unwrap_or(pg_sys::InvalidOid)));
            let targets = endpoint_names
                .iter()
                .map(|name| target(c, trigger_name, &table, relid, name))
                .collect::<WebhookResult<Vec<_>>>()?;
            let message_ids = c
                .select(MESSAGE_IDS_SQL, None, &[])?
                .first()
                .get_one::<bool>()?
                .unwrap_or(false);
            Ok(Plan {
                relid,
                targets,
                queue_owner,
                message_ids,
                queue: queue.ok_or_else(missing)?,
                sequence: sequence.ok_or_else(missing)?,
                table,
            })
        })
    })
}

fn plan_for(trigger: &pg_sys::Trigger, relid: pg_sys::Oid) -> Rc<Plan> {
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
    let plan = Rc::new(build_plan(&name, relid, &args).or_raise());
    if GENERATION.with(|g| g.get()) == generation {
        PLANS.with(|p| p.borrow_mut().insert(trigger.tgoid, plan.clone()));
    }
    plan
}

/// The row as a JSON object, converted by PostgreSQL itself (`row_to_json`: `to_jsonb` values).
///
/// The text is allocated in the current memory context, which is the trigger call's: it lives
/// as long as the trigger call that `_call` borrows, and the returned `&'call str` cannot
/// outlive it.
///
/// # Safety
/// `tuple` must be a valid heap tuple of the relation whose descriptor is `desc`, both from
/// the trigger data of `_call`.
unsafe fn row_json<'call>(
    _call: &'call pgrx::PgTrigger<'call>,
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
) -> &'call str {
    // SAFETY: the caller guarantees `tuple` matches `desc`; the copy is palloc'd in the trigger
    // call's memory context.
    let datum = unsafe { pg_sys::heap_copy_tuple_as_datum(tuple, desc) };
    // SAFETY: row_to_json takes one composite datum, which `datum` is; it never returns NULL
    // for a non-NULL row, and its text is palloc'd in the same context.
    let json: Option<&'call str> =
        unsafe { pgrx::direct_function_call(pg_sys::row_to_json, &[Some(datum)]) };
    json.unwrap_or_else(|| WebhookError::Internal("row_to_json returned NULL".into()).raise())
}

fn parse_row(json: &str) -> Row<'_> {
    Row::parse(json).unwrap_or_else(|e| {
        WebhookError::Internal(format!("row_to_json gave no JSON object: {e}")).raise()
    })
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
        let unix_ns = (pg_epoch_us as i128 + 946_684_800_000_000) * 1000;
        let text: Rc<str> = time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default()
            .into();
        *cached = Some((pg_epoch_us, text.clone()));
        text
    })
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
    let op = if pgrx::trigger_support::trigger_fired_by_insert(event) {
        Op::Insert
    } else if pgrx::trigger_support::trigger_fired_by_update(event) {
        Op::Update
    } else {
        Op::Delete
    };
    let relation = data.tg_relation;
    // SAFETY: tg_relation is the open relation the trigger fired on, valid for the call.
    let relid = unsafe { (*relation).rd_id };
    let plan = plan_for(tg, relid);
    let wanted = |t: &&Target| match op {
        Op::Insert => t.shape.events.insert,
        Op::Update => t.shape.events.update,
        Op::Delete => t.shape.events.delete,
    };
    if !plan.targets.iter().any(|t| wanted(&t)) {
        return Ok(None);
    }
    // SAFETY: as above; the descriptor lives as long as the open relation.
    let desc = unsafe { (*relation).rd_att };
    // SAFETY: the trigger's tuples belong to the relation whose descriptor `desc` is.
    let trig_json = unsafe { row_json(trigger, data.tg_trigtuple, desc) };
    let new_json = match op {
        // SAFETY: as above; an UPDATE trigger always has the new tuple.
        Op::Update => Some(unsafe { row_json(trigger, data.tg_newtuple, desc) }),
        _ => None,
    };
    let trig_row = parse_row(trig_json);
    let new_row = new_json.map(parse_row);
    let change = match op {
        Op::Insert => Change {
            op,
            old: None,
            new: Some(&trig_row),
        },
        Op::Update => Change {
            op,
            old: Some(&trig_row),
            new: new_row.as_ref(),
        },
        Op::Delete => Change {
            op,
            old: Some(&trig_row),
            new: None,
        },
    };
    let occurred_at = occurred_at();
    for target in plan.targets.iter().filter(wanted) {
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
            occurred_at: &occurred_at,
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
            },
        );
    }
    if plan.targets.iter().filter(wanted).any(|t| t.enabled) {
        shmem::wake_workers_at_commit();
    }
    Ok(None)
}
