//! The supervisor's side of the worker template (`python -m volley._template`, a fork server).
//!
//! Starting a worker is an interpreter start and volley's imports: tens of milliseconds and a few
//! megabytes each. The template does that once; each worker is then a `fork` of it, sharing its
//! pages copy-on-write. The two processes talk over a private `SOCK_SEQPACKET` socket pair
//! (one ASCII message a packet, the worker's output pipes passed with `SCM_RIGHTS`); nothing else
//! can reach it, so no token, but every message is decoded defensively: a bad one is an error.
//! `_template.py` describes the messages.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Sender;

use volley_proto::WorkerId;

use crate::shared::{Shared, SupCmd};
use crate::supervisor::SpawnSpec;

/// What the template said (or that it went away), tagged with the template's generation so that
/// a late message of a replaced template is not taken for the new one's.
#[derive(Debug)]
pub(crate) struct TemplateEvent {
    pub generation: u64,
    pub what: TemplateMsg,
}

#[derive(Debug, PartialEq)]
pub(crate) enum TemplateMsg {
    Ready,
    Spawned(WorkerId, u32),
    Failed(WorkerId, String),
    /// The raw wait status, as `waitpid` gives it.
    Exited(WorkerId, i32),
    Warn(String),
    /// Its socket closed: the template died (or never started).
    Gone,
}

/// A message the template sent that is not one it may send.
#[derive(Debug, thiserror::Error)]
#[error("the worker template sent a malformed message: {0:?}")]
pub(crate) struct BadMessage(String);

pub(crate) fn parse(packet: &[u8]) -> Result<TemplateMsg, BadMessage> {
    let text = std::str::from_utf8(packet)
        .map_err(|_| BadMessage(String::from_utf8_lossy(packet).into_owned()))?;
    let bad = || BadMessage(text.chars().take(80).collect());
    let (verb, rest) = text.split_once(' ').unwrap_or((text, ""));
    let id = |s: &str| s.parse::<u32>().map(WorkerId).map_err(|_| bad());
    Ok(match verb {
        "ready" if rest.is_empty() => TemplateMsg::Ready,
        "spawned" => {
            let (w, pid) = rest.split_once(' ').ok_or_else(bad)?;
            let pid: u32 = pid.parse().map_err(|_| bad())?;
            if pid <= 1 {
                return Err(bad());
            }
            TemplateMsg::Spawned(id(w)?, pid)
        }
        "failed" => {
            let (w, why) = rest.split_once(' ').ok_or_else(bad)?;
            TemplateMsg::Failed(id(w)?, why.to_string())
        }
        "exited" => {
            let (w, st) = rest.split_once(' ').ok_or_else(bad)?;
            TemplateMsg::Exited(id(w)?, st.parse().map_err(|_| bad())?)
        }
        "warn" => TemplateMsg::Warn(rest.to_string()),
        _ => return Err(bad()),
    })
}

/// A running template: the process and the supervisor's end of the socket pair.
pub(crate) struct Template {
    pub generation: u64,
    proc: Proc,
    sock: OwnedFd,
}

/// How the template process came to be.
enum Proc {
    /// Exec'd by the supervisor thread, its parent (its parent-death signal follows the node).
    Child(Child),
    /// Forked by the driver before its node started (`_template.fork_from_driver`): the driver
    /// is its parent, and this is its pid, which stays ours (not reused) until we reap it.
    Adopted(u32),
}

/// A template the driver forked from itself before it started the node: its pid and the
/// supervisor's end of its socket pair. It waits for a `setup` message (the node's socket,
/// token and store, which did not exist when it was forked) before it says `ready`.
#[derive(Debug, Clone)]
pub struct AdoptedTemplate {
    pub pid: u32,
    pub sock: std::sync::Arc<OwnedFd>,
}

/// The arguments that start the template instead of a worker: the workers' own, with the
/// module swapped. None when the workers are not `-m volley._worker` (a custom worker program:
/// exec'd as it is).
pub(crate) fn template_args(worker_args: &[String]) -> Option<Vec<String>> {
    let last = worker_args.last()?;
    if last != "volley._worker"
        || worker_args.len() < 2
        || worker_args[worker_args.len() - 2] != "-m"
    {
        return None;
    }
    let mut args = worker_args.to_vec();
    let n = args.len();
    args[n - 1] = "volley._template".into();
    Some(args)
}

/// Whether workers are forked from a template (the default) or each exec'd
/// (`VOLLEY_WORKER_START=exec`).
pub(crate) fn enabled() -> bool {
    std::env::var("VOLLEY_WORKER_START").map(|v| v.trim() != "exec").unwrap_or(true)
}

impl Template {
    /// Starts a template and the thread that reads what it says into the supervisor's channel.
    pub(crate) fn start(
        shared: &Shared,
        spec: &SpawnSpec,
        args: &[String],
        generation: u64,
        events: Sender<SupCmd>,
    ) -> std::io::Result<(Template, OwnedFd)> {
        let (ours, theirs) = seqpacket_pair()?;
        let mut cmd = Command::new(&spec.python);
        let their_fd = theirs.as_raw_fd();
        cmd.args(args)
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("VOLLEY_NODE_SOCKET", &shared.socket_name)
            .env("VOLLEY_SESSION_TOKEN", &shared.token)
            .env("VOLLEY_STORE", &shared.store_env)
            .env("VOLLEY_TEMPLATE_FD", their_fd.to_string())
            .env_remove("VOLLEY_WORKER_ID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // The store's memfd and the template's end of the socket pair are inherited; its
        // workers inherit them in turn.
        crate::supervisor::set_up_child(&mut cmd, vec![shared.store_fd, their_fd]);
        let mut child = cmd.spawn()?;
        drop(theirs);
        let stderr: OwnedFd = match child.stderr.take() {
            Some(e) => e.into(),
            None => return Err(std::io::Error::other("the template's stderr was not piped")),
        };
        let reader = ours.try_clone()?;
        std::thread::Builder::new()
            .name("volley-template".into())
            .spawn(move || read_loop(reader, generation, events))?;
        Ok((Template { generation, proc: Proc::Child(child), sock: ours }, stderr))
    }

    /// Takes over a template the driver forked (see [`AdoptedTemplate`]): sends it what it needs
    /// to fork workers for this node (the store's memfd and the write end of a pipe for its
    /// stderr, whose read end is returned) and starts the reader thread, as [`Template::start`].
    pub(crate) fn adopt(
        shared: &Shared,
        adopted: AdoptedTemplate,
        generation: u64,
        events: Sender<SupCmd>,
    ) -> std::io::Result<(Template, OwnedFd)> {
        let AdoptedTemplate { pid, sock } = adopted;
        let sock = std::sync::Arc::try_unwrap(sock).or_else(|shared| shared.try_clone())?;
        let t = Template { generation, proc: Proc::Adopted(pid), sock };
        let setup = || -> std::io::Result<OwnedFd> {
            let (err_r, err_w) = pipe()?;
            // None of these has a space: the template splits on them.
            let msg = format!("setup {} {} {}", shared.socket_name, shared.token, shared.store_env);
            send_with_fds(&t.sock, msg.as_bytes(), &[shared.store_fd, err_w.as_raw_fd()])?;
            let reader = t.sock.try_clone()?;
            std::thread::Builder::new()
                .name("volley-template".into())
                .spawn(move || read_loop(reader, generation, events))?;
            Ok(err_r)
        };
        match setup() {
            Ok(err_r) => Ok((t, err_r)),
            Err(e) => {
                t.end();
                Err(e)
            }
        }
    }

    /// Asks for a worker; `out` the write ends of its stdout and stderr (None: discarded).
    pub(crate) fn spawn(
        &self,
        id: WorkerId,
        out: Option<(&OwnedFd, &OwnedFd)>,
    ) -> std::io::Result<()> {
        let msg = format!("spawn {}", id.0);
        match out {
            Some((o, e)) => {
                send_with_fds(&self.sock, msg.as_bytes(), &[o.as_raw_fd(), e.as_raw_fd()])
            }
            None => send_with_fds(&self.sock, msg.as_bytes(), &[]),
        }
    }

    /// Whether the driver forked this one (rather than the supervisor exec'ing it).
    pub(crate) fn adopted(&self) -> bool {
        matches!(self.proc, Proc::Adopted(_))
    }

    pub(crate) fn kill(&self, id: WorkerId) -> std::io::Result<()> {
        send_with_fds(&self.sock, format!("kill {}", id.0).as_bytes(), &[])
    }

    /// Kills the template (its workers die with it: their parent-death signal) and reaps it.
    pub(crate) fn end(self) -> std::process::ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        match self.proc {
            Proc::Child(mut child) => {
                let _ = child.kill();
                loop {
                    match child.wait() {
                        Ok(s) => return s,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => return ExitStatusExt::from_raw(0),
                    }
                }
            }
            Proc::Adopted(pid) => {
                let pid = pid as libc::pid_t;
                // SAFETY: plain syscalls on our own unreaped child (its pid cannot be reused
                // before we reap it, unless the driver's own code reaped it: then ECHILD).
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    let mut status: libc::c_int = 0;
                    loop {
                        let r = libc::waitpid(pid, &mut status, 0);
                        if r == pid {
                            return ExitStatusExt::from_raw(status);
                        }
                        if r < 0
                            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
                        {
                            continue;
                        }
                        return ExitStatusExt::from_raw(0);
                    }
                }
            }
        }
    }
}

fn read_loop(sock: OwnedFd, generation: u64, events: Sender<SupCmd>) {
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: recv writes at most buf.len() bytes into buf.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let what = if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            TemplateMsg::Gone
        } else if n == 0 {
            TemplateMsg::Gone
        } else {
            match parse(&buf[..n as usize]) {
                Ok(m) => m,
                Err(e) => TemplateMsg::Warn(e.to_string()),
            }
        };
        let gone = what == TemplateMsg::Gone;
        if events.send(SupCmd::Template(TemplateEvent { generation, what })).is_err() || gone {
            return;
        }
    }
}

fn seqpacket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds: [RawFd; 2] = [-1, -1];
    // SAFETY: socketpair writes two fds into `fds`.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A pipe whose ends are close-on-exec: the read end for the node's log reader, the write end
/// passed to the template.
pub(crate) fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds: [RawFd; 2] = [-1, -1];
    // SAFETY: pipe2 writes two fds into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn send_with_fds(sock: &OwnedFd, data: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    let fd_bytes = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = if fds.is_empty() { 0 } else { (unsafe { libc::CMSG_SPACE(fd_bytes) }) as usize };
    // u64 words: the control buffer must be aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; every pointer in it points into live buffers above.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(cmsg).cast::<RawFd>(),
                fds.len(),
            );
        }
        loop {
            let r = libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
            if r >= 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_message() {
        assert_eq!(parse(b"ready").expect("parses"), TemplateMsg::Ready);
        assert_eq!(
            parse(b"spawned 3 1234").expect("parses"),
            TemplateMsg::Spawned(WorkerId(3), 1234)
        );
        assert_eq!(parse(b"exited 3 9").expect("parses"), TemplateMsg::Exited(WorkerId(3), 9));
        assert_eq!(
            parse(b"failed 4 fork: no memory").expect("parses"),
            TemplateMsg::Failed(WorkerId(4), "fork: no memory".into())
        );
        assert_eq!(parse(b"warn a b").expect("parses"), TemplateMsg::Warn("a b".into()));
    }

    #[test]
    fn refuses_malformed_messages() {
        for bad in [
            &b""[..],
            b"ready now",
            b"spawned",
            b"spawned 3",
            b"spawned x 12",
            b"spawned 3 1",
            b"spawned 3 -5",
            b"exited 3",
            b"exited 3 nine",
            b"bogus 1",
            b"\xff\xfe",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn template_args_swap_the_module() {
        let args: Vec<String> = ["-S", "-m", "volley._worker"].map(String::from).to_vec();
        assert_eq!(template_args(&args).expect("swapped"), ["-S", "-m", "volley._template"]);
        assert!(template_args(&["my_worker.py".to_string()]).is_none());
        assert!(template_args(&[]).is_none());
    }
}
