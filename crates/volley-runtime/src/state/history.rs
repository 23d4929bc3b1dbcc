//! History: the head writes the rows its tables change to the session directory as they
//! change, so that `volley list --session DIR` (and a dashboard) can still show a cluster after
//! it stopped or crashed.
//!
//! A thread takes the changed rows every half second (never under the scheduler's lock) and
//! appends them as JSON lines, the same objects a query answers with `detail`, to
//! `tasks.jsonl` and `actors.jsonl`; a reader folds them by id, the last line of an id wins.
//! Bounded: a file that grows past half of `VOLLEY_HISTORY_MAX_BYTES` (default 64 MiB) becomes
//! `<name>.1.jsonl` (replacing the one before) and a new file starts, so the two hold at most
//! that much and the newest rows. Files are created 0600 without following links, in a
//! directory that must be private (`rundir::ensure_private_dir`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::Tables;

/// The default bound on the history files of one kind, together.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// How often the writer takes the changed rows.
const PERIOD: Duration = Duration::from_millis(500);

struct Log {
    path: PathBuf,
    file: Option<File>,
    written: u64,
    max: u64,
}

impl Log {
    fn new(dir: &Path, name: &str, max: u64) -> Log {
        Log { path: dir.join(format!("{name}.jsonl")), file: None, written: 0, max }
    }

    fn open(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&self.path)?;
            self.written = f.metadata()?.len();
            self.file = Some(f);
        }
        self.file.as_mut().ok_or_else(|| std::io::Error::other("history file not open"))
    }

    fn append(&mut self, rows: &[serde_json::Value]) -> std::io::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for r in rows {
            text.push_str(&r.to_string());
            text.push('\n');
        }
        if self.written + text.len() as u64 > self.max / 2 && self.written > 0 {
            self.file = None;
            std::fs::rename(&self.path, self.path.with_extension("1.jsonl"))?;
        }
        let f = self.open()?;
        f.write_all(text.as_bytes())?;
        self.written += text.len() as u64;
        Ok(())
    }
}

/// Starts writing `tables`' changes under `dir` until `closed` is set (one last write then).
pub(crate) fn start(
    shared: Arc<crate::shared::Shared>,
    dir: &Path,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    crate::rundir::ensure_private_dir(dir)?;
    let max = std::env::var("VOLLEY_HISTORY_MAX_BYTES")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_MAX_BYTES)
        .max(4096);
    let mut tasks = Log::new(dir, "tasks", max);
    let mut actors = Log::new(dir, "actors", max);
    shared.head.tables.set_history(true);
    std::thread::Builder::new().name("volley-history".into()).spawn(move || {
        let mut warned = false;
        loop {
            let last = shared.closed.load(Ordering::Acquire);
            let (t, a) = shared.head.tables.take_history();
            if let Err(e) = tasks.append(&t).and_then(|_| actors.append(&a)) {
                if !warned {
                    crate::diag::warn!("could not write the state history: {e}");
                    warned = true;
                }
            }
            if last {
                return;
            }
            std::thread::sleep(PERIOD);
        }
    })
}

impl Tables {
    /// Whether changed rows are kept for the history writer.
    pub(crate) fn set_history(&self, on: bool) {
        self.history.store(on, Ordering::Release);
    }
}
