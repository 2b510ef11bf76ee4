//! `snapring serve`: reads the config, picks the catalog and the token (`--token-file`,
//! else `SNAPRING_SERVE_TOKEN`), binds, says where on stdout, and hands the server to
//! `snapring::serve` until SIGTERM/SIGINT. Also the daemon's server (`[server]`).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use snapring::config;
use snapring::serve::{self, ServeOptions};

use super::args::ServeArgs;
use super::catalog_choice::CatalogChoice;
use super::exit_code::ExitCode;
use super::print::{errln, outln};

pub fn serve(a: ServeArgs, cat: &CatalogChoice) -> anyhow::Result<ExitCode> {
    let server = bind(&a.config, cat, a.listen, a.token_file.as_deref(), false)?;
    outln!("snapring serve: listening on http://{}/", server.addr);
    if let Some(p) = server.catalog().filter(|p| !p.exists()) {
        errln!("snapring serve: warning: {}", serve::no_catalog(p));
    }
    let stop = Arc::new(AtomicBool::new(false));
    for s in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(s, stop.clone()).context("install signal handlers")?;
    }
    server.run(&stop);
    Ok(ExitCode::Complete)
}

/// A server over the jobs of the config at `path` and their catalog, bound to
/// `listen`, with the token from `token_file`, else `SNAPRING_SERVE_TOKEN`.
pub fn bind(
    path: &Path,
    cat: &CatalogChoice,
    listen: SocketAddr,
    token_file: Option<&Path>,
    follow: bool,
) -> anyhow::Result<serve::Server> {
    let cfg = config::load(path)?;
    let token_from = match token_file {
        Some(f) => format!("the token file {}", f.display()),
        None => "SNAPRING_SERVE_TOKEN".to_string(),
    };
    let token = match token_file {
        Some(f) => {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the token file {}", f.display()))?;
            // As ssh says of a private key others can read, but without refusing: the
            // token opens read-only pages, and refusing would stop a daemon (and its
            // backups) over a file's mode.
            if let Some(w) = std::fs::metadata(f)
                .ok()
                .and_then(|m| serve::token_file_warning(f, m.permissions().mode()))
            {
                errln!("snapring: warning: {w}");
            }
            Some(t.trim().to_string())
        }
        None => std::env::var("SNAPRING_SERVE_TOKEN").ok(),
    };
    let catalog = cat.for_config(cfg.catalog.clone());
    // A device, fifo or directory as the catalog: said at start, not as a 500 on every
    // request (the daemon's server too).
    if let Some(p) = &catalog {
        snapring::catalog::refuse_not_a_file(p)?;
    }
    let opts = ServeOptions {
        catalog,
        config: cfg,
        listen,
        token,
        // The daemon's: its reloads change the jobs served.
        follow: follow.then(|| path.to_path_buf()),
    };
    serve::bind(opts).map_err(|e| match e {
        serve::ServeError::ShortToken(_) => anyhow::anyhow!("{token_from}: {e}"),
        e => e.into(),
    })
}

/// The daemon's server, when its config has a `[server]` table: bound now (so a bad
/// address or a missing token stops the daemon at start), answering on its own thread
/// until `stop`.
pub fn for_daemon(
    path: &Path,
    cfg: Option<&config::ServerConfig>,
    cat: &CatalogChoice,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<Option<std::thread::JoinHandle<()>>> {
    let Some(sc) = cfg else {
        return Ok(None);
    };
    let listen = sc.listen.as_deref().unwrap_or(serve::DEFAULT_LISTEN);
    let listen: SocketAddr = serve::parse_listen(listen)
        .map_err(|e| anyhow::anyhow!("{}: [server] listen = {e}", path.display()))?;
    let server = bind(path, cat, listen, sc.token_file.as_deref(), true)?;
    errln!("snapring daemon: serving on http://{}/", server.addr);
    let stop = stop.clone();
    let t = std::thread::Builder::new()
        .name("serve".into())
        .spawn(move || server.run(&stop))
        .context("start the server's thread")?;
    Ok(Some(t))
}
