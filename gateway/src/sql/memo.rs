//! Per-core memo tables for work that depends only on request text: the read/write
//! classification of a query (a full sqlparser parse) and the tenant a connection string
//! names. Bounded: when full, a table starts over (cheap, and hot entries return at once).

use std::{cell::RefCell, collections::HashMap};

use super::{classify::Kind, request::Tenant};

/// Entries kept per table.
const CAPACITY: usize = 4096;

/// A bounded map from request text to a derived value. Not `Send`: one per core.
#[derive(Debug)]
pub struct Memo<V> {
    map: RefCell<HashMap<String, V>>,
}

impl<V: Clone> Memo<V> {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            map: RefCell::new(HashMap::new()),
        }
    }

    /// The value for `key`, computed by `f` on a miss (errors are not remembered).
    pub fn get_or_try<E>(&self, key: &str, f: impl FnOnce() -> Result<V, E>) -> Result<V, E> {
        if let Some(v) = self.map.borrow().get(key) {
            return Ok(v.clone());
        }
        let v = f()?;
        let mut map = self.map.borrow_mut();
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(key.to_string(), v.clone());
        Ok(v)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.borrow().len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.map.borrow().is_empty()
    }
}

impl<V: Clone> Default for Memo<V> {
    fn default() -> Self {
        Self::new()
    }
}

/// The memo tables one core keeps for `/sql`.
#[derive(Debug, Default)]
pub struct SqlMemo {
    /// Query text → read or write.
    pub kinds: Memo<Kind>,
    /// `Neon-Connection-String` → tenant and credentials.
    pub tenants: Memo<Tenant>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_values_not_errors_and_stays_bounded() {
        let m: Memo<u32> = Memo::new();
        let mut calls = 0;
        for _ in 0..3 {
            let v = m.get_or_try::<()>("a", || {
                calls += 1;
                Ok(7)
            });
            assert_eq!(v, Ok(7));
        }
        assert_eq!(calls, 1);
        assert_eq!(m.get_or_try("bad", || Err::<u32, _>("no")), Err("no"));
        assert_eq!(m.len(), 1);
        for i in 0..(CAPACITY + 10) {
            let _ = m.get_or_try::<()>(&i.to_string(), || Ok(1));
        }
        assert!(m.len() <= CAPACITY);
    }
}
