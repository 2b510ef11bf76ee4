//! Named failpoints for crash and fault tests. Reads `SNAPRING_FAILPOINTS` once; when it
//! is unset every `hit` is a relaxed load and a return. Does I/O only when armed.
//!
//! Syntax: `name=action[@N]` separated by `;`, where the action fires on the N-th hit
//! (default 1): `kill` (SIGKILL this process: the crash tests), `error` (the call
//! returns an I/O error), `pause:PATH` (create PATH, wait until a test removes it),
//! `sleep:MS` (sleep MS milliseconds on every hit from the N-th on: a slow file system).

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

#[derive(Clone, Debug)]
enum Action {
    Kill,
    Error,
    Pause(String),
    Sleep(u64),
}

struct Armed {
    points: Vec<(String, Action, u64)>,
    hits: Mutex<HashMap<String, u64>>,
}

static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
static ANY: AtomicBool = AtomicBool::new(true);

fn armed() -> Option<&'static Armed> {
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("SNAPRING_FAILPOINTS")
                .ok()
                .filter(|s| !s.is_empty());
            let Some(spec) = spec else {
                ANY.store(false, Ordering::Relaxed);
                return None;
            };
            let points = spec
                .split(';')
                .filter(|s| !s.is_empty())
                .filter_map(|p| {
                    let (name, rest) = p.split_once('=')?;
                    let (act, nth) = match rest.rsplit_once('@') {
                        Some((a, n)) => (a, n.parse().ok()?),
                        None => (rest, 1),
                    };
                    let action = match act {
                        "kill" => Action::Kill,
                        "error" => Action::Error,
                        a if a.starts_with("sleep:") => Action::Sleep(a[6..].parse().ok()?),
                        a => Action::Pause(a.strip_prefix("pause:")?.to_string()),
                    };
                    Some((name.to_string(), action, nth))
                })
                .collect();
            Some(Armed {
                points,
                hits: Mutex::new(HashMap::new()),
            })
        })
        .as_ref()
}

/// Marks a point in the code where a test may crash, fail or pause the process.
pub fn hit(name: &str) -> io::Result<()> {
    if !ANY.load(Ordering::Relaxed) {
        return Ok(());
    }
    let Some(a) = armed() else { return Ok(()) };
    let n = {
        let mut h = a.hits.lock().unwrap_or_else(|e| e.into_inner());
        let c = h.entry(name.to_string()).or_insert(0);
        *c += 1;
        *c
    };
    for (p, action, nth) in &a.points {
        if p == name
            && let Action::Sleep(ms) = action
            && n >= *nth
        {
            std::thread::sleep(std::time::Duration::from_millis(*ms));
            continue;
        }
        if p == name && *nth == n {
            match action {
                Action::Kill => {
                    let _ = rustix::process::kill_process(
                        rustix::process::getpid(),
                        rustix::process::Signal::KILL,
                    );
                    std::thread::sleep(std::time::Duration::from_secs(60));
                }
                Action::Error => return Err(io::Error::other(format!("failpoint {name} fired"))),
                Action::Sleep(_) => {}
                Action::Pause(path) => {
                    std::fs::write(path, std::process::id().to_string())?;
                    while std::path::Path::new(path).exists() {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
            }
        }
    }
    Ok(())
}
