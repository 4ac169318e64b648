//! What plugin instances may allocate: per instance (one linear memory of
//! `plugins.memory_limit_mib`, few tables of bounded size, few core
//! instances) and, all instances of the process together, at most
//! `plugins.total_memory_mib` of linear memory.
//!
//! Both are checked when memory or a table is created or grows, never on a
//! call: they cost nothing per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

/// Linear memories one instance may have: one (a component's core module;
/// multi-memory is off in the engine too).
pub const MAX_MEMORIES: usize = 1;
/// Tables one instance may have (the module's function table plus the few
/// the component model's adapter shims use).
pub const MAX_TABLES: usize = 8;
/// Elements one table may grow to.
pub const MAX_TABLE_ELEMENTS: usize = 10_000;
/// Core instances one component instance may create (a plugin built with
/// `cargo build --target wasm32-wasip2` makes a handful).
pub const MAX_INSTANCES: usize = 16;

/// Linear memory held by all plugin instances of the process, against a
/// cap. Shared by every instance's [`Limiter`].
#[derive(Debug, Default)]
pub struct MemoryBudget {
    cap: AtomicUsize,
    used: AtomicUsize,
}

impl MemoryBudget {
    /// A budget of `cap` bytes.
    pub fn new(cap: usize) -> MemoryBudget {
        MemoryBudget {
            cap: AtomicUsize::new(cap),
            used: AtomicUsize::new(0),
        }
    }

    /// Sets the cap (a reload may change it). Memory already held is kept;
    /// only growth is refused while over it.
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Ordering::Relaxed);
    }

    /// The cap, in bytes.
    pub fn cap(&self) -> usize {
        self.cap.load(Ordering::Relaxed)
    }

    /// Bytes held by all instances now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes` if they fit under the cap.
    fn take(&self, bytes: usize) -> bool {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > self.cap() {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// One instance's limiter: its own limits, and its share of the process's
/// [`MemoryBudget`], given back when the instance is dropped.
pub struct Limiter {
    own: StoreLimits,
    budget: Arc<MemoryBudget>,
    /// Bytes this instance took from `budget`.
    held: usize,
}

impl Limiter {
    /// `memory_bytes` of linear memory in one memory, [`MAX_TABLES`] tables
    /// of [`MAX_TABLE_ELEMENTS`], [`MAX_INSTANCES`] core instances, and
    /// growth only while `budget` has room; growing past any of them traps.
    pub fn new(memory_bytes: usize, budget: Arc<MemoryBudget>) -> Limiter {
        Limiter {
            own: StoreLimitsBuilder::new()
                .memory_size(memory_bytes)
                .memories(MAX_MEMORIES)
                .tables(MAX_TABLES)
                .table_elements(MAX_TABLE_ELEMENTS)
                .instances(MAX_INSTANCES)
                .trap_on_grow_failure(true)
                .build(),
            budget,
            held: 0,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if !self.own.memory_growing(current, desired, maximum)? {
            return Ok(false);
        }
        let more = desired.saturating_sub(current);
        if !self.budget.take(more) {
            wasmtime::bail!(
                "plugin memory is at plugins.total_memory_mib ({} MiB) for all instances together; \
                 raise it, or lower plugins.memory_limit_mib",
                self.budget.cap() >> 20
            );
        }
        self.held += more;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.own.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.own.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.own.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.own.instances()
    }

    fn tables(&self) -> usize {
        self.own.tables()
    }

    fn memories(&self) -> usize {
        self.own.memories()
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Engine, Store};

    /// `(module (table 1 funcref) (func (export "grow") (result i32)
    /// (table.grow (ref.null func) (i32.const 20000))))`, by hand.
    const GROWS_A_TABLE: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // header
        0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7f, // type: () -> i32
        0x03, 0x02, 0x01, 0x00, // one function of that type
        0x04, 0x04, 0x01, 0x70, 0x00, 0x01, // a funcref table, 1 element
        0x07, 0x08, 0x01, 0x04, b'g', b'r', b'o', b'w', 0x00, 0x00, // export "grow"
        0x0a, 0x0d, 0x01, 0x0b, 0x00, // code: one body of 11 bytes, no locals
        0xd0, 0x70, // ref.null func
        0x41, 0xa0, 0x9c, 0x01, // i32.const 20000
        0xfc, 0x0f, 0x00, // table.grow 0
        0x0b, // end
    ];

    /// `(module (table 20000 funcref))`.
    const BIG_TABLE: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, //
        0x04, 0x06, 0x01, 0x70, 0x00, 0xa0, 0x9c, 0x01,
    ];

    /// `(module (memory 0) (func (export "grow") (param i32) (result i32)
    /// (memory.grow (local.get 0))))`, by hand: grows its memory by the
    /// given number of 64 KiB pages.
    const GROWS_MEMORY: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // header
        0x01, 0x06, 0x01, 0x60, 0x01, 0x7f, 0x01, 0x7f, // type: (i32) -> i32
        0x03, 0x02, 0x01, 0x00, // one function of that type
        0x05, 0x03, 0x01, 0x00, 0x00, // a memory of 0 pages, no maximum
        0x07, 0x08, 0x01, 0x04, b'g', b'r', b'o', b'w', 0x00, 0x00, // export "grow"
        0x0a, 0x08, 0x01, 0x06, 0x00, // code: one body of 6 bytes, no locals
        0x20, 0x00, // local.get 0
        0x40, 0x00, // memory.grow 0
        0x0b, // end
    ];

    const PAGE: usize = 64 << 10;

    fn store(engine: &Engine, memory_bytes: usize, budget: &Arc<MemoryBudget>) -> Store<Limiter> {
        let mut store = Store::new(engine, Limiter::new(memory_bytes, budget.clone()));
        store.limiter(|limits| limits);
        store
    }

    fn unlimited() -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget::new(usize::MAX))
    }

    #[test]
    fn a_table_cannot_grow_past_its_element_cap() {
        let engine = Engine::default();
        let module = wasmtime::Module::new(&engine, GROWS_A_TABLE).unwrap();
        let mut store = store(&engine, 1 << 20, &unlimited());
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let grow = instance
            .get_typed_func::<(), i32>(&mut store, "grow")
            .unwrap();
        let err = grow.call(&mut store, ()).unwrap_err();
        assert!(format!("{err:?}").contains("table"), "{err:?}");
        // Without the limits it grows: the cap is what stopped it.
        let mut unlimited = Store::new(&engine, ());
        let instance = wasmtime::Instance::new(&mut unlimited, &module, &[]).unwrap();
        let grow = instance
            .get_typed_func::<(), i32>(&mut unlimited, "grow")
            .unwrap();
        assert_eq!(grow.call(&mut unlimited, ()).unwrap(), 1, "the old size");
    }

    #[test]
    fn a_table_declared_past_the_cap_is_not_instantiated() {
        let engine = Engine::default();
        let module = wasmtime::Module::new(&engine, BIG_TABLE).unwrap();
        let mut store = store(&engine, 1 << 20, &unlimited());
        assert!(wasmtime::Instance::new(&mut store, &module, &[]).is_err());
        let mut unlimited = Store::new(&engine, ());
        assert!(wasmtime::Instance::new(&mut unlimited, &module, &[]).is_ok());
    }

    /// An instance of `GROWS_MEMORY` in `store`, and its `grow`.
    fn grower(
        store: &mut Store<Limiter>,
        module: &wasmtime::Module,
    ) -> wasmtime::TypedFunc<i32, i32> {
        let instance = wasmtime::Instance::new(&mut *store, module, &[]).unwrap();
        instance.get_typed_func(&mut *store, "grow").unwrap()
    }

    #[test]
    fn instances_together_cannot_grow_past_the_process_budget_and_a_dropped_one_gives_its_share_back()
     {
        let engine = Engine::default();
        let module = wasmtime::Module::new(&engine, GROWS_MEMORY).unwrap();
        // Each instance may have 4 pages; all of them together 6.
        let budget = Arc::new(MemoryBudget::new(6 * PAGE));
        let mut first = store(&engine, 4 * PAGE, &budget);
        let grow_first = grower(&mut first, &module);
        assert_eq!(
            grow_first.call(&mut first, 4).unwrap(),
            0,
            "within both caps"
        );
        assert_eq!(budget.used(), 4 * PAGE);

        let mut second = store(&engine, 4 * PAGE, &budget);
        let grow_second = grower(&mut second, &module);
        let err = grow_second.call(&mut second, 4).unwrap_err();
        assert!(
            format!("{err:?}").contains("plugins.total_memory_mib"),
            "{err:?}"
        );
        assert_eq!(budget.used(), 4 * PAGE, "the refused growth took nothing");

        drop(first);
        assert_eq!(budget.used(), 0, "the first instance gave its pages back");
        let mut third = store(&engine, 4 * PAGE, &budget);
        let grow_third = grower(&mut third, &module);
        assert_eq!(grow_third.call(&mut third, 4).unwrap(), 0, "room again");
    }

    #[test]
    fn an_instance_cannot_grow_past_its_own_cap_whatever_the_budget() {
        let engine = Engine::default();
        let module = wasmtime::Module::new(&engine, GROWS_MEMORY).unwrap();
        let budget = unlimited();
        let mut store = store(&engine, 4 * PAGE, &budget);
        let grow = grower(&mut store, &module);
        assert!(grow.call(&mut store, 5).is_err());
        assert_eq!(budget.used(), 0);
    }
}
