//! Subscription predicates (SPEC §5): parsed and checked once by `watch`, stored parsed (as
//! PostgreSQL stores a CHECK constraint: `nodeToString` of the analysed expression), compiled
//! once per backend and subscription by the capture trigger, evaluated per row as the extension
//! owner. Nothing is parsed per row.

use super::row::Memory;
use crate::error::{Result, WebhookError};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::{CStr, CString};

/// A predicate as `watch` stores it.
pub struct Analysed {
    /// `nodeToString` of the analysed boolean expression over the table's row (varno 1).
    pub node: String,
    /// The table columns it reads, for the DDL guard.
    pub columns: Vec<String>,
}

fn refused(text: &str, why: impl std::fmt::Display) -> WebhookError {
    WebhookError::invalid(format!("predicate \"{text}\" {why}"))
}

/// Parse `text` as one boolean expression over the columns of table `relid`, with the
/// caller's search_path (watch pins it to pg_catalog) and check it can be evaluated by the
/// capture trigger: no subquery, aggregate, window or set-returning function, nothing volatile,
/// and every function executable by `caller`.
pub fn analyse(relid: pg_sys::Oid, text: &str, caller: pg_sys::Oid) -> Result<Analysed> {
    let sql = CString::new(format!("SELECT {text}"))
        .map_err(|_| refused(text, "contains a NUL character"))?;
    PgTryBuilder::new(|| {
        // SAFETY: `sql` outlives the call; relid names a table watch already loaded.
        unsafe { analyse_raw(relid, text, &sql, caller) }
    })
    .catch_others(|e| match e {
        pg_sys::panic::CaughtError::PostgresError(report)
        | pg_sys::panic::CaughtError::ErrorReport(report) => {
            // transformExpr words its refusals for CHECK constraints, the context it runs in.
            let message = report
                .message()
                .replace("check constraints", "webhook predicates")
                .replace("check constraint", "a webhook predicate");
            Err(WebhookError::Predicate {
                code: report.sql_error_code(),
                message: format!("predicate \"{text}\": {message}"),
            })
        }
        other => other.rethrow(),
    })
    .execute()
}

/// # Safety
/// `relid` must name an existing table; `sql` is `SELECT <text>`.
unsafe fn analyse_raw(
    relid: pg_sys::Oid,
    text: &str,
    sql: &CStr,
    caller: pg_sys::Oid,
) -> Result<Analysed> {
    // SAFETY: raw_parser takes a NUL-terminated string and returns a List of RawStmt nodes
    // allocated in the current (function call) memory context.
    let parsed =
        unsafe { pg_sys::raw_parser(sql.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT) };
    let one = || {
        refused(
            text,
            "must be a single boolean expression over the table's columns",
        )
    };
    // SAFETY: `parsed` is a valid (possibly empty) List from raw_parser.
    if unsafe { pg_sys::list_length(parsed) } != 1 {
        return Err(one());
    }
    // SAFETY: a one-element list of RawStmt; the statement node's tag tells its type.
    let stmt = unsafe { (*pg_sys::list_nth(parsed, 0).cast::<pg_sys::RawStmt>()).stmt };
    // SAFETY: every Node starts with its tag.
    if unsafe { (*stmt).type_ } != pg_sys::NodeTag::T_SelectStmt {
        return Err(one());
    }
    // SAFETY: the tag says it is a SelectStmt.
    let select = unsafe { &*stmt.cast::<pg_sys::SelectStmt>() };
    let bare = select.op == pg_sys::SetOperation::SETOP_NONE
        && select.distinctClause.is_null()
        && select.intoClause.is_null()
        && select.fromClause.is_null()
        && select.whereClause.is_null()
        && select.groupClause.is_null()
        && select.havingClause.is_null()
        && select.windowClause.is_null()
        && select.valuesLists.is_null()
        && select.sortClause.is_null()
        && select.limitOffset.is_null()
        && select.limitCount.is_null()
        && select.lockingClause.is_null()
        && select.withClause.is_null()
        // SAFETY: a valid List.
        && unsafe { pg_sys::list_length(select.targetList) } == 1;
    if !bare {
        return Err(one());
    }
    // SAFETY: a one-element target list of ResTarget.
    let target = unsafe { &*pg_sys::list_nth(select.targetList, 0).cast::<pg_sys::ResTarget>() };
    if !target.name.is_null() {
        return Err(one());
    }
    // SAFETY: the standard parse-analysis sequence for an expression over one relation (as
    // PostgreSQL analyses a CHECK constraint): the relation is opened with AccessShareLock, kept
    // to the transaction's end, and closed before returning; errors raised inside abort the
    // transaction, which releases it.
    let expr = unsafe {
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        (*pstate).p_sourcetext = sql.as_ptr();
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let rel = pg_sys::relation_open(relid, lock);
        let item = pg_sys::addRangeTableEntryForRelation(
            pstate,
            rel,
            lock,
            std::ptr::null_mut(),
            false,
            true,
        );
        pg_sys::addNSItemToQuery(pstate, item, true, true, true);
        let expr = pg_sys::transformExpr(
            pstate,
            target.val,
            pg_sys::ParseExprKind::EXPR_KIND_CHECK_CONSTRAINT,
        );
        let expr = pg_sys::coerce_to_boolean(pstate, expr, c"predicate".as_ptr());
        pg_sys::assign_expr_collations(pstate, expr);
        pg_sys::relation_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        pg_sys::free_parsestate(pstate);
        expr
    };
    // SAFETY: `expr` is an analysed expression tree.
    if unsafe { pg_sys::contain_volatile_functions(expr) } {
        return Err(refused(
            text,
            "calls a volatile function; a predicate may call only immutable and stable functions",
        ));
    }
    let mut used: *mut pg_sys::Bitmapset = std::ptr::null_mut();
    // SAFETY: collects the attribute numbers of the Vars of range table entry 1 (the table).
    unsafe { pg_sys::pull_varattnos(expr, 1, &mut used) };
    let mut columns = Vec::new();
    // SAFETY: iterates a valid Bitmapset; each member is attnum - FirstLowInvalidHeapAttributeNumber.
    let mut member = unsafe { pg_sys::bms_next_member(used, -1) };
    while member >= 0 {
        let attnum = member + pg_sys::FirstLowInvalidHeapAttributeNumber;
        if attnum <= 0 {
            return Err(refused(
                text,
                "reads a system column or the whole row; name the table's columns",
            ));
        }
        // SAFETY: an attribute of `relid` that the analysed expression reads; get_attname
        // raises if it is missing.
        let name = unsafe { CStr::from_ptr(pg_sys::get_attname(relid, attnum as i16, false)) };
        columns.push(name.to_string_lossy().into_owned());
        // SAFETY: as above.
        member = unsafe { pg_sys::bms_next_member(used, member) };
    }
    // Compile it once now, as the caller: constant folding errors (1/0) show here rather than
    // at the first write, and ExecInitExpr checks the caller may execute every function in it.
    let planned_text = super::as_user(caller, || {
        let scratch = Memory::new(c"webhook predicate check");
        scratch.run(|| {
            // SAFETY: plans and compiles a copy of the analysed expression in `scratch`,
            // which is deleted when it goes out of scope; the text is copied out first.
            unsafe {
                let copy = pg_sys::copyObjectImpl(expr.cast()).cast::<pg_sys::Expr>();
                let planned = pg_sys::expression_planner(copy);
                pg_sys::ExecInitExpr(planned, std::ptr::null_mut());
                CStr::from_ptr(pg_sys::nodeToString(planned.cast()))
                    .to_string_lossy()
                    .into_owned()
            }
        })
    });
    // SAFETY: a catalog look-up of the caller's role.
    if !unsafe { pg_sys::superuser_arg(caller) } {
        refuse_untrusted_code(text, &planned_text)?;
    }
    // SAFETY: nodeToString of an analysed expression; the text is palloc'd and NUL-terminated.
    let node = unsafe { CStr::from_ptr(pg_sys::nodeToString(expr.cast())) }
        .to_string_lossy()
        .into_owned();
    Ok(Analysed { node, columns })
}

/// The predicate runs as the extension owner, so code that a non-superuser could have written
/// must not run in it: every function it calls (after SQL functions are inlined) and every
/// domain it coerces to (a domain's CHECK runs code) must belong to a superuser. Built-ins do.
/// Found in the planned expression's node text, where each appears as `:<...>funcid N` or
/// `:<...>type N`.
fn refuse_untrusted_code(text: &str, planned: &str) -> Result<()> {
    let tokens: Vec<&str> = planned
        .split(|c: char| c.is_whitespace() || c == '{' || c == '}' || c == '(' || c == ')')
        .filter(|t| !t.is_empty())
        .collect();
    let (mut functions, mut types): (Vec<pg_sys::Oid>, Vec<pg_sys::Oid>) = (vec![], vec![]);
    for pair in tokens.windows(2) {
        let Ok(oid) = pair[1].parse::<u32>() else {
            continue;
        };
        if oid == 0 {
            continue;
        }
        if pair[0].starts_with(':') && pair[0].ends_with("funcid") {
            functions.push(pg_sys::Oid::from(oid));
        } else if pair[0].starts_with(':') && pair[0].ends_with("type") {
            types.push(pg_sys::Oid::from(oid));
        }
    }
    let untrusted: Vec<String> = Spi::connect(|c| -> Result<Vec<String>> {
        let mut names = Vec::new();
        for row in c.select(
            "SELECT 'function ' || p.oid::pg_catalog.regprocedure::pg_catalog.text AS what
             FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_roles r ON r.oid = p.proowner
             WHERE p.oid = ANY ($1) AND NOT r.rolsuper
             UNION ALL
             SELECT 'domain ' || t.oid::pg_catalog.regtype::pg_catalog.text
             FROM pg_catalog.pg_type t JOIN pg_catalog.pg_roles r ON r.oid = t.typowner
             WHERE t.oid = ANY ($2) AND t.typtype = 'd' AND NOT r.rolsuper",
            None,
            &[functions.into(), types.into()],
        )? {
            names.extend(row.get_by_name::<String, _>("what")?);
        }
        Ok(names)
    })?;
    match untrusted.first() {
        None => Ok(()),
        Some(what) => Err(WebhookError::PermissionDenied(format!(
            "predicate \"{text}\" uses {what}, which a role other than a superuser owns; a predicate runs as the extension owner, so only a superuser may watch with it"
        ))),
    }
}

/// A stored predicate, compiled for one table's current row shape.
pub struct Predicate {
    memory: Memory,
    state: *mut pg_sys::ExprState,
    context: *mut pg_sys::ExprContext,
    slot: *mut pg_sys::TupleTableSlot,
}

impl Predicate {
    /// Compile `node` (as `analyse` stored it) for tuples described by `desc`.
    ///
    /// # Safety
    /// `desc` must describe the rows of the table the predicate was analysed for, with the same
    /// column types (the DDL guard keeps them so).
    pub unsafe fn compile(node: &str, desc: pg_sys::TupleDesc) -> Result<Predicate> {
        let text = CString::new(node)
            .map_err(|_| WebhookError::Internal("stored predicate holds a NUL".into()))?;
        let memory = Memory::new(c"webhook predicate");
        let (state, context, slot) = memory.run(|| {
            // SAFETY: everything is built in `memory`, which the Predicate owns: the node tree
            // from its text, the planned and compiled expression, an expression context and a
            // slot over a private copy of the descriptor (not reference-counted, so no resource
            // owner holds it across transactions).
            unsafe {
                let expr = pg_sys::stringToNode(text.as_ptr()).cast::<pg_sys::Expr>();
                let planned = pg_sys::expression_planner(expr);
                let state = pg_sys::ExecInitExpr(planned, std::ptr::null_mut());
                let context = pg_sys::CreateStandaloneExprContext();
                let own_desc = pg_sys::CreateTupleDescCopy(desc);
                let slot = pg_sys::MakeSingleTupleTableSlot(own_desc, &pg_sys::TTSOpsHeapTuple);
                (state, context, slot)
            }
        });
        Ok(Predicate {
            memory,
            state,
            context,
            slot,
        })
    }

    /// Does the predicate hold (true, not false or NULL) for `tuple`?
    ///
    /// # Safety
    /// `tuple` must be a valid heap tuple of the table, described like the `desc` of `compile`.
    pub unsafe fn holds(&self, tuple: pg_sys::HeapTuple) -> bool {
        let _ = &self.memory;
        // SAFETY: the slot, state and context were built together by `compile`; the tuple is
        // only borrowed by the slot (not freed by it) and cleared before returning; per-row
        // memory is reset after each evaluation.
        unsafe {
            pg_sys::ExecStoreHeapTuple(tuple, self.slot, false);
            (*self.context).ecxt_scantuple = self.slot;
            let mut is_null = false;
            let value = pg_sys::ExecEvalExprSwitchContext(self.state, self.context, &mut is_null);
            let holds = !is_null && bool::from_datum(value, false).unwrap_or(false);
            pg_sys::MemoryContextReset((*self.context).ecxt_per_tuple_memory);
            pg_sys::ExecClearTuple(self.slot);
            holds
        }
    }
}
