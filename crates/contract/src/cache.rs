//! Compiled contracts and the bounded cache that holds them by capability id.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use capmesh_types::{Cid, Codec};
use capmesh_wire::{Contract, cbor};
use serde_json::Value;

use crate::{ContractError, Violation, Which, check::admit};

/// A well-formed contract's schemas, compiled: validates arguments and outputs.
pub struct Compiled {
    id: Cid,
    input: jsonschema::Validator,
    output: jsonschema::Validator,
}

impl Compiled {
    /// Checks `contract` as [`check`](crate::check) does and compiles its schemas.
    pub fn new(contract: &Contract) -> Result<Self, ContractError> {
        Self::from_bytes(contract, &cbor::to_vec(contract)?)
    }

    fn from_bytes(contract: &Contract, bytes: &[u8]) -> Result<Self, ContractError> {
        let admitted = admit(contract, bytes)?;
        Ok(Self { id: admitted.id, input: admitted.input, output: admitted.output })
    }

    /// The capability id of the contract compiled.
    pub fn id(&self) -> Cid {
        self.id
    }

    /// Checks arguments against the input schema; on failure, lists every violation.
    pub fn validate_input(&self, args: &Value) -> Result<(), Vec<Violation>> {
        self.validate(Which::Input, args)
    }

    /// Checks an output against the output schema; on failure, lists every violation.
    pub fn validate_output(&self, output: &Value) -> Result<(), Vec<Violation>> {
        self.validate(Which::Output, output)
    }

    /// Checks `value` against the `which` schema; on failure, lists every violation.
    pub fn validate(&self, which: Which, value: &Value) -> Result<(), Vec<Violation>> {
        let validator = match which {
            Which::Input => &self.input,
            Which::Output => &self.output,
        };
        let violations: Vec<Violation> =
            validator.iter_errors(value).map(|error| Violation::from_error(&error)).collect();
        if violations.is_empty() { Ok(()) } else { Err(violations) }
    }
}

impl fmt::Debug for Compiled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compiled").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Where one id's compiled contract is (being) put. Its own lock makes a second caller of the
/// same id wait for the first compilation instead of repeating it, without holding up others.
type Slot = Arc<Mutex<Option<Arc<Compiled>>>>;

/// A bounded, thread-safe cache of compiled contracts by capability id, least recently used
/// first out. Each id is compiled once while it stays in the cache.
pub struct Validators {
    capacity: usize,
    lru: Mutex<Lru>,
    compilations: AtomicU64,
}

#[derive(Default)]
struct Lru {
    /// Each id's slot and its last use.
    entries: HashMap<Cid, (Slot, u64)>,
    /// Ids by last use, oldest first.
    order: BTreeMap<u64, Cid>,
    clock: u64,
}

impl Validators {
    /// Capacity of [`Validators::default`].
    pub const DEFAULT_CAPACITY: usize = 1024;

    /// A cache holding at most `capacity` compiled contracts (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            lru: Mutex::new(Lru::default()),
            compilations: AtomicU64::new(0),
        }
    }

    /// The compiled contract of capability `id`, compiling `contract` if it is not cached.
    ///
    /// `contract` must be the one `id` names (else [`ContractError::IdMismatch`]); this costs an
    /// encoding and a hash on every call. On a miss, the contract is checked as
    /// [`check`](crate::check) does and compiled; a refused contract is not cached. Blocks while
    /// another thread compiles the same id.
    pub fn get(&self, id: &Cid, contract: &Contract) -> Result<Arc<Compiled>, ContractError> {
        let bytes = cbor::to_vec(contract)?;
        let actual = Cid::of(Codec::DagCbor, &bytes);
        if actual != *id {
            return Err(ContractError::IdMismatch { expected: *id, actual });
        }
        let slot = self.slot(id);
        let mut compiled = lock(&slot);
        if let Some(compiled) = compiled.as_ref() {
            return Ok(Arc::clone(compiled));
        }
        self.compilations.fetch_add(1, Ordering::Relaxed);
        match Compiled::from_bytes(contract, &bytes) {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                *compiled = Some(Arc::clone(&fresh));
                Ok(fresh)
            }
            Err(e) => {
                drop(compiled);
                self.forget(id, &slot);
                Err(e)
            }
        }
    }

    /// How many ids are cached (including one being compiled).
    pub fn len(&self) -> usize {
        lock(&self.lru).entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most ids cached at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Compilations run so far (a miss compiles; so does a retry of a refused contract).
    pub fn compilations(&self) -> u64 {
        self.compilations.load(Ordering::Relaxed)
    }

    /// The slot of `id`, marked as just used; a new empty one (evicting the least recently
    /// used ids beyond capacity) if there is none.
    fn slot(&self, id: &Cid) -> Slot {
        let mut lru = lock(&self.lru);
        let Lru { entries, order, clock } = &mut *lru;
        *clock += 1;
        let now = *clock;
        if let Some((slot, used)) = entries.get_mut(id) {
            order.remove(used);
            *used = now;
            order.insert(now, *id);
            return Arc::clone(slot);
        }
        while entries.len() >= self.capacity {
            let Some((_, oldest)) = order.pop_first() else { break };
            entries.remove(&oldest);
        }
        let slot = Slot::default();
        entries.insert(*id, (Arc::clone(&slot), now));
        order.insert(now, *id);
        slot
    }

    /// Removes `id` if it still holds `slot` (it may have been evicted and cached anew).
    fn forget(&self, id: &Cid, slot: &Slot) {
        let mut lru = lock(&self.lru);
        let Lru { entries, order, .. } = &mut *lru;
        if let Some((held, used)) = entries.get(id)
            && Arc::ptr_eq(held, slot)
        {
            order.remove(used);
            entries.remove(id);
        }
    }
}

impl Default for Validators {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

impl fmt::Debug for Validators {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validators")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .field("compilations", &self.compilations())
            .finish()
    }
}

/// Every update under these locks leaves the state consistent, so a panic elsewhere while one
/// was held (poisoning) does not make the state unusable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{capability_id, check::tests::contract};

    fn versioned(i: usize) -> (Cid, Contract) {
        let mut c = contract();
        c.version = format!("1.0.{i}");
        (capability_id(&c).unwrap(), c)
    }

    #[test]
    fn thread_safe() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Validators>();
        send_sync::<Compiled>();
        send_sync::<Arc<Compiled>>();
    }

    #[test]
    fn compiles_once_per_id() {
        let cache = Validators::default();
        assert_eq!(cache.capacity(), 1024);
        let (id, c) = versioned(0);
        let a = cache.get(&id, &c).unwrap();
        let b = cache.get(&id, &c).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.id(), id);
        assert_eq!(cache.compilations(), 1);
        assert_eq!(cache.len(), 1);
        let (id2, c2) = versioned(1);
        cache.get(&id2, &c2).unwrap();
        cache.get(&id, &c).unwrap();
        assert_eq!(cache.compilations(), 2);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn concurrent_gets_compile_once() {
        let cache = Validators::new(4);
        let (id, c) = versioned(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| cache.get(&id, &c).unwrap());
            }
        });
        assert_eq!(cache.compilations(), 1);
    }

    #[test]
    fn evicts_least_recently_used_beyond_capacity() {
        let cache = Validators::new(2);
        let (id0, c0) = versioned(0);
        let (id1, c1) = versioned(1);
        let (id2, c2) = versioned(2);
        cache.get(&id0, &c0).unwrap();
        cache.get(&id1, &c1).unwrap();
        cache.get(&id0, &c0).unwrap(); // 1 is now the least recently used
        cache.get(&id2, &c2).unwrap(); // evicts 1
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.compilations(), 3);
        cache.get(&id0, &c0).unwrap(); // still cached
        assert_eq!(cache.compilations(), 3);
        cache.get(&id1, &c1).unwrap(); // compiled again, evicts 2
        assert_eq!(cache.compilations(), 4);
        assert_eq!(cache.len(), 2);
        cache.get(&id0, &c0).unwrap();
        assert_eq!(cache.compilations(), 4);
        assert_eq!(Validators::new(0).capacity(), 1);
    }

    #[test]
    fn id_mismatch() {
        let cache = Validators::default();
        let (id0, c0) = versioned(0);
        let (id1, _) = versioned(1);
        let e = cache.get(&id1, &c0).unwrap_err();
        assert_eq!(e.code(), "IdMismatch");
        assert_eq!(e, ContractError::IdMismatch { expected: id1, actual: id0 });
        assert!(cache.is_empty());
        assert_eq!(cache.compilations(), 0);
    }

    #[test]
    fn refused_contract_is_not_cached() {
        let cache = Validators::default();
        let mut c = contract();
        c.name = "Bad".into();
        let id = capability_id(&c).unwrap();
        assert_eq!(cache.get(&id, &c).unwrap_err().code(), "BadName");
        assert!(cache.is_empty());
    }

    #[test]
    fn reports_every_violation() {
        let mut c = contract();
        c.input = json!({
            "type": "object",
            "properties": {"a": {"type": "string"}, "b": {"type": "string"}, "n": {"type": "integer"}},
            "required": ["a", "b", "n"],
        });
        let compiled = Compiled::new(&c).unwrap();
        let mut violations = compiled.validate_input(&json!({"n": "three"})).unwrap_err();
        violations.sort_by_key(Violation::to_string);
        assert_eq!(violations.len(), 3, "{violations:?}");
        assert_eq!(violations[0].pointer, "");
        assert_eq!(violations[0].schema_path, "/required");
        assert!(violations[0].reason.contains("\"a\""), "{:?}", violations[0]);
        assert_eq!(violations[1].pointer, "");
        assert!(violations[1].reason.contains("\"b\""), "{:?}", violations[1]);
        assert_eq!(violations[2].pointer, "/n");
        assert_eq!(violations[2].schema_path, "/properties/n/type");
        compiled.validate_input(&json!({"a": "x", "b": "y", "n": 3})).unwrap();
        compiled.validate_output(&json!({})).unwrap();
        assert_eq!(compiled.validate_output(&json!([])).unwrap_err().len(), 1);
    }

    #[test]
    fn same_document_ref_works_in_validation() {
        let mut c = contract();
        c.input = json!({
            "$defs": {"x": {"type": "integer", "minimum": 0}},
            "type": "object",
            "properties": {"x": {"$ref": "#/$defs/x"}, "y": {"$ref": "#/$defs/x"}},
        });
        let compiled = Compiled::new(&c).unwrap();
        compiled.validate_input(&json!({"x": 1, "y": 2})).unwrap();
        let violations = compiled.validate_input(&json!({"x": -1, "y": "two"})).unwrap_err();
        let mut pointers: Vec<_> = violations.iter().map(|v| v.pointer.as_str()).collect();
        pointers.sort_unstable();
        assert_eq!(pointers, ["/x", "/y"], "{violations:?}");
    }
}
