//! A client driving a real node in this process, whose workers are this test binary run again
//! as [`worker_process`]: real processes, real sockets, the real store, a real SIGINT for a
//! cancel. The worker side runs tasks through [`TestRunner`] instead of Python.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use volley_proto::{
    ActorPart, ErrorKind, FunctionId, ObjectData, ObjectId, Strategy, TaskOptions, TaskResult,
    TaskSpec, WorkerId,
};
use volley_store::sync::Mutex;

use super::worker::{RunError, TaskRunner};
use super::{Backend, Client, Loaded};
use crate::{ExecuteMsg, Node, NodeConfig, View, WaitError};

/// Bytes a value takes to go to the store in these tests.
const THRESHOLD: u64 = 1024;

/// One node at a time in this process: the node's process-wide parts (output forwarding,
/// diagnostics) are made for one.
static ONE_NODE: Mutex<()> = Mutex::new(());

/// A driver's client on a node of its own with `cpus` workers that are this binary.
fn driver(cpus: f64) -> Client {
    let exe = std::env::current_exe().expect("the test binary's path");
    let spill = std::env::temp_dir().join(format!("volley-client-test-{}", std::process::id()));
    let cfg = NodeConfig {
        num_cpus: cpus,
        python: exe.to_string_lossy().into_owned(),
        worker_args: vec![
            "client::tests::worker_process".into(),
            "--exact".into(),
            "--nocapture".into(),
            "--test-threads=1".into(),
        ],
        env: vec![("VOLLEY_TEST_WORKER".into(), "1".into())],
        log_to_driver: false,
        pipeline_depth: 1,
        idle_worker_timeout_ms: 600_000,
        object_store_memory: 64 << 20,
        spill_dir: spill,
        inline_threshold: THRESHOLD,
        resources: Vec::new(),
        max_workers: 8,
        wait_notice_ms: 0,
        template: None,
    };
    Client::new(Backend::Node(Node::start(cfg).expect("the node starts")), THRESHOLD)
}

fn node(c: &Client) -> &Node {
    match &c.backend {
        Backend::Node(n) => n,
        Backend::Worker(_) => unreachable!("a driver's client"),
    }
}

/// Submits task `name` (what the test worker does is chosen by name) with `args` and `deps`;
/// the id of its one return, counted by the node.
fn submit(c: &Client, name: &str, args: Vec<u8>, deps: Vec<ObjectId>) -> ObjectId {
    let function = FunctionId([7; 16]);
    c.register_function(function, b"test function").expect("registers");
    let spec = TaskSpec {
        task_id: c.next_task_id(),
        function,
        name: name.into(),
        args: ObjectData::inline(args, Vec::new(), Vec::new()),
        deps: deps.into(),
        num_returns: 1,
        options: std::sync::Arc::new(TaskOptions {
            cpu_milli: 1000,
            max_retries: 0,
            retry_exceptions: false,
            streaming: false,
            resources: Vec::new(),
            runtime_env: None,
            strategy: Strategy::Default,
        }),
        actor: ActorPart::None,
    };
    let id = spec.return_ids().next().expect("one return");
    c.hold(id, true);
    c.submit(spec).expect("submits");
    id
}

fn never() -> Result<(), ()> {
    Ok(())
}

/// The bytes of one value (inline, or read through its mapping), or its error.
fn get_one(c: &Client, id: ObjectId) -> Result<Vec<u8>, volley_proto::ErrorPayload> {
    let mut got = c.get(&[id], Some(Duration::from_secs(60)), never).expect("a value in time");
    bytes_of(got.remove(0))
}

fn bytes_of(v: Loaded) -> Result<Vec<u8>, volley_proto::ErrorPayload> {
    let (data, mapped) = v.map_err(|e| (*e).clone())?;
    match (&data.shm, mapped) {
        (Some(loc), Some(m)) => {
            assert!(m.len as u64 >= loc.size);
            // SAFETY: the mapping holds `m.len` bytes while `m.guard` lives (it does, here).
            let all = unsafe { std::slice::from_raw_parts(m.ptr as *const u8, m.len) };
            let (offsets, _) = volley_proto::shm_layout(loc.data_len, &loc.buffer_lens);
            let mut out = all[..loc.data_len as usize].to_vec();
            for (off, len) in offsets.iter().zip(&loc.buffer_lens) {
                out.extend_from_slice(&all[*off as usize..(*off + *len) as usize]);
            }
            Ok(out)
        }
        _ => {
            let mut out = data.data.clone();
            for b in &data.buffers {
                out.extend_from_slice(b);
            }
            Ok(out)
        }
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn poll(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn submit_and_get_through_a_worker_process() {
    let _one = ONE_NODE.lock();
    let c = driver(1.0);
    let r = submit(&c, "echo", b"hello".to_vec(), Vec::new());
    assert_eq!(get_one(&c, r).expect("a value"), b"hello");
    // A failure to run the task becomes the task's error, named after it.
    let r = submit(&c, "fail", Vec::new(), Vec::new());
    let e = get_one(&c, r).expect_err("an error");
    assert_eq!(e.kind, ErrorKind::TaskException);
    assert_eq!(e.task_name, "fail");
    assert_eq!(e.message, "volley's worker failed to run task 'fail': boom");
    let r = submit(&c, "store_full", Vec::new(), Vec::new());
    let e = get_one(&c, r).expect_err("an error");
    assert_eq!((e.kind, e.message.as_str()), (ErrorKind::ObjectStoreFull, "no room"));
    // wait: one ready, one never.
    let slow = submit(&c, "spin", Vec::new(), Vec::new());
    let fast = ObjectId::for_return(c.next_task_id(), 0);
    c.hold(fast, true);
    c.put(fast, ObjectData::inline(b"x".to_vec(), Vec::new(), Vec::new())).expect("puts");
    let ready = c.wait(&[slow, fast], 1, Some(Duration::from_secs(30)), never).expect("waits");
    assert_eq!(ready, vec![false, true]);
    c.cancel(slow, true).expect("cancels");
    node(&c).shutdown(Duration::from_secs(2));
}

#[test]
fn large_values_go_through_the_store_both_ways() {
    let _one = ONE_NODE.lock();
    let c = driver(1.0);
    // The driver writes a large value into the store (sealed there), and it is a task's dep.
    let big = pattern(300_000);
    let (head, tail) = big.split_at(1000);
    assert!(c.goes_to_store(big.len()));
    assert!(!c.goes_to_store(10));
    let id = ObjectId::for_return(c.next_task_id(), 0);
    let w = c.write_to_store(head, &[tail], Vec::new(), Some(id)).expect("writes");
    assert!(w.data.shm.is_some() && w.pending_seg.is_none());
    c.hold(id, true);
    c.put(id, w.data).expect("puts");
    assert_eq!(get_one(&c, id).expect("the value"), big);
    // The worker maps it, sums it, and returns a large value of its own through the store.
    let r = submit(&c, "sum_and_grow", Vec::new(), vec![id]);
    let got = get_one(&c, r).expect("a value");
    let sum: u64 = big.iter().map(|b| *b as u64).sum();
    assert_eq!(got[..8], sum.to_le_bytes());
    assert_eq!(got[8..], pattern(200_000)[..]);
    assert!(node(&c).store().stats().objects >= 2);
    node(&c).shutdown(Duration::from_secs(2));
}

#[test]
fn the_ref_table_tells_the_node_only_on_first_and_last() {
    let _one = ONE_NODE.lock();
    let c = driver(1.0);
    let objects = || node(&c).stats().objects;
    let before = objects();
    let id = ObjectId::for_return(c.next_task_id(), 0);
    c.hold(id, true);
    c.put(id, ObjectData::inline(b"v".to_vec(), Vec::new(), Vec::new())).expect("puts");
    assert_eq!(objects(), before + 1);
    c.hold(id, false); // a second local ref: no message, one count at the node
    c.release(id);
    assert_eq!(get_one(&c, id).expect("still there"), b"v");
    c.release(id); // the last: the node frees it
    poll("the object to be freed", Duration::from_secs(10), || objects() == before);
    node(&c).shutdown(Duration::from_secs(2));
}

#[test]
fn a_worker_releases_a_ref_only_after_the_result_that_holds_it() {
    let _one = ONE_NODE.lock();
    let c = driver(1.0);
    // The worker puts a value, returns a result that contains its ref, and drops its own ref
    // before the result is sent: the release is deferred until after `Done`, so the value lives.
    let r = submit(&c, "put_and_return_ref", Vec::new(), Vec::new());
    let mut got = c.get(&[r], Some(Duration::from_secs(60)), never).expect("a value");
    let (data, _) = got.remove(0).expect("a value");
    let inner = ObjectId::from_bytes(&data.data).expect("an id");
    assert_eq!(data.contained, vec![inner]);
    c.hold(inner, false);
    assert_eq!(get_one(&c, inner).expect("the worker's value, kept alive"), b"kept");
    node(&c).shutdown(Duration::from_secs(2));
}

#[test]
fn a_cancel_interrupts_the_running_task_and_the_worker_goes_on() {
    let _one = ONE_NODE.lock();
    let c = driver(1.0);
    // The spin says when it runs: a task sent to the worker but not started yet is dropped by
    // the cancel without an interrupt, which is not what this test is about.
    let started =
        std::env::temp_dir().join(format!("volley-client-test-spin-{}", std::process::id()));
    let _ = std::fs::remove_file(&started);
    let path = started.to_string_lossy().into_owned().into_bytes();
    let spin = submit(&c, "spin", path, Vec::new());
    poll("the task to start", Duration::from_secs(30), || started.exists());
    c.cancel(spin, false).expect("cancels");
    let _ = std::fs::remove_file(&started);
    let e = get_one(&c, spin).expect_err("cancelled");
    assert_eq!(e.kind, ErrorKind::Cancelled);
    // The same (only) worker runs the next task: the spin ended through SIGINT (it would run
    // for 60 s otherwise), and the interrupt it left was cleared before the next task.
    let r = submit(&c, "interrupts", Vec::new(), Vec::new());
    let got = get_one(&c, r).expect("a value");
    assert_eq!(got, [1, 1], "interrupts seen by the task, interrupts cleared after it");
    node(&c).shutdown(Duration::from_secs(2));
}

#[test]
fn get_times_out_and_a_failed_check_interrupts_a_wait() {
    let _one = ONE_NODE.lock();
    let c = driver(1.0);
    let never_done = submit(&c, "spin", Vec::new(), Vec::new());
    let t = c.get(&[never_done], Some(Duration::from_millis(100)), never);
    assert!(matches!(t, Err(WaitError::Timeout)));
    let checks = AtomicU32::new(0);
    let check = || if checks.fetch_add(1, Ordering::SeqCst) >= 2 { Err("ctrl-c") } else { Ok(()) };
    let t = c.wait(&[never_done], 1, None, check);
    assert!(matches!(t, Err(WaitError::Interrupted("ctrl-c"))));
    c.cancel(never_done, true).expect("cancels");
    node(&c).shutdown(Duration::from_secs(2));
}

#[test]
fn a_retired_worker_sends_its_result_exits_and_is_replaced() {
    let _one = ONE_NODE.lock();
    let c = driver(1.0);
    assert!(c.retire().is_err(), "a driver cannot retire");
    let first = get_one(&c, submit(&c, "retire", Vec::new(), Vec::new())).expect("its pid");
    let next = get_one(&c, submit(&c, "pid", Vec::new(), Vec::new())).expect("a pid");
    assert_ne!(first, next, "the next task ran in a new worker process");
    node(&c).shutdown(Duration::from_secs(2));
}

// ------------------------------------------------------------------------- the worker's side

/// SIGINTs this process received (a cancel's interrupt).
static SIGINTS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_sigint(_: libc::c_int) {
    SIGINTS.fetch_add(1, Ordering::SeqCst);
}

/// Runs the tasks of [`driver`]'s tests by name.
struct TestRunner {
    cleared: u32,
}

impl TaskRunner for TestRunner {
    fn blocking<T: Send>(&mut self, f: impl FnOnce() -> T + Send) -> T {
        f()
    }

    fn run(
        &mut self,
        client: &Client,
        task: &mut ExecuteMsg,
        _function: Option<Arc<[u8]>>,
    ) -> Result<Option<TaskResult>, RunError> {
        let inline = |b: Vec<u8>| ObjectData::inline(b, Vec::new(), Vec::new());
        let value = match &*task.spec.name {
            "echo" => inline(task.spec.args.data.clone()),
            "fail" => return Err(RunError::Failed("boom".into())),
            "store_full" => return Err(RunError::StoreFull("no room".into())),
            "spin" => {
                if !task.spec.args.data.is_empty() {
                    let path = String::from_utf8_lossy(&task.spec.args.data).into_owned();
                    std::fs::write(path, b"").map_err(|e| RunError::Failed(e.to_string()))?;
                }
                let start = Instant::now();
                while SIGINTS.load(Ordering::SeqCst) == 0 && start.elapsed().as_secs() < 60 {
                    std::thread::sleep(Duration::from_millis(5));
                }
                // As Python's KeyboardInterrupt would, the interrupt ends the task with an error.
                return Err(RunError::Failed("interrupted".into()));
            }
            "pid" => inline(std::process::id().to_le_bytes().to_vec()),
            "retire" => {
                client.retire().map_err(|e| RunError::Failed(e.to_string()))?;
                inline(std::process::id().to_le_bytes().to_vec())
            }
            "interrupts" => inline(vec![SIGINTS.load(Ordering::SeqCst) as u8, self.cleared as u8]),
            "sum_and_grow" => {
                let dep = task.deps.pop().ok_or(RunError::Failed("no dep".into()))?;
                let View::Shm(lease) = &dep.view else {
                    return Err(RunError::Failed("the dep is not in the store".into()));
                };
                // SAFETY: the lease keeps the segment mapped while it lives.
                let all = unsafe { std::slice::from_raw_parts(lease.ptr(), lease.len()) };
                let loc = dep.data.shm.as_ref().ok_or(RunError::Failed("no location".into()))?;
                let (offsets, _) = volley_proto::shm_layout(loc.data_len, &loc.buffer_lens);
                let mut sum: u64 = all[..loc.data_len as usize].iter().map(|b| *b as u64).sum();
                for (off, len) in offsets.iter().zip(&loc.buffer_lens) {
                    sum += all[*off as usize..(*off + *len) as usize]
                        .iter()
                        .map(|b| *b as u64)
                        .sum::<u64>();
                }
                let grown = pattern(200_000);
                let w = client
                    .write_to_store(&sum.to_le_bytes(), &[&grown], Vec::new(), None)
                    .map_err(|e| RunError::Failed(e.to_string()))?;
                assert!(w.pending_seg.is_some(), "a worker hands its segment over with Done");
                w.data
            }
            "put_and_return_ref" => {
                let id = ObjectId::for_return(client.next_task_id(), 0);
                client.hold(id, true);
                client
                    .put(id, inline(b"kept".to_vec()))
                    .map_err(|e| RunError::Failed(e.to_string()))?;
                // Dropped before the result goes: must reach the node after it.
                client.release(id);
                ObjectData::inline(id.to_bytes().to_vec(), Vec::new(), vec![id])
            }
            other => return Err(RunError::Failed(format!("no test task {other}"))),
        };
        Ok(Some(TaskResult::Ok(vec![value])))
    }

    fn clear_interrupt(&mut self) {
        self.cleared += 1;
    }
}

/// Not a test of its own: the worker process of the tests above (a no-op when run as a test).
#[test]
fn worker_process() {
    if std::env::var_os("VOLLEY_TEST_WORKER").is_none() {
        return;
    }
    // SAFETY: the handler only touches an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let id: u32 = var("VOLLEY_WORKER_ID").parse().unwrap_or(0);
    let Ok(c) = Client::connect_worker(
        &var("VOLLEY_NODE_SOCKET"),
        WorkerId(id),
        &var("VOLLEY_SESSION_TOKEN"),
    ) else {
        std::process::exit(1) // the node went away before this worker connected
    };
    let _ = c.run_worker(&mut TestRunner { cleared: 0 });
    std::process::exit(0);
}
