//! Each run's log file, `.snapring/logs/<id>.log`, kept in the store so it survives the
//! machine that ran it. A tracing layer (installed by the binary) writes every event at
//! INFO and above into the file of the run in progress, as text or JSON lines; between
//! runs it writes nothing. One run at a time per process: the daemon runs each backup
//! in a child process (`snapring run`), which keeps logs apart.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

static SINK: Mutex<Option<File>> = Mutex::new(None);

/// Starts writing the log to `path` (appending: a resumed id never overwrites).
pub fn start(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    // Private (0600), as all of the store's bookkeeping: a log names the source's files.
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    *SINK.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    Ok(())
}

/// Flushes and closes the current run's log.
pub fn stop() {
    if let Some(f) = SINK.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = f.sync_all();
    }
}

/// The `MakeWriter` for the tracing layer.
pub struct RunLog;

pub struct RunLogWriter;

impl Write for RunLogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(f) = SINK.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            // A log that cannot be written must not stop the backup.
            let _ = f.write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RunLog {
    type Writer = RunLogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        RunLogWriter
    }
}
