//! The dashboard's [`Source`] for this process's node.

use volley_proto::NodeSnapshot;

use super::{ApiError, Source};
use crate::client::{self, Backend};
use crate::Node;

/// This process's node, looked up at each request: the dashboard outlives no node (it stops
/// with `volley.shutdown()`), and a request that comes meanwhile gets a clear 503.
pub struct NodeSource;

impl NodeSource {
    fn with_node<T>(f: impl FnOnce(&Node) -> Result<T, ApiError>) -> Result<T, ApiError> {
        let c = client::current()
            .ok_or_else(|| ApiError::unavailable("volley has shut down in this process"))?;
        match &c.backend {
            Backend::Node(n) if !n.is_closed() => f(n),
            Backend::Node(_) => Err(ApiError::unavailable("this process's node has shut down")),
            Backend::Worker(_) => Err(ApiError::unavailable("a worker process has no node")),
        }
    }
}

/// The cluster's nodes as `node` sees them: the head's view (with its own entry fresh) on the
/// head, the last view a member heard otherwise, and the node alone outside a cluster.
pub fn nodes_of(node: &Node) -> Vec<NodeSnapshot> {
    let view = node.cluster_view();
    if view.is_empty() {
        return vec![node.snapshot()];
    }
    match node.head() {
        Some(h) => h.view(),
        None => view,
    }
}

impl Source for NodeSource {
    fn nodes(&self) -> Result<Vec<NodeSnapshot>, ApiError> {
        Self::with_node(|n| Ok(nodes_of(n)))
    }
}
