//! volley's wire protocol.
//!
//! Every connection between volley processes carries length-prefixed frames (a 4-byte big-endian
//! length, then the payload, the same layout as tokio-util's `LengthDelimitedCodec`). A payload is a
//! postcard-encoded serde enum; object bytes travel as opaque byte strings inside it, never encoded
//! element by element. The first frame each way is a [`Hello`] carrying the protocol version, so a
//! peer speaking another version is turned away before anything else is read.

mod cluster;
mod error;
mod frame;
#[doc(hidden)]
pub mod fuzz;
mod head;
mod ids;
mod jobs;
mod messages;
mod node_ask;
mod prims;
mod snapshot;
mod state;

pub use cluster::{
    authenticate_client, authenticate_server, NamedActor, NodeId, PeerMsg, Refusal, MAX_CHUNK,
};
pub use error::ProtoError;
pub use frame::{read_frame, write_frame, FrameReader, MAX_FRAME_SIZE, MAX_HANDSHAKE_FRAME};
pub use head::{
    kv_digest, Directory, HeadAnswer, HeadRequest, JobInfo, Reservation, MAX_KV_KEY, MAX_KV_VALUE,
    MAX_KV_WATCH_MS,
};
pub use ids::{
    ActorId, FunctionId, IdBuildHasher, IdGenerator, IdHasher, IdMap, ObjectId, TaskId, WorkerId,
};
pub use jobs::{
    check_job_id, check_package_hash, check_upload, JobRow, JobSpec, JobStatus, MAX_JOB_LOG_CHUNK,
    MAX_JOB_PACKAGE, MAX_JOB_UPLOAD_CHUNK,
};
pub use messages::{
    decode, encode, encode_execute, encode_get_reply, shm_layout, ActorAnswer, ActorCall,
    ActorInfo, ActorOptions, ActorPart, ActorRequest, ErrorKind, ErrorPayload, Hello, Keep,
    NodeToWorker, ObjectData, ObjectResult, PgInfo, PgSpec, PgStrategy, RuntimeEnv, ShmLoc,
    Strategy, TaskOptions, TaskResult, TaskSpec, WorkerToNode, PROTOCOL_VERSION, SHM_BUFFER_ALIGN,
};
pub use node_ask::{LogEntry, NodeAnswer, NodeAsk, NodeRequest, MAX_LOG_CHUNK};
pub use prims::{
    prim_home, prim_id, undo_of, Guard, PrimOp, PrimResult, SyncKind, SyncOp, Undo, MAX_PRIM_ITEM,
    PRIM_HOME_SHIFT, PRIM_NO_REPLY, PRIM_RECALL,
};
pub use snapshot::{NodeSnapshot, SchedCounters, StoreCounters};
pub use state::{
    ActorRow, Filter, FilterOp, StateAnswer, StateQuery, StateRows, TaskError, TaskRow,
    TaskStateCode, STATE_KINDS,
};
