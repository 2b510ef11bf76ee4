//! Fuzzes run records (`.snapring/runs/<id>.json`) with arbitrary bytes, read the way
//! the product reads them: `Store::read_run`, then `Catalog::rebuild` (which loads every
//! record of a store into the SQLite catalog), `show` and `stats` on what it loaded. A
//! damaged record must never panic.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use snapring::catalog::{Catalog, Filter};
use snapring::store::Store;

struct Fixture {
    root: PathBuf,
    store: Store,
    catalog: Mutex<Catalog>,
}

/// An empty store and a catalog, made once.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = common::scratch("run_record");
        let root = dir.join("store");
        std::fs::create_dir(&root).expect("create the store");
        let store = Store::open(&root, true).expect("make the store");
        let catalog = Catalog::open(&dir.join("catalog.db"), false).expect("open the catalog");
        Fixture {
            root,
            store,
            catalog: Mutex::new(catalog),
        }
    })
}

fn check(root: &Path, store: &Store, catalog: &mut Catalog) {
    let _ = store.read_run("r");
    if catalog
        .rebuild(root, std::path::Path::new("fuzz"))
        .unwrap_or(0)
        == 0
    {
        return;
    }
    for run in catalog.runs(&Filter::default()).unwrap_or_default() {
        let _ = catalog.show(&run.id);
    }
    let _ = catalog.stats(&Filter::default());
}

fuzz_target!(|data: &[u8]| {
    let _budget = common::Budget::new();
    let f = fixture();
    common::put(&f.store.run_path("r"), data);
    let mut catalog = f.catalog.lock().unwrap_or_else(|e| e.into_inner());
    check(&f.root, &f.store, &mut catalog);
});
