//! The code this node can run, as a part of the scheduler: a `Registry` of bytes by key, one for
//! functions (and actor classes) by id, one for runtime-environment packages by content hash.
//! Each is registered once and sent to a worker or a peer the first time it needs it; nothing
//! here is ever replaced.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

/// Bytes by key; the first registration of a key stands.
pub(super) struct Registry<K> {
    map: HashMap<K, Arc<[u8]>>,
}

impl<K> Default for Registry<K> {
    fn default() -> Self {
        Registry { map: HashMap::new() }
    }
}

impl<K: Eq + Hash> Registry<K> {
    /// Records `bytes` under `key`, unless the key has some already.
    pub(super) fn add(&mut self, key: K, bytes: Arc<[u8]>) {
        self.map.entry(key).or_insert(bytes);
    }

    pub(super) fn get<Q: Eq + Hash + ?Sized>(&self, key: &Q) -> Option<&Arc<[u8]>>
    where
        K: Borrow<Q>,
    {
        self.map.get(key)
    }

    pub(super) fn contains<Q: Eq + Hash + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.map.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use volley_proto::FunctionId;

    #[test]
    fn the_first_registration_stands() {
        let mut functions = Registry::default();
        let f = FunctionId([3; 16]);
        assert!(!functions.contains(&f));
        functions.add(f, Arc::from(&b"one"[..]));
        functions.add(f, Arc::from(&b"two"[..]));
        assert_eq!(functions.get(&f).map(|b| &b[..]), Some(&b"one"[..]));
        let mut packages: Registry<String> = Registry::default();
        packages.add("h".into(), Arc::from(&b"zip"[..]));
        packages.add("h".into(), Arc::from(&b"other"[..]));
        assert!(packages.contains("h") && !packages.contains("g"));
        assert_eq!(packages.get("h").map(|b| &b[..]), Some(&b"zip"[..]));
    }
}
