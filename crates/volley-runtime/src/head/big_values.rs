//! `SharedDict` values too large for the head's table (over 1 MiB pickled) live in the object
//! store of the head's node, held by that node; the table keeps a small marker naming the
//! object (`volley._shared_dict`). The head lets go of the object as soon as no key holds its
//! marker any more (the key is set to something else, or deleted), so a large value lives
//! exactly as long as a key refers to it, whoever changes the key.

use std::sync::Weak;

use volley_proto::ObjectId;
use volley_sched::Holder;

use crate::shared::Shared;

/// How a big value's marker starts (the rest: the object's id, then the pickled ref). No
/// pickle starts with a 0 byte and no integer's text does, so no other value looks like one.
pub const BIG_VALUE_MAGIC: &[u8] = b"\x00volley-big\x00";

/// The namespaces whose values may be markers (`volley.SharedDict`'s).
const SHARED_DICT_PREFIX: &str = "shareddict:";

/// The object a `SharedDict` value refers to, if it is a big value's marker.
pub(crate) fn held_object(namespace: &str, value: &[u8]) -> Option<ObjectId> {
    if !namespace.starts_with(SHARED_DICT_PREFIX) {
        return None;
    }
    let rest = value.strip_prefix(BIG_VALUE_MAGIC)?;
    ObjectId::from_bytes(rest.get(..ObjectId::BYTES)?)
}

/// What a head does with the objects no key holds any more.
pub trait Releaser: Send + Sync {
    fn release(&self, ids: &[ObjectId]);
}

/// The head's node's scheduler lets go of them (weakly: the node owns its head).
pub(crate) struct NodeReleaser(pub(crate) Weak<Shared>);

impl Releaser for NodeReleaser {
    fn release(&self, ids: &[ObjectId]) {
        if let Some(shared) = self.0.upgrade() {
            shared.with(|st, out| st.sched.decref(Holder::Local, ids, out));
        }
    }
}
