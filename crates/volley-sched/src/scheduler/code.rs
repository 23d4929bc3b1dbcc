//! The code this node can run, as a part of the scheduler: functions (and actor classes) by id,
//! and runtime-environment packages by content hash. Each is registered once and sent to a worker
//! or a peer the first time it needs it; nothing here is ever replaced.

use std::collections::HashMap;
use std::sync::Arc;

use volley_proto::FunctionId;

#[derive(Default)]
pub(super) struct Code {
    functions: HashMap<FunctionId, Arc<[u8]>>,
    /// Runtime-environment packages (zips) by content hash (see `TaskOptions::runtime_env`).
    packages: HashMap<String, Arc<[u8]>>,
}

impl Code {
    /// Records a function's bytes; the first registration of an id stands.
    pub(super) fn add_function(&mut self, id: FunctionId, bytes: Arc<[u8]>) {
        self.functions.entry(id).or_insert(bytes);
    }

    pub(super) fn function(&self, id: &FunctionId) -> Option<&Arc<[u8]>> {
        self.functions.get(id)
    }

    pub(super) fn has_function(&self, id: &FunctionId) -> bool {
        self.functions.contains_key(id)
    }

    /// Records a package; the first registration of a hash stands.
    pub(super) fn add_package(&mut self, hash: String, bytes: Arc<[u8]>) {
        self.packages.entry(hash).or_insert(bytes);
    }

    pub(super) fn package(&self, hash: &str) -> Option<&Arc<[u8]>> {
        self.packages.get(hash)
    }

    pub(super) fn has_package(&self, hash: &str) -> bool {
        self.packages.contains_key(hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_registration_stands() {
        let mut c = Code::default();
        let f = FunctionId([3; 16]);
        assert!(!c.has_function(&f));
        c.add_function(f, Arc::from(&b"one"[..]));
        c.add_function(f, Arc::from(&b"two"[..]));
        assert_eq!(c.function(&f).map(|b| &b[..]), Some(&b"one"[..]));
        c.add_package("h".into(), Arc::from(&b"zip"[..]));
        c.add_package("h".into(), Arc::from(&b"other"[..]));
        assert!(c.has_package("h") && !c.has_package("g"));
        assert_eq!(c.package("h").map(|b| &b[..]), Some(&b"zip"[..]));
    }
}
