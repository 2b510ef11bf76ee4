//! Commands other than `backup` that read a store. Each opens (and so repairs) the
//! store and returns data for the binary to print.

pub mod inspect;
pub mod list;
