//! Spawning, reaping and killing worker processes.
//!
//! All workers are forked from this one long-lived thread: Linux's parent-death signal fires when
//! the *thread* that forked a child exits, so spawning from short-lived threads would kill workers
//! early. The thread also polls for exited children and drives the scheduler's clock.

use std::collections::HashMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use volley_proto::WorkerId;

use crate::logs::{LogCmd, LogSender};
use crate::node::Shared;

pub(crate) enum SupCmd {
    Spawn(WorkerId),
    Kill(WorkerId),
    /// Wait up to the given time for children to exit, then kill the rest and stop.
    Stop(Duration),
}

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
                    if let Some(out) = child.stdout.take() {
                        logs.send(LogCmd::Add(out.into(), 1));
                    }
                    if let Some(err) = child.stderr.take() {
                        logs.send(LogCmd::Add(err.into(), 2));
                    }
                    children.insert(id, child);
                }
                Err(e) => {
                    shared.worker_exited(id, format!("could not start `{}`: {e}", spec.python))
                }
            },
            Ok(SupCmd::Kill(id)) => {
                if let Some(c) = children.get_mut(&id) {
                    let _ = c.kill();
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
    let exited: Vec<(WorkerId, ExitStatus)> = children
        .iter_mut()
        .filter_map(|(id, c)| c.try_wait().ok().flatten().map(|s| (*id, s)))
        .collect();
    for (id, status) in exited {
        children.remove(&id);
        shared.worker_exited(id, describe(status));
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig} ({})", signal_name(sig)),
        _ => "ended".to_string(),
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
    if spec.log_to_driver {
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
