//! `cargo xtask layers`: the framework's top-level modules in import order, bottom first, and
//! every import that runs upward (any module imported by one it imports, directly or not).
//!
//! An import is a `crate::MODULE` path outside comments in a module's files; the order is a
//! topological sort of those imports (ties by name). Modules that import each other, directly
//! or not, share a level: one import of each such cycle runs upward, and the command fails
//! naming them.

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
    let mut cycles = Vec::new();
    for (level, group) in levels(&graph).iter().enumerate() {
        let uses: BTreeSet<&str> = group
            .iter()
            .flat_map(|m| &graph[m])
            .filter(|u| !group.contains(*u))
            .map(String::as_str)
            .collect();
        let names: Vec<&str> = group.iter().map(String::as_str).collect();
        let uses: Vec<&str> = uses.into_iter().collect();
        if group.len() == 1 {
            println!("{level:>2} {:<18} imports: {}", names[0], uses.join(", "));
            continue;
        }
        println!(
            "{level:>2} {:<18} import each other; below: {}",
            format!("[{}]", names.join(", ")),
            uses.join(", ")
        );
        let edges: Vec<String> = group
            .iter()
            .flat_map(|m| {
                graph[m]
                    .iter()
                    .filter(|u| group.contains(*u))
                    .map(move |u| format!("{m} -> {u}"))
            })
            .collect();
        cycles.push(edges.join(", "));
    }
    if cycles.is_empty() {
        println!("no import runs upward ({} modules)", graph.len());
        return Ok(());
    }
    Err(format!(
        "modules that import each other (one import of each cycle runs upward): {}",
        cycles.join("; ")
    ))
}

/// The modules bottom first, by level: a module comes once everything it imports has; modules
/// that import each other (directly or not) come together, as one level.
fn levels(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    let mut placed: BTreeSet<String> = BTreeSet::new();
    let mut left: BTreeSet<String> = graph.keys().cloned().collect();
    let mut levels = Vec::new();
    while !left.is_empty() {
        // Each module's group: those it imports that import it back. Some group imports only
        // placed modules (the groups of what is left form an acyclic graph).
        let group = left
            .iter()
            .map(|m| {
                left.iter()
                    .filter(|n| *n == m || (reaches(graph, m, n) && reaches(graph, n, m)))
                    .cloned()
                    .collect::<BTreeSet<String>>()
            })
            .find(|group| {
                group
                    .iter()
                    .flat_map(|m| graph.get(m).into_iter().flatten())
                    .all(|u| placed.contains(u) || group.contains(u) || !graph.contains_key(u))
            })
            .unwrap_or_else(|| left.clone());
        for module in &group {
            left.remove(module);
            placed.insert(module.clone());
        }
        levels.push(group);
    }
    levels
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

    #[test]
    fn modules_that_import_each_other_share_a_level_above_what_they_import() {
        let graph: BTreeMap<String, BTreeSet<String>> = [
            ("a", vec!["b", "z"]),
            ("b", vec!["c"]),
            ("c", vec!["a", "z"]),
            ("d", vec!["a"]),
            ("z", vec![]),
        ]
        .into_iter()
        .map(|(m, uses)| (m.to_string(), uses.into_iter().map(String::from).collect()))
        .collect();
        let levels: Vec<Vec<String>> = levels(&graph)
            .into_iter()
            .map(|l| l.into_iter().collect())
            .collect();
        assert_eq!(levels, [vec!["z"], vec!["a", "b", "c"], vec!["d"]]);
    }
}
