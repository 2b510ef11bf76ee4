//! What the fuzz targets share: a scratch directory per process (on tmpfs when there is
//! one), where a target writes the damaged file the product then reads.
#![allow(dead_code)] // each target uses part of it

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// `<tmp>/snapring-fuzz/<target>-<pid>`, created once per process. Directories of
/// processes that no longer run are removed the first time, so repeated runs do not
/// pile up scratch files.
pub fn scratch(target: &str) -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let base = base.join("snapring-fuzz");
        std::fs::create_dir_all(&base).expect("create the fuzz scratch directory");
        remove_dead(&base);
        let dir = base.join(format!("{target}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("create the fuzz scratch directory");
        dir
    })
}

/// Removes `<base>/<target>-<pid>` of processes that are gone.
fn remove_dead(base: &Path) {
    let Ok(rd) = std::fs::read_dir(base) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.rsplit('-').next().unwrap_or("");
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Writes `bytes` to `path` (replacing it).
pub fn put(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Every allocation goes through `Cap`, so that one input can be held to a budget.
#[global_allocator]
static ALLOC: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// What one input may allocate beyond what the process held before it. Far more than
/// any of these small inputs needs; an allocation sized by a length read from a damaged
/// file (`vec![0; len]`) goes past it, fails, and aborts, which libFuzzer reports as a
/// crash even without a sanitizer (whose own `-malloc_limit_mb` needs ASan).
const BUDGET: usize = 256 << 20;

/// Holds the allocator to [`BUDGET`] while it lives (one fuzz input).
pub struct Budget(());

impl Budget {
    pub fn new() -> Budget {
        let _ = ALLOC.set_limit(ALLOC.allocated().saturating_add(BUDGET));
        Budget(())
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        let _ = ALLOC.set_limit(usize::MAX);
    }
}
