//! Spawning, reaping and killing worker processes.
//!
//! Workers are forked by the node's worker template (`template.rs`, `python -m volley._template`),
//! which this thread starts and talks to; with `VOLLEY_WORKER_START=exec`, or when the template
//! cannot start, this thread execs each worker itself. Either way the processes are started from
//! this one long-lived thread: Linux's parent-death signal fires when the *thread* that forked a
//! child exits, so spawning from short-lived threads would kill them early. The thread also
//! polls for exec'd children that exited (the template reports its own) and drives the
//! scheduler's clock.
//!
//! Each worker leads a process group of its own (`setsid`), which the processes its tasks start
//! (a `subprocess`, an `os.fork()` copy) join. When a worker ends, whether it exited, was killed
//! or was stopped, the rest of its group is killed too, so nothing a task started outlives its
//! worker. A task that means to leave a daemon behind starts it in a session of its own
//! (`start_new_session=True`).

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use volley_proto::WorkerId;
use volley_sched::WorkerExit;

use crate::logs::{LogCmd, LogSender, Pipe};
use crate::shared::{Shared, SupCmd};
use crate::template::{self, Template, TemplateEvent, TemplateMsg};

pub(crate) struct SpawnSpec {
    pub python: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log_to_driver: bool,
    /// A template the driver forked before the node started: taken over instead of starting
    /// one (see `template::AdoptedTemplate`).
    pub adopt: Option<template::AdoptedTemplate>,
}

pub(crate) fn run(shared: Arc<Shared>, mut spec: SpawnSpec, rx: Receiver<SupCmd>, logs: LogSender) {
    raise_fd_limit();
    let adopt = spec.adopt.take();
    let events = shared.sup.lock().clone();
    let tmpl_args = if template::enabled() { template::template_args(&spec.args) } else { None };
    let mut sup = Sup {
        shared,
        spec,
        logs,
        events,
        children: HashMap::new(),
        tmpl: None,
        tmpl_args,
        generation: 0,
        early_deaths: 0,
        queued: VecDeque::new(),
        starting: HashMap::new(),
        unconnected: HashMap::new(),
        start_timeout: start_timeout(),
        window: start_window(),
    };
    // Started with the node, without making anyone wait: spawn requests that come before it is
    // ready queue on its socket.
    match adopt {
        Some(a) if sup.tmpl_args.is_some() => sup.adopt_template(a),
        Some(a) => {
            // Workers are exec'd (or are not `-m volley._worker`): the driver's template is
            // not wanted.
            crate::diag::warn!("a worker template was passed but workers are exec'd: ending it");
            end_adopted(a);
        }
        None if sup.tmpl_args.is_some() => {
            sup.start_template();
        }
        None => {}
    }
    let mut last_tick = Instant::now();
    let tick_every = Duration::from_millis(100);
    loop {
        // Exec'd children are polled; the template's are reported on the channel.
        let wait = if sup.children.is_empty() {
            tick_every.saturating_sub(last_tick.elapsed()).max(Duration::from_millis(1))
        } else {
            Duration::from_millis(10)
        };
        match rx.recv_timeout(wait) {
            Ok(SupCmd::Spawn(id)) => sup.spawn(id),
            Ok(SupCmd::Kill(id)) => sup.kill(id),
            Ok(SupCmd::Template(ev)) => sup.template_event(ev),
            Ok(SupCmd::Connected(id)) => sup.started(id),
            Ok(SupCmd::Stop(grace)) => {
                sup.stop(&rx, grace);
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if !sup.children.is_empty() {
            reap(&sup.shared, &mut sup.children);
        }
        sup.pump();
        if last_tick.elapsed() >= tick_every {
            last_tick = Instant::now();
            sup.check_start_deadline();
            sup.shared.tick();
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit: the node holds a
/// connection and two output pipes per worker, and thousands of actors would pass the usual soft
/// limit of 1,024 long before memory runs out. The template and the workers inherit it.
fn raise_fd_limit() {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write only `r`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                crate::diag::warn!(
                    "could not raise the open-file limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

/// What to do about running out of file descriptors, said where a worker could not start for
/// it: the node holds three per worker (its connection and its output pipes).
fn fd_hint(e: &std::io::Error) -> String {
    if e.raw_os_error() != Some(libc::EMFILE) {
        return String::new();
    }
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes only `r`.
    let limit = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        format!("{}", r.rlim_cur)
    } else {
        "reached".to_string()
    };
    format!(
        " (this process may have {limit} open files, `ulimit -n`, and the node holds 3 per worker: \
         raise the limit before starting it, see docs/workers.md)"
    )
}

/// The template running now and the workers it forked for this node.
struct Running {
    t: Template,
    ready: bool,
    started: Instant,
    /// Spawn requests it has not answered yet, with the read ends of their output pipes.
    pending: HashMap<WorkerId, Option<(OwnedFd, OwnedFd)>>,
    /// Its live workers and their pids.
    workers: HashMap<WorkerId, u32>,
}

struct Sup {
    shared: Arc<Shared>,
    spec: SpawnSpec,
    logs: LogSender,
    events: Sender<SupCmd>,
    /// Exec'd workers (`VOLLEY_WORKER_START=exec`, or no template).
    children: HashMap<WorkerId, Child>,
    tmpl: Option<Running>,
    /// How to start a template; None: workers are exec'd.
    tmpl_args: Option<Vec<String>>,
    generation: u64,
    /// Templates that died soon after starting, in a row: past a few, workers are exec'd.
    early_deaths: u32,
    /// Workers asked for while `window` others were starting: forked as those connect.
    queued: VecDeque<WorkerId>,
    /// Workers forked (or asked of the template) that have not connected yet, and since when.
    starting: HashMap<WorkerId, Instant>,
    window: usize,
    /// Every worker started (forked or exec'd) that has not connected yet, and since when: one
    /// still not connected after `start_timeout` is killed and reported, so that what waits
    /// for it goes to another worker instead of waiting for good.
    unconnected: HashMap<WorkerId, Instant>,
    start_timeout: Duration,
}

/// `VOLLEY_WORKER_START_TIMEOUT` (seconds) sets it; by default 60 s: a worker that has not
/// connected to its node by then (forked or exec'd, on a loaded machine) never will.
fn start_timeout() -> Duration {
    std::env::var("VOLLEY_WORKER_START_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(Duration::from_secs(60), Duration::from_secs_f64)
}

/// How many forked workers may be starting (not yet connected) at once. A thousand actors asked
/// for at once would otherwise be a thousand processes starting together on a few cores, the
/// template among them with a thousandth of the CPU: each would take seconds instead of
/// milliseconds.
const START_GRACE: Duration = Duration::from_secs(2);

/// `VOLLEY_START_WINDOW` sets it; by default twice the cores, at least 4.
fn start_window() -> usize {
    if let Some(n) = std::env::var("VOLLEY_START_WINDOW").ok().and_then(|v| v.trim().parse().ok()) {
        return std::cmp::max(n, 1);
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    (cores * 2).max(4)
}

impl Sup {
    fn start_template(&mut self) -> bool {
        let Some(args) = self.tmpl_args.clone() else { return false };
        self.generation += 1;
        let g = self.generation;
        match Template::start(&self.shared, &self.spec, &args, g, self.events.clone()) {
            Ok((t, stderr)) => {
                self.run_template(t, stderr);
                true
            }
            Err(e) => {
                self.give_up_template(&format!("it could not be started: {e}"));
                false
            }
        }
    }

    /// A template started or adopted is the one running now; its stderr goes to the driver.
    fn run_template(&mut self, t: Template, stderr: OwnedFd) {
        let to_driver = self.spec.log_to_driver;
        self.logs.send(LogCmd::Add(Pipe { fd: stderr, target: 2, log: None, to_driver }));
        self.tmpl = Some(Running {
            t,
            ready: false,
            started: Instant::now(),
            pending: HashMap::new(),
            workers: HashMap::new(),
        });
    }

    /// Takes over the template the driver forked. If that fails, the next spawn starts one the
    /// usual way (exec'd).
    fn adopt_template(&mut self, a: template::AdoptedTemplate) {
        self.generation += 1;
        let g = self.generation;
        match Template::adopt(&self.shared, a, g, self.events.clone()) {
            Ok((t, stderr)) => self.run_template(t, stderr),
            Err(e) => crate::diag::warn!(
                "could not take over the worker template forked by the driver ({e}); starting \
                 one"
            ),
        }
    }

    fn give_up_template(&mut self, why: &str) {
        self.tmpl_args = None;
        crate::diag::event!(
            Warn,
            "volley: the worker template is not used ({why}); workers are started each with a \
             fresh interpreter"
        );
    }

    fn wants_output(&self) -> bool {
        self.spec.log_to_driver || crate::log_files::log_dir().is_some()
    }

    fn spawn(&mut self, id: WorkerId) {
        if self.tmpl.is_none() && self.tmpl_args.is_some() {
            self.start_template();
        }
        if self.tmpl.is_none() {
            return self.exec_spawn(id);
        }
        if self.starting.len() >= self.window {
            self.queued.push_back(id);
            return;
        }
        self.starting.insert(id, Instant::now());
        self.unconnected.insert(id, Instant::now());
        let pipes = if self.wants_output() {
            match (template::pipe(), template::pipe()) {
                (Ok(o), Ok(e)) => Some((o, e)),
                (Err(e), _) | (_, Err(e)) => {
                    let how = format!("could not make its output pipes: {e}{}", fd_hint(&e));
                    return self.shared.worker_exited(id, WorkerExit::failed(how));
                }
            }
        } else {
            None
        };
        let Some(run) = self.tmpl.as_mut() else { return };
        // A failed send means the template is gone: its reader reports that, and the request
        // still pending then goes to the next template (or is exec'd).
        let _ = run.t.spawn(id, pipes.as_ref().map(|((_, ow), (_, ew))| (ow, ew)));
        // Our copies of the write ends close here: the worker holds the only ones.
        run.pending.insert(id, pipes.map(|((or, _), (er, _))| (or, er)));
    }

    fn exec_spawn(&mut self, id: WorkerId) {
        match spawn(&self.shared, &self.spec, id) {
            Ok(mut child) => {
                self.unconnected.insert(id, Instant::now());
                let log = crate::log_files::open_worker_log(child.id());
                let to_driver = self.spec.log_to_driver;
                if let Some(out) = child.stdout.take() {
                    let log = log.clone();
                    self.logs.send(LogCmd::Add(Pipe { fd: out.into(), target: 1, log, to_driver }));
                }
                if let Some(err) = child.stderr.take() {
                    self.logs.send(LogCmd::Add(Pipe { fd: err.into(), target: 2, log, to_driver }));
                }
                self.children.insert(id, child);
            }
            Err(e) => {
                let how = format!("could not start `{}`: {e}{}", self.spec.python, fd_hint(&e));
                self.shared.worker_exited(id, WorkerExit::failed(how))
            }
        }
    }

    /// Worker `id` connected (or is gone): the next queued one may be forked.
    fn started(&mut self, id: WorkerId) {
        self.unconnected.remove(&id);
        if self.starting.remove(&id).is_some() {
            self.pump();
        }
    }

    /// Forks queued workers while the window has room. A worker still not connected after
    /// [`START_GRACE`] stops counting against the window: one that hangs as it starts must not
    /// hold the others back for good (its tasks wait for it as they would for an exec'd one).
    fn pump(&mut self) {
        if self.queued.is_empty() {
            return;
        }
        self.starting.retain(|_, since| since.elapsed() < START_GRACE);
        while self.starting.len() < self.window {
            let Some(next) = self.queued.pop_front() else { break };
            self.spawn(next);
        }
    }

    /// Kills and reports the workers started longer than `start_timeout` ago that have not
    /// connected (a fork that hung, an interpreter stuck before its handshake): the scheduler
    /// then starts another for their work, which never ran. Reported first, so that the
    /// handshake refuses one that connects meanwhile (see `node::handshake`).
    fn check_start_deadline(&mut self) {
        if self.unconnected.is_empty() {
            return;
        }
        let late: Vec<WorkerId> = self
            .unconnected
            .iter()
            .filter(|(_, since)| since.elapsed() >= self.start_timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.unconnected.remove(&id);
            let settled = {
                let lives = self.shared.lives.lock();
                lives.get(&id).is_some_and(|l| l.connected || l.exit.is_some())
            };
            if settled {
                continue;
            }
            let how = format!(
                "it did not connect to its node within {:.0} s of being started, and was killed \
                 (VOLLEY_WORKER_START_TIMEOUT sets the limit)",
                self.start_timeout.as_secs_f64()
            );
            crate::diag::event!(Warn, "volley: worker {}: {how}", id.0);
            self.shared.worker_exited(id, WorkerExit::failed(how));
            self.starting.remove(&id);
            if let Some(mut c) = self.children.remove(&id) {
                let _ = c.kill();
                end_group(c.id());
                let _ = c.wait();
            } else if let Some(run) = self.tmpl.as_mut() {
                // Forgotten here first, so that the template's report of its end (or of a
                // fork it makes after all) is not reported again.
                run.pending.remove(&id);
                run.workers.remove(&id);
                let _ = run.t.kill(id);
            }
        }
    }

    fn kill(&mut self, id: WorkerId) {
        if let Some(at) = self.queued.iter().position(|q| *q == id) {
            self.queued.remove(at);
            let how = WorkerExit::killed("killed before it was started");
            return self.shared.worker_exited(id, how);
        }
        if let Some(c) = self.children.get_mut(&id) {
            let _ = c.kill();
            end_group(c.id());
        } else if let Some(run) = &self.tmpl {
            // The template kills its own child: no pid of ours that could have been reused.
            if run.workers.contains_key(&id) || run.pending.contains_key(&id) {
                let _ = run.t.kill(id);
            }
        }
    }

    fn template_event(&mut self, ev: TemplateEvent) {
        let Some(run) = self.tmpl.as_mut() else { return };
        if ev.generation != run.t.generation {
            return; // a replaced template's last words: its workers were reported when it died
        }
        match ev.what {
            TemplateMsg::Ready => run.ready = true,
            TemplateMsg::Spawned(id, pid) => {
                let Some(pipes) = run.pending.remove(&id) else {
                    // Asked for, then given up on (see `check_start_deadline`): it goes.
                    crate::diag::warn!("the worker template forked worker {} unasked", id.0);
                    let _ = run.t.kill(id);
                    return;
                };
                run.workers.insert(id, pid);
                if let Some((out, err)) = pipes {
                    let log = crate::log_files::open_worker_log(pid);
                    let to_driver = self.spec.log_to_driver;
                    let l = log.clone();
                    self.logs.send(LogCmd::Add(Pipe { fd: out, target: 1, log: l, to_driver }));
                    self.logs.send(LogCmd::Add(Pipe { fd: err, target: 2, log, to_driver }));
                }
            }
            TemplateMsg::Failed(id, why) => {
                run.pending.remove(&id);
                let how = format!("could not be forked from the worker template: {why}");
                self.shared.worker_exited(id, WorkerExit::failed(how));
                self.started(id);
            }
            TemplateMsg::Exited(id, status) => {
                if run.workers.remove(&id).is_some() {
                    self.shared.worker_exited(id, describe(ExitStatus::from_raw(status)));
                }
                self.started(id);
            }
            TemplateMsg::Warn(msg) => crate::diag::event!(Warn, "volley: {msg}"),
            TemplateMsg::Gone => self.template_died(),
        }
    }

    /// The template's socket closed: it died (or failed to start). Its workers die with it
    /// (their parent-death signal); each is reported so that the scheduler retries or fails its
    /// tasks as for any crash, and a new template takes the requests it had not answered.
    fn template_died(&mut self) {
        let Some(run) = self.tmpl.take() else { return };
        // Their groups first, while the template's end keeps them unreaped or just reaped.
        for pid in run.workers.values() {
            end_group(*pid);
        }
        let lived = run.started.elapsed();
        let was_ready = run.ready;
        let adopted = run.t.adopted();
        let status = run.t.end();
        let how = describe(status).how;
        for id in run.workers.keys() {
            let exit = WorkerExit::killed(format!("the worker template died ({how})"));
            self.shared.worker_exited(*id, exit);
            self.starting.remove(id);
        }
        // The next one is exec'd either way: the driver has threads by now, it cannot fork
        // another.
        if adopted && !was_ready {
            crate::diag::warn!(
                "the worker template forked by the driver ended before it was ready ({how}); \
                 starting one"
            );
        } else if !was_ready {
            self.give_up_template(&format!("it ended before it was ready: {how}"));
        } else {
            // Deaths soon after starting, in a row, mean the next template would die too.
            self.early_deaths =
                if lived < Duration::from_secs(10) { self.early_deaths + 1 } else { 0 };
            if self.early_deaths >= 3 {
                self.give_up_template(&format!(
                    "it died {} times in a row within seconds of starting: {how}",
                    self.early_deaths
                ));
            } else {
                crate::diag::warn!("the worker template died ({how}); starting a new one");
            }
        }
        let mut pending: Vec<WorkerId> = run.pending.into_keys().collect();
        pending.sort();
        for id in &pending {
            self.starting.remove(id);
        }
        // Those it had not answered first, then those that waited for the window.
        pending.extend(std::mem::take(&mut self.queued));
        for id in pending {
            self.spawn(id);
        }
    }

    fn stop(&mut self, rx: &Receiver<SupCmd>, grace: Duration) {
        let deadline = Instant::now() + grace;
        // Workers never started need no waiting for.
        self.queued.clear();
        let live = |s: &Sup| {
            !s.children.is_empty()
                || s.tmpl.as_ref().is_some_and(|r| !r.workers.is_empty() || !r.pending.is_empty())
        };
        while live(self) && Instant::now() < deadline {
            reap(&self.shared, &mut self.children);
            if let Ok(SupCmd::Template(ev)) = rx.recv_timeout(Duration::from_millis(5)) {
                if !matches!(ev.what, TemplateMsg::Gone) {
                    self.template_event(ev);
                }
            }
        }
        for c in self.children.values_mut() {
            let _ = c.kill();
            end_group(c.id());
        }
        for (_, mut c) in self.children.drain() {
            let _ = c.wait();
        }
        if let Some(run) = self.tmpl.take() {
            for pid in run.workers.values() {
                end_group(*pid);
            }
            run.t.end();
        }
        self.logs.send(LogCmd::Stop(Duration::from_millis(500)));
    }
}

fn reap(shared: &Shared, children: &mut HashMap<WorkerId, Child>) {
    let exited: Vec<WorkerId> =
        children.iter().filter(|(_, c)| has_exited(c)).map(|(id, _)| *id).collect();
    for id in exited {
        let Some(mut c) = children.remove(&id) else { continue };
        // Before reaping: while the worker is a zombie its pid, which names the group, cannot
        // be taken by another process.
        end_group(c.id());
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

/// Kills and reaps a template the driver forked that this node will not use.
fn end_adopted(a: template::AdoptedTemplate) {
    // SAFETY: plain syscalls on the driver's own unreaped child.
    unsafe {
        libc::kill(a.pid as libc::pid_t, libc::SIGKILL);
        let mut status: libc::c_int = 0;
        while libc::waitpid(a.pid as libc::pid_t, &mut status, 0) < 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
    }
}

/// Kills what is left of the worker's process group: the processes its tasks started.
fn end_group(pid: u32) {
    // SAFETY: a plain syscall. The group is named by the worker's pid (it called setsid), which
    // stays its own until the worker is reaped (by us, or by the template, which reports it
    // only after it has killed the group too).
    unsafe {
        libc::killpg(pid as libc::pid_t, libc::SIGKILL);
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
    // The worker maps the store's memfd through /proc/self/fd: no permission on the driver's
    // /proc needed.
    set_up_child(&mut cmd, vec![shared.store_fd]);
    cmd.spawn()
}

/// What a child the node execs (a worker, the template) does between fork and exec: it
/// inherits `fds` (close-on-exec cleared in the child only), leads its own session (a Ctrl-C in
/// the driver's terminal is the driver's, not its children's) and dies with this process, even
/// a SIGKILLed one.
pub(crate) fn set_up_child(cmd: &mut Command, fds: Vec<std::os::fd::RawFd>) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls between fork and exec (iterating `fds` allocates
    // nothing).
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            libc::setsid();
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}
