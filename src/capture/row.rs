//! A watched row as the capture trigger reads it: as JSON with `to_jsonb` semantics (SPEC §2),
//! and compared column by column between the old and the new version of an UPDATE without any
//! JSON at all, for the filters' fast path.

use crate::error::WebhookError;
use pgrx::pg_sys;
use std::ffi::CStr;

/// A memory context of the backend's lifetime, deleted when dropped.
pub struct Memory(pg_sys::MemoryContext);

impl Memory {
    pub fn new(name: &'static CStr) -> Memory {
        // SAFETY: creates an empty child of TopMemoryContext (which lives as long as the
        // backend) with PostgreSQL's default sizes; the name is a static NUL-terminated string.
        Memory(unsafe {
            pg_sys::AllocSetContextCreateInternal(
                pg_sys::TopMemoryContext,
                name.as_ptr(),
                0,
                8 * 1024,
                8 * 1024 * 1024,
            )
        })
    }

    pub fn context(&self) -> pg_sys::MemoryContext {
        self.0
    }

    /// Free everything allocated in the context so far.
    pub fn reset(&self) {
        // SAFETY: `self.0` is a live context; nothing that outlives this call points into it
        // (callers reset between units of work whose results were written out).
        unsafe { pg_sys::MemoryContextReset(self.0) };
    }

    /// Run `f` with this context current: what it allocates lives as long as `self`.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        // SAFETY: `self.0` is a live context; the previous one is restored below, or by the
        // transaction abort if `f` raises.
        let old = unsafe { pg_sys::MemoryContextSwitchTo(self.0) };
        let result = f();
        // SAFETY: restores exactly the context that was current before.
        unsafe { pg_sys::MemoryContextSwitchTo(old) };
        result
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: the context was created by `new` and is deleted once; everything allocated in
        // it belongs to the value that owns this Memory and is dropped with it.
        unsafe { pg_sys::MemoryContextDelete(self.0) };
    }
}

/// `to_jsonb(row)` for rows of one table, set up once per capture plan. `to_jsonb` is
/// polymorphic: it reads its argument's type from the call expression, so the call carries a
/// (NULL) expression of the table's row type, the way the executor would pass one.
pub struct ToJsonb {
    _memory: Memory,
    call: Box<pg_sys::FmgrInfo>,
}

impl ToJsonb {
    /// # Safety
    /// `row_type` must be the row type of the table whose tuples `render` gets.
    pub unsafe fn new(row_type: pg_sys::Oid) -> ToJsonb {
        let memory = Memory::new(c"webhook to_jsonb");
        let mut call = Box::new(pg_sys::FmgrInfo::default());
        memory.run(|| {
            // SAFETY: builds the call's expression tree in `memory`, which outlives `call`;
            // F_TO_JSONB is the built-in to_jsonb(anyelement) returning jsonb.
            unsafe {
                let arg = pg_sys::makeNullConst(row_type, -1, pg_sys::InvalidOid);
                let args = pg_sys::lappend(std::ptr::null_mut(), arg.cast());
                let expr = pg_sys::makeFuncExpr(
                    pg_sys::Oid::from(pg_sys::F_TO_JSONB),
                    pg_sys::JSONBOID,
                    args,
                    pg_sys::InvalidOid,
                    pg_sys::InvalidOid,
                    pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
                );
                pg_sys::fmgr_info_cxt(
                    pg_sys::Oid::from(pg_sys::F_TO_JSONB),
                    call.as_mut(),
                    memory.0,
                );
                call.fn_expr = expr.cast();
            }
        });
        ToJsonb {
            _memory: memory,
            call,
        }
    }

    /// The tuple as jsonb text, palloc'd in the current memory context (the trigger call's).
    ///
    /// # Safety
    /// `tuple` must be a valid heap tuple described by `desc`, of the row type given to `new`.
    pub unsafe fn render<'call>(
        &self,
        tuple: pg_sys::HeapTuple,
        desc: pg_sys::TupleDesc,
    ) -> &'call str {
        // SAFETY: the caller guarantees `tuple` matches `desc`; the composite datum, the jsonb
        // and its text are palloc'd in the current memory context. to_jsonb is strict and never
        // returns NULL for a non-NULL argument; the FmgrInfo is fully initialised by `new`.
        let text = unsafe {
            let datum = pg_sys::heap_copy_tuple_as_datum(tuple, desc);
            let call = std::ptr::from_ref(self.call.as_ref()).cast_mut();
            let jsonb = pg_sys::FunctionCall1Coll(call, pg_sys::InvalidOid, datum);
            let jsonb = jsonb.cast_mut_ptr::<pg_sys::Jsonb>();
            let len = pgrx::varlena::varsize_any(jsonb.cast()) as i32;
            let cstr = pg_sys::JsonbToCString(std::ptr::null_mut(), &mut (*jsonb).root, len);
            CStr::from_ptr(cstr)
        };
        text.to_str().unwrap_or_else(|e| {
            WebhookError::Internal(format!("to_jsonb gave text that is not UTF-8: {e}")).raise()
        })
    }
}

unsafe extern "C-unwind" {
    /// PostgreSQL's `datum_image_eq` (utils/adt/datum.c): are two values of one type
    /// bit-for-bit the same value (detoasting varlenas)? Not in pgrx's bindings.
    fn datum_image_eq(
        value1: pg_sys::Datum,
        value2: pg_sys::Datum,
        typ_by_val: bool,
        typ_len: std::ffi::c_int,
    ) -> bool;
}

/// Do the old and new tuples hold identical images in every one of `attnums` (1-based)? Equal
/// images give equal `to_jsonb` values, so an UPDATE that passes this test changed none of
/// those columns in the sense of SPEC §5; one that fails it is decided on the JSON values.
///
/// # Safety
/// `old` and `new` must be valid heap tuples described by `desc`, and every attnum a column
/// of `desc`.
pub unsafe fn same_images(
    old: pg_sys::HeapTuple,
    new: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
    attnums: &[i32],
) -> bool {
    attnums.iter().all(|&attnum| {
        let (mut old_null, mut new_null) = (false, false);
        // SAFETY: the caller guarantees the tuples match `desc` and `attnum` is one of its
        // columns; the attribute array holds natts entries.
        unsafe {
            let o = pg_sys::heap_getattr(old, attnum, desc, &mut old_null);
            let n = pg_sys::heap_getattr(new, attnum, desc, &mut new_null);
            if old_null || new_null {
                return old_null == new_null;
            }
            let att = (*desc).attrs.as_slice((*desc).natts as usize)[attnum as usize - 1];
            datum_image_eq(o, n, att.attbyval, att.attlen.into())
        }
    })
}

/// The attribute numbers of `desc`'s live columns named in `names` (absent names are skipped).
///
/// # Safety
/// `desc` must be a valid tuple descriptor.
pub unsafe fn attnums<'n>(
    desc: pg_sys::TupleDesc,
    names: impl IntoIterator<Item = &'n String>,
) -> Vec<i32> {
    // SAFETY: the caller guarantees `desc` is valid; its attribute array holds natts entries.
    let attrs = unsafe { (*desc).attrs.as_slice((*desc).natts as usize) };
    names
        .into_iter()
        .filter_map(|name| {
            attrs
                .iter()
                .position(|a| {
                    !a.attisdropped
                        // SAFETY: attname is a NUL-terminated NameData.
                        && unsafe { CStr::from_ptr(a.attname.data.as_ptr()) }.to_bytes()
                            == name.as_bytes()
                })
                .map(|i| i as i32 + 1)
        })
        .collect()
}

/// Every live column's attribute number.
///
/// # Safety
/// `desc` must be a valid tuple descriptor.
pub unsafe fn live_attnums(desc: pg_sys::TupleDesc) -> Vec<i32> {
    // SAFETY: as above.
    let attrs = unsafe { (*desc).attrs.as_slice((*desc).natts as usize) };
    (0..attrs.len())
        .filter(|&i| !attrs[i].attisdropped)
        .map(|i| i as i32 + 1)
        .collect()
}
