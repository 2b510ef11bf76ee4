//! Which run catalog (SQLite file) a command uses: `--catalog`/`SNAPRING_CATALOG`, else
//! a config file's `catalog`, else the default path; `off` turns it off. Also opening
//! it for the catalog commands.

use std::path::PathBuf;

use snapring::catalog::{self, Catalog};

/// Where the catalog is, from --catalog/SNAPRING_CATALOG, else the default; `None`
/// when turned off.
pub struct CatalogChoice {
    pub path: Option<PathBuf>,
    /// Given by flag or environment (wins over a config file's `catalog`).
    pub explicit: bool,
    pub on_nfs: bool,
}

impl CatalogChoice {
    /// From the global `--catalog` and `--catalog-on-nfs` flags.
    pub fn from_flags(flag: Option<PathBuf>, on_nfs: bool) -> CatalogChoice {
        CatalogChoice {
            explicit: flag.is_some(),
            path: match flag {
                // `OFF` too: a file of that name, beside wherever the command ran, is
                // never what was meant.
                Some(p) if p.as_os_str().eq_ignore_ascii_case("off") => None,
                Some(p) => Some(p),
                None => Some(catalog::default_path()),
            },
            on_nfs,
        }
    }

    /// The catalog a job uses: a flag or environment value wins, then the config
    /// file's `catalog`, then the default; `None` when turned off.
    pub fn for_config(&self, from_file: Option<PathBuf>) -> Option<PathBuf> {
        match (&self.path, from_file) {
            (Some(p), _) if self.explicit => Some(p.clone()),
            (None, _) => None,
            (_, Some(f)) if f.as_os_str() == "off" => None,
            (_, Some(f)) => Some(f),
            (Some(p), None) => Some(p.clone()),
        }
    }

    /// Opens the catalog; an error when it is turned off.
    pub fn open(&self) -> anyhow::Result<Catalog> {
        let Some(p) = &self.path else {
            return Err(super::exit_code::usage!(
                "the catalog is turned off (--catalog off or SNAPRING_CATALOG=off); give it a file"
            ));
        };
        Ok(Catalog::open(p, self.on_nfs)?)
    }

    /// The catalog, opened: a file named by `--catalog` or `SNAPRING_CATALOG` that does
    /// not exist is refused, not created empty (a typo would answer "no runs" and leave
    /// a stray catalog behind); the default one is created as before.
    pub fn open_existing(&self) -> anyhow::Result<Catalog> {
        if let Some(p) = self.path.as_ref().filter(|_| self.explicit)
            && !p.exists()
        {
            // A symbolic link to nothing is said as that, not as no catalog.
            snapring::catalog::refuse_not_a_file(p)?;
            return Err(super::exit_code::usage!(
                "no catalog at {}: nothing was ever recorded there (check --catalog or SNAPRING_CATALOG; a backup with it creates it)",
                snapring::relpath::shown(p)
            ));
        }
        self.open()
    }

    /// The catalog, checked whole (`PRAGMA quick_check`: damage where the query at hand
    /// does not look is damage all the same, and every backup's write finds it) unless
    /// a check of it passed within `catalog::CHECK_INTERVAL` and no damage was met
    /// since (`Catalog::check_if_due`), with rows left `running` by dead runs settled
    /// first. For the commands that read it
    /// (`history`, `show`, `stats`): a file named by `--catalog` or `SNAPRING_CATALOG`
    /// that does not exist is refused, not created empty (a typo would answer "no runs"
    /// and leave a stray catalog behind); the default one is created as before.
    pub fn open_settled(&self) -> anyhow::Result<Catalog> {
        let mut cat = self.open_existing()?;
        cat.check_if_due()?;
        catalog::settle_running(&mut cat);
        Ok(cat)
    }
}
