//! The capture trigger: row -> payload -> queue insert, in the writer's transaction. No I/O.
//!
//! Runs as whatever role writes the table. Queue rows are written without SQL (`enqueue`); the
//! subscription look-ups (once per session) and `nextval` run as the owner of the queue table,
//! the way PostgreSQL's own foreign-key triggers switch user, with every operator qualified.

use crate::endpoint::Format;
use crate::enqueue::{self, NewDelivery};
use crate::error::{OrRaise, WebhookError};
use crate::payload::{self, Change, Meta, Op, Row};
use crate::subscription::{Events, Options, Shape, TableShape};
use crate::{shmem, table};
use pgrx::prelude::*;
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
    "SELECT e.id, e.name, e.format, e.enabled, s.id, s.events, s.columns, s.rename::pg_catalog.text,
        s.redact, s.lookup, s.visibility_column, s.name
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

/// Plans are dropped whenever PostgreSQL invalidates the watched table's relcache entry (its
/// columns or triggers changed, or the API changed one of its subscriptions), and all of them
/// when the API invalidates webhook.endpoint's (an endpoint changed).
#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    enqueue::on_relcache_invalidation(relid);
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
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(
            user,
            saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    let result = f();
    unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) };
    result
}

fn queue_owner() -> pg_sys::Oid {
    Spi::get_one::<pg_sys::Oid>(OWNER_SQL)
        .expect("extension look-up")
        .expect("extension webhook exists")
}

fn build_plan(trigger_name: &str, relid: pg_sys::Oid, endpoint_names: &[String]) -> Plan {
    let table = table::load(relid).or_raise();
    let queue_owner = queue_owner();
    let ((queue, sequence), targets) = as_user(queue_owner, || {
        Spi::connect(|c| {
            let (queue, sequence, endpoint_table) = c
                .select(QUEUE_SQL, None, &[])
                .expect("queue look-up")
                .first()
                .get_three::<pg_sys::Oid, pg_sys::Oid, pg_sys::Oid>()
                .expect("queue look-up");
            let queue = queue.expect("queue table exists");
            let sequence = sequence.expect("sequence exists");
            ENDPOINT_TABLE.with(|e| e.set(endpoint_table.expect("endpoint table exists")));
            let targets = endpoint_names
                .iter()
                .map(|name| {
                    let found = c
                        .select(TARGETS_SQL, None, &[relid.into(), name.as_str().into()])
                        .expect("subscription look-up");
                    let Some(row) = found.into_iter().next() else {
                        WebhookError::UnknownEndpointInTrigger {
                            endpoint: name.clone(),
                            trigger: trigger_name.to_string(),
                            table: table.qualified_name.clone(),
                        }
                        .raise();
                    };
                    let subscription_id: Option<i64> = row.get(5).expect("subscription id");
                    let options = match subscription_id {
                        None => Options {
                            events: Events::ALL.to_list(),
                            rename: serde_json::json!({}),
                            ..Default::default()
                        },
                        Some(_) => Options {
                            events: row.get(6).expect("events").unwrap_or_default(),
                            columns: row.get(7).expect("columns"),
                            rename: row
                                .get::<String>(8)
                                .expect("rename")
                                .and_then(|r| serde_json::from_str(&r).ok())
                                .unwrap_or_else(|| serde_json::json!({})),
                            redact: row.get(9).expect("redact").unwrap_or_default(),
                            lookup: row.get(10).expect("lookup"),
                            visibility_column: row.get(11).expect("visibility_column"),
                            name: row.get(12).expect("name"),
                        },
                    };
                    let shape = options
                        .resolve(&table)
                        .map_err(|e| {
                            WebhookError::WrongState(format!(
                                "trigger \"{trigger_name}\" on {}: subscription of endpoint \"{name}\" no longer fits the table: {e}",
                                table.qualified_name
                            ))
                        })
                        .or_raise();
                    let format: String = row.get(3).expect("format").unwrap_or_default();
                    Target {
                        endpoint_id: row.get(1).expect("endpoint id").expect("endpoint id is not null"),
                        endpoint_name: name.clone(),
                        enabled: row.get(4).expect("enabled").unwrap_or(true),
                        format: Format::parse(&format).unwrap_or(Format::Rownd),
                        subscription_id,
                        shape,
                    }
                })
                .collect();
            ((queue, sequence), targets)
        })
    });
    Plan {
        relid,
        table,
        targets,
        queue_owner,
        queue,
        sequence,
    }
}

fn plan_for(trigger: &pg_sys::Trigger, relid: pg_sys::Oid) -> Rc<Plan> {
    register_invalidation_callback();
    if let Some(plan) = PLANS.with(|p| p.borrow().get(&trigger.tgoid).cloned()) {
        return plan;
    }
    let generation = GENERATION.with(|g| g.get());
    let name = unsafe { std::ffi::CStr::from_ptr(trigger.tgname) }
        .to_string_lossy()
        .into_owned();
    let args: Vec<String> = (0..trigger.tgnargs as usize)
        .map(|i| {
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
    let plan = Rc::new(build_plan(&name, relid, &args));
    if GENERATION.with(|g| g.get()) == generation {
        PLANS.with(|p| p.borrow_mut().insert(trigger.tgoid, plan.clone()));
    }
    plan
}

/// The row as a JSON object, converted by PostgreSQL itself (`row_to_json`: `to_jsonb` values).
/// The text lives in the trigger's memory context, which outlives this call.
unsafe fn row_json<'a>(tuple: pg_sys::HeapTuple, desc: pg_sys::TupleDesc) -> &'a str {
    let datum = unsafe { pg_sys::heap_copy_tuple_as_datum(tuple, desc) };
    unsafe { pgrx::direct_function_call(pg_sys::row_to_json, &[Some(datum)]) }
        .expect("row_to_json returns text")
}

fn parse_row(json: &str) -> Row<'_> {
    Row::parse(json).expect("row_to_json returns a JSON object")
}

/// The capturing transaction's start time, RFC 3339; formatted once per transaction.
fn occurred_at() -> Rc<str> {
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
    let desc = unsafe { (*relation).rd_att };
    let trig_json = unsafe { row_json(data.tg_trigtuple, desc) };
    let new_json = match op {
        Op::Update => Some(unsafe { row_json(data.tg_newtuple, desc) }),
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
        let id: i64 = as_user(plan.queue_owner, || unsafe {
            pgrx::direct_function_call(
                pg_sys::nextval_oid,
                &[Some(pg_sys::Datum::from(plan.sequence))],
            )
        })
        .expect("nextval returns a value");
        let id_text = id.to_string();
        let meta = Meta {
            id: &id_text,
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
            },
        );
    }
    if plan.targets.iter().filter(wanted).any(|t| t.enabled) {
        shmem::wake_workers_at_commit();
    }
    Ok(None)
}
