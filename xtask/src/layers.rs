//! `cargo xtask layers`: the framework's top-level modules in import order, bottom first, and
//! every import that runs upward (any module imported by one it imports, directly or not).
//!
//! An import is a `crate::MODULE` path outside comments in a module's files; the order is a
//! topological sort of those imports (ties by name), so it exists exactly when no import runs
//! upward. Fails, naming the modules that import each other, when one does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::cmd::workspace_root;

/// The top-level modules `lib.rs` declares.
fn modules(lib: &str) -> BTreeSet<String> {
    lib.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line
                .strip_prefix("pub mod ")
                .or(line.strip_prefix("mod "))?;
            Some(rest.trim_end_matches(';').to_string())
        })
        .collect()
}

/// The `.rs` files under `path` (a file, or a directory walked whole).
fn files(path: &Path, out: &mut Vec<std::path::PathBuf>) {
    if path.is_file() {
        out.push(path.to_path_buf());
    } else if let Ok(entries) = std::fs::read_dir(path) {
        let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for entry in entries {
            if entry.is_dir() || entry.extension().is_some_and(|e| e == "rs") {
                files(&entry, out);
            }
        }
    }
}

/// The modules of `known` that `text` names as `crate::MODULE` outside comments.
fn imports(text: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        for (at, _) in code.match_indices("crate::") {
            // `$crate::` in a macro is the crate of the caller.
            if code[..at].ends_with('$') {
                continue;
            }
            let name: String = code[at + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if known.contains(&name) {
                found.insert(name);
            }
        }
    }
    found
}

/// Whether `from` imports `to`, directly or through other modules.
fn reaches(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_string()];
    while let Some(at) = stack.pop() {
        if at == to {
            return true;
        }
        if seen.insert(at.clone()) {
            stack.extend(graph.get(&at).into_iter().flatten().cloned());
        }
    }
    false
}

/// Prints the order, or fails with the modules that import each other.
pub fn run() -> Result<(), String> {
    let src = workspace_root().join("framework/src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).map_err(|e| format!("lib.rs: {e}"))?;
    let known = modules(&lib);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for module in &known {
        let mut paths = Vec::new();
        files(&src.join(format!("{module}.rs")), &mut paths);
        files(&src.join(module), &mut paths);
        let mut uses = BTreeSet::new();
        for path in paths {
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            uses.extend(imports(&text, &known));
        }
        uses.remove(module);
        graph.insert(module.clone(), uses);
    }
    // Kahn's algorithm, bottom first: a module comes once everything it imports has.
    let mut placed: Vec<String> = Vec::new();
    let mut left = graph.clone();
    while let Some(next) = left
        .iter()
        .find(|(_, uses)| uses.iter().all(|u| placed.contains(u)))
        .map(|(m, _)| m.clone())
    {
        left.remove(&next);
        placed.push(next);
    }
    for (level, module) in placed.iter().enumerate() {
        let uses: Vec<&str> = graph[module].iter().map(String::as_str).collect();
        println!("{level:>2} {module:<18} imports: {}", uses.join(", "));
    }
    if left.is_empty() {
        println!("no import runs upward ({} modules)", placed.len());
        return Ok(());
    }
    // An import runs upward when what it imports imports its importer back.
    let mut upward = Vec::new();
    for (module, uses) in &left {
        for used in uses.iter().filter(|u| reaches(&graph, u, module)) {
            upward.push(format!("{module} -> {used}"));
        }
    }
    Err(format!(
        "imports that run in a cycle (so one of each runs upward), among {}: {}",
        left.keys().cloned().collect::<Vec<_>>().join(", "),
        upward.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_crate_paths_outside_comments() {
        let known: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let text = "use crate::a::X;\n// crate::b in a comment\nlet y = crate::c::f(); // crate::b\n$crate::b::g();\nuse crate::zz;";
        let found: Vec<String> = imports(text, &known).into_iter().collect();
        assert_eq!(found, ["a", "c"]);
        assert_eq!(
            modules("pub mod a;\nmod b;\n#[cfg(test)]\npub mod c;\nuse x;"),
            known
        );
    }
}
