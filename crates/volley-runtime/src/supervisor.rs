//! Spawning, reaping and killing worker processes.
//!
//! All workers are forked from this one long-lived thread: Linux's parent-death signal fires when
//! the *thread* that forked a child exits, so spawning from short-lived threads would kill workers
//! early. The thread also polls for exited children and drives the scheduler's clock.
//!
//! Each worker leads a process group of its own (`setsid`), which the processes its tasks start
//! (a `subprocess`, an `os.fork()` copy) join. When a worker ends, whether it exited, was killed
//! or was stopped, the rest of its group is killed too, so nothing a task started outlives its
//! worker. A task that means to leave a daemon behind starts it in a session of its own
//! (`start_new_session=True`).

use std::collections::HashMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use volley_proto::WorkerId;
use volley_sched::WorkerExit;

use crate::logs::{LogCmd, LogSender, Pipe};
use crate::shared::{Shared, SupCmd};

pub(crate) struct SpawnSpec {
    pub python: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log_to_driver: bool,
}

pub(crate) fn run(shared: Arc<Shared>, spec: SpawnSpec, rx: Receiver<SupCmd>, logs: LogSender) {
    let mut children: HashMap<WorkerId, Child> = HashMap::new();
    let mut last_tick = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(10)) {
            Ok(SupCmd::Spawn(id)) => match spawn(&shared, &spec, id) {
                Ok(mut child) => {
                    let log = crate::log_files::open_worker_log(child.id());
                    let to_driver = spec.log_to_driver;
                    if let Some(out) = child.stdout.take() {
                        let log = log.clone();
                        logs.send(LogCmd::Add(Pipe { fd: out.into(), target: 1, log, to_driver }));
                    }
                    if let Some(err) = child.stderr.take() {
                        logs.send(LogCmd::Add(Pipe { fd: err.into(), target: 2, log, to_driver }));
                    }
                    children.insert(id, child);
                }
                Err(e) => {
                    let how = format!("could not start `{}`: {e}", spec.python);
                    shared.worker_exited(id, WorkerExit::failed(how))
                }
            },
            Ok(SupCmd::Kill(id)) => {
                if let Some(c) = children.get_mut(&id) {
                    let _ = c.kill();
                    end_group(c);
                }
            }
            Ok(SupCmd::Stop(grace)) => {
                let deadline = Instant::now() + grace;
                while !children.is_empty() && Instant::now() < deadline {
                    reap(&shared, &mut children);
                    std::thread::sleep(Duration::from_millis(5));
                }
                for c in children.values_mut() {
                    let _ = c.kill();
                    end_group(c);
                }
                for (_, mut c) in children.drain() {
                    let _ = c.wait();
                }
                logs.send(LogCmd::Stop(Duration::from_millis(500)));
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        reap(&shared, &mut children);
        if last_tick.elapsed() >= Duration::from_millis(100) {
            last_tick = Instant::now();
            shared.tick();
        }
    }
}

fn reap(shared: &Shared, children: &mut HashMap<WorkerId, Child>) {
    let exited: Vec<WorkerId> =
        children.iter().filter(|(_, c)| has_exited(c)).map(|(id, _)| *id).collect();
    for id in exited {
        let Some(mut c) = children.remove(&id) else { continue };
        // Before reaping: while the worker is a zombie its pid, which names the group, cannot
        // be taken by another process.
        end_group(&c);
        match c.wait() {
            Ok(status) => shared.worker_exited(id, describe(status)),
            Err(e) => shared.worker_exited(id, WorkerExit::failed(format!("ended ({e})"))),
        }
    }
}

/// Whether `c` has exited, without reaping it.
fn has_exited(c: &Child) -> bool {
    // SAFETY: waitid writes only into `info`; WNOWAIT leaves the child waitable.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(
            libc::P_PID,
            c.id() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        r == 0 && info.si_pid() != 0
    }
}

/// Kills what is left of the worker's process group: the processes its tasks started.
fn end_group(c: &Child) {
    // SAFETY: a plain syscall. The group is named by the worker's pid (it called setsid), which
    // stays ours until `c` is reaped.
    unsafe {
        libc::killpg(c.id() as libc::pid_t, libc::SIGKILL);
    }
}

fn describe(status: ExitStatus) -> WorkerExit {
    match (status.code(), status.signal()) {
        (Some(code), _) => WorkerExit::failed(format!("exit code {code}")),
        (None, Some(sig)) => {
            let how = format!("killed by signal {sig} ({})", signal_name(sig));
            // Signals someone sends; a crash (SIGSEGV, SIGABRT, ...) is the worker's own failure.
            let sent = [libc::SIGKILL, libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];
            if sent.contains(&sig) {
                WorkerExit::killed(how)
            } else {
                WorkerExit::failed(how)
            }
        }
        _ => WorkerExit::failed("ended"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGINT => "SIGINT",
        libc::SIGILL => "SIGILL",
        _ => "signal",
    }
}

fn spawn(shared: &Shared, spec: &SpawnSpec, id: WorkerId) -> std::io::Result<Child> {
    let mut cmd = Command::new(&spec.python);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("VOLLEY_NODE_SOCKET", &shared.socket_name)
        .env("VOLLEY_SESSION_TOKEN", &shared.token)
        .env("VOLLEY_WORKER_ID", id.0.to_string())
        .env("VOLLEY_STORE", &shared.store_env)
        .stdin(Stdio::null());
    // Read when it goes to the driver or to the worker's log file.
    if spec.log_to_driver || crate::log_files::log_dir().is_some() {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    } else {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    let parent = std::process::id() as libc::pid_t;
    let store_fd = shared.store_fd;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The worker inherits the store's memfd (close-on-exec is cleared in the child only),
            // and maps it through /proc/self/fd: no permission on the driver's /proc needed.
            if libc::fcntl(store_fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // Own session: a Ctrl-C in the driver's terminal is the driver's, not the workers'.
            libc::setsid();
            // Die with the driver, even if it is SIGKILLed.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd.spawn()
}
