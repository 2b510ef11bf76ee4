//! The library's modules form layers that point one way (ARCHITECTURE.md, "Layers"):
//! this test reads every file under `src/`, collects which top-level modules each one
//! names (`use crate::x…`, `crate::x::…`, `use crate::{x, y::z}`), and fails on a
//! reference to a higher layer or on any cycle between top-level modules. A new module
//! must be given a layer here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Lowest first. A module may use modules of its own layer or of lower ones; within a
/// layer the graph must still be acyclic.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "base",
        &[
            "relpath",
            "localpath",
            "fsx",
            "exclude",
            "error",
            "util",
            "failpoint",
            "pool",
            "concurrency",
            "runlog",
            "schedule",
            "traverse",
            "throttle",
            "hooks",
        ],
    ),
    (
        "records",
        &["report", "manifest", "same", "snapshot", "compare"],
    ),
    // The storage seams: what the engine writes through and runs against; the stores
    // implement them.
    ("seams", &["sink", "repo"]),
    // The restic repository format (src/restic/), a store beside the hard-link store.
    ("store", &["store", "restic"]),
    // `shard` runs the engine's walk into the store for one unit at a time.
    ("operations", &["engine", "restore", "commands", "shard"]),
    ("bookkeeping", &["catalog", "notify", "config"]),
    ("job", &["job"]),
    ("service", &["daemon", "serve"]),
    // The binary's own modules (src/main.rs, src/cli/).
    ("binary", &["cli"]),
];

fn layer_of(m: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, ms)| ms.contains(&m))
}

/// Removes `//` comments (doc comments included) and the contents of string literals,
/// so that only code counts.
fn code_only(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    for line in src.lines() {
        let mut in_str = false;
        let mut prev = '\0';
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if in_str {
                if c == '"' && prev != '\\' {
                    in_str = false;
                    out.push('"');
                }
                prev = if prev == '\\' && c == '\\' { '\0' } else { c };
                continue;
            }
            if c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' {
                in_str = true;
                prev = '\0';
            }
            // A char literal holding a quote ('"') is not the start of a string.
            if c == '\'' && chars.peek() == Some(&'"') {
                out.push(c);
                out.push(chars.next().unwrap());
                continue;
            }
            out.push(c);
        }
        out.push('\n');
    }
    out
}

/// Top-level modules named by `crate::` paths in `code`, braces included
/// (`use crate::{a, b::{c, d}}` names `a` and `b`).
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // `snapring_crate::` or similar, not our crate
        }
        let rest_trim = rest.trim_start();
        if let Some(group) = rest_trim.strip_prefix('{') {
            // Top-level names of the group: split on commas at brace depth 0.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            out.insert(ident(item.trim()));
        } else {
            out.insert(ident(rest_trim));
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

/// The top-level module a file under `src/` belongs to (`None` for the crate roots).
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let m = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (!matches!(m.as_str(), "lib" | "main" | "bin")).then_some(m)
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Module → the other top-level modules it uses.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    // SNAPRING_LAYERS_SRC checks another tree (an older commit's `src/`, say).
    let src = std::env::var_os("SNAPRING_LAYERS_SRC")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let Some(m) = module_of(f.strip_prefix(&src).unwrap()) else {
            continue;
        };
        let refs = crate_refs(&code_only(&std::fs::read_to_string(&f).unwrap()));
        let e = g.entry(m.clone()).or_default();
        e.extend(refs.into_iter().filter(|r| *r != m));
    }
    g
}

/// A cycle in `g`, if there is one (as the list of modules around it).
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            match state.get(d.as_str()) {
                Some(1) => {
                    let start = path.iter().position(|p| p == d).unwrap();
                    let mut c = path[start..].to_vec();
                    c.push(d.clone());
                    return Some(c);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(d, g, state, path) {
                        return Some(c);
                    }
                }
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if !state.contains_key(n.as_str())
            && let Some(c) = visit(n, g, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_parser_sees_every_form_of_reference() {
    let code = code_only(
        "use crate::fsx::{self, b};\nuse crate::{report::{A, B}, store};\n\
         let x = crate::util::now(); // crate::daemon in a comment\n\
         let s = \"crate::job in a string\"; let q = '\"'; crate::pool::run();\n\
         /// doc: `crate::notify::send`\n",
    );
    let got: Vec<String> = crate_refs(&code).into_iter().collect();
    assert_eq!(got, ["fsx", "pool", "report", "store", "util"]);
}

#[test]
fn a_cycle_is_found() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in [
        ("report", "notify"),
        ("notify", "catalog"),
        ("catalog", "report"),
    ] {
        g.entry(a.into()).or_default().insert(b.into());
    }
    g.entry("fsx".into()).or_default();
    let c = find_cycle(&g).unwrap();
    assert_eq!(c.first(), c.last());
    assert_eq!(c.len(), 4, "{c:?}");
}

#[test]
fn modules_have_no_cycles_and_only_use_their_own_or_lower_layers() {
    let g = graph();
    let mut errors = Vec::new();
    for m in g.keys() {
        if layer_of(m).is_none() {
            errors.push(format!("module {m} has no layer in tests/layers.rs"));
        }
    }
    for (m, deps) in &g {
        let Some(lm) = layer_of(m) else { continue };
        for d in deps {
            match layer_of(d) {
                None if !g.contains_key(d) => {
                    errors.push(format!("{m} names crate::{d}, which is not a module"))
                }
                Some(ld) if ld > lm => errors.push(format!(
                    "{m} ({}) uses {d} ({}): a lower layer must not use a higher one",
                    LAYERS[lm].0, LAYERS[ld].0
                )),
                _ => {}
            }
        }
    }
    if let Some(c) = find_cycle(&g) {
        errors.push(format!("import cycle: {}", c.join(" -> ")));
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
