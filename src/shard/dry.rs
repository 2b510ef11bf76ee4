//! A shard worker's dry run (`backup --dry-run --shard I/N --run-id ID`): the run's cut
//! (its `plan.json` if its workers have started, else the cut they would make, not
//! written), then what this worker's home units would hold, by the same walk and
//! decisions as a real run into the dry run's recording sink (`store::plan_sink`),
//! printed as a single-node dry run prints its plan, with the rotation finalize would
//! make. Writes nothing: no claim, no plan, no run directory. Reads the source and the
//! store (under its shared lock, as a single-node dry run).

use std::sync::atomic::{AtomicBool, Ordering};

use rustix::io::Errno;

use super::state::RunDir;
use super::worker::{Outcome, cut_source};
use super::{ShardError, Spec, sort_err};
use crate::engine::BackupOptions;
use crate::engine::walk::Walk;
use crate::error::{Ctx, Error, io_error};
use crate::fsx::{self, b};
use crate::manifest::Entry;
use crate::repo::{Repository, Rotation};
use crate::report::Counters;
use crate::sink::{Action, Plan, Sink};
use crate::store::Store;
use crate::store::plan_sink::PlanSink;

/// What a worker's dry run found.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct DryRun {
    /// This worker's home units (others take what is left of them in a real run).
    pub units: Vec<String>,
    /// Units in the whole run.
    pub units_total: usize,
    /// Where the cut came from: `plan.json` of the run, or sized now by `manifest` or
    /// `walk`.
    pub cut_from: String,
    /// Files (non-directories) of the home units that would be copied, and linked.
    pub copies: u64,
    pub links: u64,
}

/// Runs worker `spec.index`'s dry run.
pub fn run(opts: &BackupOptions, spec: &Spec, cancel: &AtomicBool) -> Result<Outcome, ShardError> {
    let source = crate::engine::backup::check_source(opts)?;
    let source = std::fs::canonicalize(&source).ctx("resolve source", &source)?;
    let store = if opts.store.join(crate::store::META_DIR).is_dir() {
        Some(Store::open(&opts.store, false).map_err(sort_err)?)
    } else {
        None
    };
    let lock = match &store {
        Some(st) => Some(Repository::lock_shared(st).map_err(sort_err)?),
        None => None,
    };
    let r = walk_home(opts, spec, &source, store.as_ref(), cancel);
    if let (Some(st), Some(l)) = (&store, lock) {
        Repository::unlock(st, l);
    }
    let (plan, dry) = r?;
    crate::engine::backup::print_plan(opts, &plan);
    Ok(Outcome {
        index: spec.index,
        run_id: spec.run_id.clone(),
        interrupted: cancel.load(Ordering::Relaxed),
        dry_run: Some(dry),
        ..Outcome::default()
    })
}

fn walk_home(
    opts: &BackupOptions,
    spec: &Spec,
    source: &std::path::Path,
    store: Option<&Store>,
    cancel: &AtomicBool,
) -> Result<(Plan, DryRun), ShardError> {
    let prev = match store {
        Some(st) => Repository::previous(st, &opts.label)?,
        None => None,
    };
    let rd = store.map(|st| RunDir::new(&st.meta, &spec.run_id));
    let planned = rd
        .as_ref()
        .and_then(|rd| Some((rd.read_plan().ok()??, rd.plan_path())));
    let (cut, cut_from, retain) = match planned {
        Some(((p, _), path)) => {
            // A worker started so would be refused (exit 64): so is its dry run.
            super::worker::check_settings(opts, spec, &p, source)?;
            let cut = p.cut().map_err(|m| Error::Store { path, msg: m })?;
            (cut, "plan.json", p.retain)
        }
        None => {
            // As the plan would be made (`worker::make_plan`).
            let (retain, _warned) = super::worker::plan_retain(opts, source, prev.as_ref())?;
            let (cut, from) = cut_source(opts, spec, source, prev.as_ref())?;
            (cut, from, retain)
        }
    };
    let prev_root = match (store, &prev) {
        (Some(st), Some(p)) => {
            let path = st.root.join(&p.name);
            Some(fsx::open_dir(&path).ctx("open previous snapshot", &path)?)
        }
        _ => None,
    };
    let excludes = opts.exclude_settings()?.build()?;
    let manifest = prev.as_ref().and_then(|p| p.manifest.as_ref());
    let store_fence = crate::engine::walk::store_fence(&opts.store);
    let counters = Counters::default();
    // `one_file_system`: every unit's walk stays on the source root's device.
    let one_dev = crate::shard::sizes::source_device(source, opts.one_file_system)
        .ctx("stat source", source)?;
    let one_fs = one_dev.map(crate::traverse::OneFs::new);
    let home = cut.home(spec.index);
    let mut plan = Plan::default();
    for unit in &home {
        if cancel.load(Ordering::Relaxed) {
            break;
        }
        let src_path = source.join(unit.dir.as_path());
        let src = match fsx::open_dir(&src_path) {
            Ok(fd) => fd,
            // Gone since the plan: nothing of it to back up.
            Err(e) if fsx::errno_is(&e, Errno::NOENT) || fsx::errno_is(&e, Errno::NOTDIR) => {
                continue;
            }
            Err(e) => return Err(io_error(e, "open source directory", &src_path).into()),
        };
        let src_meta = fsx::fstat(b(&src)).ctx("stat", &src_path)?;
        if one_dev
            .is_some_and(|dev| crate::shard::sizes::crossed_at(source, &unit.dir, dev).is_some())
        {
            // It, or one above it, on another file system (mounted since the plan):
            // nothing of it is walked, as the worker's unit walks nothing.
            continue;
        }
        let prev_dir = prev_root
            .as_ref()
            .and_then(|r| fsx::open_dir_beneath(b(r), unit.dir.as_bytes()).ok());
        let sink = PlanSink::new(prev_dir);
        let keep = cut.unit_names(unit);
        // As the worker's walk (`worker::unit_walk`): a damaged previous snapshot's
        // files are not linked, a DIFFERS one's only where its record's hash agrees.
        let mut walk = Walk::new(&counters, cancel, &excludes, manifest, &sink)
            .damaged(prev.as_ref().map(|p| &p.damaged))
            .record(prev.as_ref().and_then(|p| p.record.as_ref()))
            .only_root_names(Box::new(keep))
            .fenced(&opts.store, store_fence);
        if let Some(fs) = &one_fs {
            walk = walk.stay_on(fs);
        }
        walk.run_at(src, src_meta, unit.dir.clone(), opts.jobs);
        let fatal = walk.fatal.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(walk);
        if let Some(e) = fatal {
            return Err(e.into());
        }
        let p = sink
            .commit(&Entry::from_meta(b".", &src_meta))
            .ctx("plan", &opts.store)?;
        plan.entries.extend(p.entries);
    }
    plan.entries.sort_by(|a, b| a.0.cmp(&b.0));
    plan.rotation = match store {
        Some(st) => {
            let status = match counters
                .problems_total
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                0 => crate::report::Status::Complete,
                _ => crate::report::Status::Partial,
            };
            let r = Repository::plan_rotation(st, &opts.label, retain, &spec.run_id, status)?;
            r.describe()
        }
        None => vec![format!("publish {}.0", opts.label)],
    };
    let count = |f: fn(&Action) -> bool| plan.entries.iter().filter(|(_, a)| f(a)).count() as u64;
    let dry = DryRun {
        units: home.iter().map(|u| u.id.clone()).collect(),
        units_total: cut.units.len(),
        cut_from: cut_from.into(),
        copies: count(|a| matches!(a, Action::Copy(_))),
        links: count(|a| matches!(a, Action::Link | Action::LinkTo(_))),
    };
    Ok((plan, dry))
}
