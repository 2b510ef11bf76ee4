//! Commands other than `backup` that read a store. Each opens it read-only
//! (`Store::open_read`: nothing created, written or locked; `list` alone repairs a store
//! that needs it first, where it can) and returns data for the binary to print.

pub mod inspect;
pub mod list;
