//! A job's pre and post commands (`pre_command`, `post_command`, as rsnapshot's
//! `cmd_preexec`/`cmd_postexec`): a program and its arguments run without a shell, in a
//! process group of its own, with a timeout (the whole group is killed when it passes),
//! given environment variables and optionally bytes on stdin. Every line it prints goes
//! into the run's log (through tracing) as it comes, up to 4 KiB a line and 1 MiB a
//! stream. Also runs a `command` notifier. Does process I/O.

use std::io::{BufRead, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The timeout when a job sets none (`hook_timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// How many of its last output lines a failed command's error quotes.
const TAIL_LINES: usize = 5;

/// The longest line of a command's output kept (longer ones are cut).
const MAX_LINE: usize = 4096;

/// How much of each of a command's output streams goes into the log.
const MAX_LOGGED: usize = 1 << 20;

/// A command to run: the program, its arguments, its timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    pub argv: Vec<String>,
    pub timeout: Duration,
    /// Once the command has ended, kill what it left running that still holds its
    /// output (its process group): a notifier's command. A pre or post command may
    /// start something meant to outlive it, and keeps it.
    pub kill_leftovers: bool,
}

/// How a pre or post command went: how long it took and how it ended.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HookOutcome {
    /// The program and its arguments.
    pub command: Vec<String>,
    pub seconds: f64,
    /// Its exit code; `None` when it could not start, timed out or died of a signal.
    pub exit_code: Option<i32>,
    pub ok: bool,
    /// Why it failed, when it did (with its last lines of output).
    pub error: Option<String>,
}

/// Splits a command line the way a POSIX shell would (quotes, backslashes), without
/// running a shell: `--pre-command 'fsfreeze --freeze "/mnt/my data"'`.
pub fn split(line: &str) -> Result<Vec<String>, String> {
    match shlex::split(line) {
        Some(v) if !v.is_empty() => Ok(v),
        Some(_) => Err(format!("command {line:?} is empty")),
        None => Err(format!(
            "command {line:?}: unbalanced quotes or a trailing backslash"
        )),
    }
}

/// How a command's error begins when `cancel` killed it ([`run`]): snapring was
/// stopped (SIGINT/SIGTERM, a daemon stop) while it ran, not the command's own failure.
pub const INTERRUPTED: &str = "killed: snapring was interrupted";

/// The error of a `pre_command` that the end of the run's backup window killed (its
/// `cancel` set by the window, not a stop): put in place of [`INTERRUPTED`] by the run.
pub const WINDOW_ENDED: &str = "killed: the backup window ended while it ran";

/// Whether `out` is a command the run stopped (a stop, or the end of its window:
/// [`INTERRUPTED`], [`WINDOW_ENDED`]), not one that failed by itself.
pub fn stopped(out: &HookOutcome) -> bool {
    interrupted(out) || (out.exit_code.is_none() && out.error.as_deref() == Some(WINDOW_ENDED))
}

/// Whether `out` is a command that `cancel` killed ([`INTERRUPTED`]).
pub fn interrupted(out: &HookOutcome) -> bool {
    out.exit_code.is_none()
        && out
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with(INTERRUPTED))
}

/// Runs `hook` (`name`: `pre_command` or `post_command`, for the log) with `env` added
/// to the environment and `stdin` on its standard input; never fails, the outcome
/// says how it went. `cancel` (SIGINT/SIGTERM) kills it as a timeout does: in a process
/// group of its own, it does not get the terminal's Ctrl-C itself.
pub fn run(
    name: &str,
    hook: &Hook,
    env: &[(&str, std::ffi::OsString)],
    stdin: &[u8],
    cancel: &AtomicBool,
) -> HookOutcome {
    let t0 = Instant::now();
    tracing::info!("{name}: running {:?}", hook.argv);
    let mut out = HookOutcome {
        command: hook.argv.clone(),
        ..HookOutcome::default()
    };
    let (exit, error, tail) = match spawn(hook, env) {
        Ok(child) => wait(
            name,
            child,
            (hook.timeout, cancel),
            stdin,
            hook.kill_leftovers,
        ),
        Err(e) => (None, Some(e), Vec::new()),
    };
    out.seconds = t0.elapsed().as_secs_f64();
    out.exit_code = exit;
    out.ok = error.is_none();
    out.error = error.map(|e| match tail.is_empty() {
        true => e,
        false => format!("{e}; last output: {}", tail.join(" | ")),
    });
    match &out.error {
        None => tracing::info!("{name}: exited 0 after {:.2}s", out.seconds),
        Some(e) => tracing::error!(
            "{name} {:?} failed after {:.2}s: {e}",
            hook.argv,
            out.seconds
        ),
    }
    out
}

fn spawn(hook: &Hook, env: &[(&str, std::ffi::OsString)]) -> Result<Child, String> {
    use std::os::unix::process::CommandExt;
    let (prog, args) = hook.argv.split_first().ok_or("no program given")?;
    let user = crate::fsx::user_umask();
    let mut c = if user == crate::fsx::process_umask() {
        Command::new(prog)
    } else {
        // snapring took the owner's bits out of its umask (`fsx::owner_usable_umask`):
        // the command gets the user's, set by a shell that then execs it. The program
        // is looked up first: one that is missing (or not executable) is named as
        // without the shell ("cannot start PROG: …"), not the shell's exit 127 (126).
        let path = resolve(prog).map_err(|e| format!("cannot start {prog}: {e}"))?;
        let mut c = Command::new("/bin/sh");
        c.arg("-c")
            .arg(format!("umask {user:04o} && exec \"$0\" \"$@\""))
            .arg(path);
        c
    };
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills whatever it started too.
        .process_group(0);
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().map_err(|e| format!("cannot start {prog}: {e}"))
}

/// Where `prog` is, as `execvp` would find it: itself when it has a `/`, else the
/// first executable file of that name in a `PATH` directory. The error is the one a
/// spawn without the umask shell gives (no such file, permission denied).
fn resolve(prog: &str) -> std::io::Result<std::path::PathBuf> {
    use rustix::fs::{Access, access};
    use rustix::io::Errno;
    use std::path::{Path, PathBuf};
    let executable = |p: &Path| -> std::io::Result<()> {
        if std::fs::metadata(p)?.is_dir() {
            return Err(Errno::ACCESS.into());
        }
        access(p, Access::EXEC_OK)?;
        Ok(())
    };
    if prog.contains('/') {
        executable(Path::new(prog))?;
        return Ok(PathBuf::from(prog));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut denied = None;
    for dir in std::env::split_paths(&path) {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let p = dir.join(prog);
        match executable(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => denied = Some(e),
            Err(_) => {}
        }
    }
    Err(denied.unwrap_or_else(|| Errno::NOENT.into()))
}

/// Feeds stdin, logs the output, waits until the command ends, `timeout` passes or
/// `cancel` is set (then kills its process group). Returns (exit code, error, last
/// lines of output).
fn wait(
    name: &str,
    mut child: Child,
    (timeout, cancel): (Duration, &AtomicBool),
    stdin: &[u8],
    kill_leftovers: bool,
) -> (Option<i32>, Option<String>, Vec<String>) {
    if let Some(mut w) = child.stdin.take() {
        let data = stdin.to_vec();
        // A command that does not read its stdin must not block us (EPIPE is ignored).
        std::thread::spawn(move || {
            let _ = w.write_all(&data);
        });
    }
    let tail = Arc::new(Mutex::new(Vec::new()));
    let open = Arc::new(AtomicUsize::new(0));
    if let Some(s) = child.stdout.take() {
        read_lines(name, s, &tail, &open);
    }
    if let Some(s) = child.stderr.take() {
        read_lines(name, s, &tail, &open);
    }
    let deadline = Instant::now() + timeout;
    // Its end is seen without reaping it (`exited`): until it is reaped below, its
    // process id, and so its process group's, cannot be given to another process, and
    // a kill of its group reaches only what it started.
    let status = loop {
        match exited(&child) {
            Ok(true) => break Ok(()),
            Ok(false) if Instant::now() >= deadline => {
                let _ = kill_group(&child);
                let _ = child.wait();
                break Err(format!(
                    "timed out after {}s and was killed",
                    timeout.as_secs()
                ));
            }
            Ok(false) if cancel.load(Ordering::Relaxed) => {
                let _ = kill_group(&child);
                let _ = child.wait();
                break Err(INTERRUPTED.to_string());
            }
            Ok(false) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break Err(format!("cannot wait for it: {e}")),
        }
    };
    // Let the readers drain what is left (a process it left behind may hold the pipes).
    let drained = Instant::now() + Duration::from_secs(1);
    while open.load(Ordering::Relaxed) > 0 && Instant::now() < drained {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Still held: by what it started in the background (`sleep 600 &`), left in its
    // process group (its id still the command's, not reaped yet: no other group can
    // have it). A notifier's is killed, as a timeout kills it: it would outlive the run
    // (a daemon's too).
    if kill_leftovers && status.is_ok() && open.load(Ordering::Relaxed) > 0 {
        // A test makes a new process group here, to see that it is not the one killed.
        let _ = crate::failpoint::hit("hooks.leftovers");
        match group_lives(&child) && kill_group(&child) {
            true => tracing::warn!(
                "{name}: killed what it left running in the background holding its output"
            ),
            // Nothing of its group left: the holder left it (`setsid`), and is let be.
            false => tracing::warn!(
                "{name}: its output is still held by a process it started outside its \
                 process group (setsid); not waited for, left running"
            ),
        }
    }
    // Reaped only now (its status was kept).
    let status = status.and_then(|()| child.wait().map_err(|e| format!("cannot wait for it: {e}")));
    let tail = tail.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match status {
        Ok(st) if st.success() => (Some(0), None, tail),
        Ok(st) => (st.code(), Some(format!("exited with {st}")), tail),
        Err(e) => (None, Some(e), tail),
    }
}

/// Logs every line of `stream` as it comes and keeps the last few in `tail`. A line
/// is cut at [`MAX_LINE`] bytes and a stream's output is logged up to [`MAX_LOGGED`]
/// bytes (the rest is read and dropped), so a command that prints gigabytes, with or
/// without newlines, neither fills the memory nor the run's log.
fn read_lines(
    name: &str,
    stream: impl Read + Send + 'static,
    tail: &Arc<Mutex<Vec<String>>>,
    open: &Arc<AtomicUsize>,
) {
    let (name, tail, open) = (name.to_string(), tail.clone(), open.clone());
    open.fetch_add(1, Ordering::Relaxed);
    std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(stream);
        let (mut line, mut cut, mut logged) = (Vec::new(), false, 0usize);
        let mut emit = |line: &mut Vec<u8>, cut: &mut bool| {
            let mut l = String::from_utf8_lossy(line).trim_end().to_string();
            if std::mem::take(cut) {
                l.push_str(" [line cut]");
            }
            line.clear();
            if logged < MAX_LOGGED {
                logged += l.len() + 1;
                tracing::info!("{name}: {l}");
                if logged >= MAX_LOGGED {
                    tracing::warn!(
                        "{name}: more than {MAX_LOGGED} bytes of output: the rest is not logged"
                    );
                }
            }
            let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
            if t.len() == TAIL_LINES {
                t.remove(0);
            }
            t.push(l);
        };
        loop {
            let buf = match r.fill_buf() {
                Ok([]) | Err(_) => break,
                Ok(b) => b,
            };
            let (chunk, newline) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (&buf[..i], true),
                None => (buf, false),
            };
            let room = MAX_LINE.saturating_sub(line.len());
            line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            cut |= chunk.len() > room;
            let used = chunk.len() + usize::from(newline);
            r.consume(used);
            if newline {
                emit(&mut line, &mut cut);
            }
        }
        if !line.is_empty() || cut {
            emit(&mut line, &mut cut);
        }
        open.fetch_sub(1, Ordering::Relaxed);
    });
}

/// Whether `child` has ended, without reaping it (`waitid` with `WNOWAIT`): its
/// process id stays taken until `Child::wait`.
fn exited(child: &Child) -> std::io::Result<bool> {
    use rustix::process::{Pid, WaitId, WaitIdOptions, waitid};
    let pid = Pid::from_raw(child.id() as i32).ok_or(std::io::ErrorKind::InvalidInput)?;
    let o = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    loop {
        match waitid(WaitId::Pid(pid), o) {
            Ok(st) => return Ok(st.is_some()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether a process other than `child` itself (ended, not reaped) is in its process
/// group: one it started that stayed there (read from `/proc`; zombies do not count).
fn group_lives(child: &Child) -> bool {
    let group = child.id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return true;
    };
    dir.flatten().any(|e| {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            return false;
        };
        if pid == group {
            return false;
        }
        // `pid (comm) state ppid pgrp …`: comm may hold spaces and parentheses.
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        let mut f = stat
            .rsplit_once(')')
            .map_or("", |(_, r)| r)
            .split_whitespace();
        let (state, pgrp) = (f.next(), f.nth(1));
        state != Some("Z") && pgrp.and_then(|g| g.parse::<u32>().ok()) == Some(group)
    })
}

/// SIGKILL to `child`'s process group: whether any process of it was there to get it.
fn kill_group(child: &Child) -> bool {
    rustix::process::Pid::from_raw(child.id() as i32).is_some_and(|pid| {
        rustix::process::kill_process_group(pid, rustix::process::Signal::KILL).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_split_as_a_shell_would() {
        assert_eq!(
            split(r#"fsfreeze --freeze "/mnt/my data" it\'s"#).unwrap(),
            ["fsfreeze", "--freeze", "/mnt/my data", "it's"]
        );
        assert!(split("echo 'open").is_err());
        assert!(split("  ").is_err());
    }
}
