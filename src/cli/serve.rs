//! `snapring serve`: reads the config, picks the catalog and the token (`--token-file`,
//! else `SNAPRING_SERVE_TOKEN`), binds, says where on stdout, and hands the server to
//! `snapring::serve` until SIGTERM/SIGINT.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use snapring::config;
use snapring::serve::{self, ServeOptions};

use super::args::ServeArgs;
use super::catalog_choice::CatalogChoice;
use super::exit_code::ExitCode;
use super::print::outln;

pub fn serve(a: ServeArgs, cat: &CatalogChoice) -> anyhow::Result<ExitCode> {
    let cfg = config::load(&a.config)?;
    let token = match &a.token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the token file {}", f.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("SNAPRING_SERVE_TOKEN").ok(),
    };
    let opts = ServeOptions {
        catalog: cat.for_config(cfg.catalog.clone()),
        config: cfg,
        listen: a.listen,
        token,
    };
    let server = serve::bind(opts)?;
    outln!("snapring serve: listening on http://{}/", server.addr);
    let stop = Arc::new(AtomicBool::new(false));
    for s in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(s, stop.clone()).context("install signal handlers")?;
    }
    server.run(&stop);
    Ok(ExitCode::Complete)
}
