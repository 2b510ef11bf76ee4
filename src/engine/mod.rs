//! The backup engine: `backup()` runs one backup of a source into a store, from the
//! guards to the published snapshot and its run record.

pub mod backup;
pub mod decide;
pub mod options;
pub mod progress;
pub mod walk;

pub use backup::{NoObserver, Observer, backup, backup_observed};
pub use options::BackupOptions;
