//! `cargo xtask layers`: the framework's top-level modules in import order, bottom first, and
//! every import that runs upward (any module imported by one it imports, directly or not).
//!
//! An import is a `crate::MODULE` path outside `//` comments in a module's files (test code
//! included), or each first name of a `crate::{..}` group; `super::` paths that climb to the
//! crate root are not followed. The order is a topological sort of those imports (ties by
//! name). Modules that import each other, directly
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

/// The modules of `known` that `text` names as `crate::MODULE` outside comments, including
/// each first name of a group (`use crate::{a::X, b::{Y, Z}};`, over several lines too).
fn imports(text: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let mut keep = |name: String| {
        if known.contains(&name) {
            found.insert(name);
        }
    };
    for (at, _) in code.match_indices("crate::") {
        // `$crate::` in a macro is the crate of the caller.
        if code[..at].ends_with('$') {
            continue;
        }
        let rest = &code[at + 7..];
        match rest.strip_prefix('{') {
            Some(group) => group_heads(group).into_iter().for_each(&mut keep),
            None => keep(ident(rest)),
        }
    }
    found
}

/// The identifier `text` starts with.
fn ident(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The first name of each item of a `{...}` group, `text` starting just after its `{`.
fn group_heads(text: &str) -> Vec<String> {
    let mut heads = vec![ident(text.trim_start())];
    let mut depth = 1;
    for (at, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => heads.push(ident(text[at + 1..].trim_start())),
            _ => {}
        }
    }
    heads
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
    let (lines, cycles) = report(&graph);
    for line in lines {
        println!("{line}");
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

/// One line per level, bottom first, and for each level whose modules import each other the
/// imports among them (empty when no import runs upward).
fn report(graph: &BTreeMap<String, BTreeSet<String>>) -> (Vec<String>, Vec<String>) {
    let mut lines = Vec::new();
    let mut cycles = Vec::new();
    for (level, group) in levels(graph).iter().enumerate() {
        let uses: BTreeSet<&str> = group
            .iter()
            .flat_map(|m| &graph[m])
            .filter(|u| !group.contains(*u))
            .map(String::as_str)
            .collect();
        let names: Vec<&str> = group.iter().map(String::as_str).collect();
        let uses: Vec<&str> = uses.into_iter().collect();
        if group.len() == 1 {
            lines.push(format!(
                "{level:>2} {:<18} imports: {}",
                names[0],
                uses.join(", ")
            ));
            continue;
        }
        lines.push(format!(
            "{level:>2} {:<18} import each other; below: {}",
            format!("[{}]", names.join(", ")),
            uses.join(", ")
        ));
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
    (lines, cycles)
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

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        edges
            .iter()
            .map(|(m, uses)| (m.to_string(), uses.iter().map(|u| u.to_string()).collect()))
            .collect()
    }

    #[test]
    fn grouped_imports_name_each_module_of_the_group() {
        let known: BTreeSet<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let text = "use crate::{\n    a::X,\n    // c::Y is in a comment\n    b::{P, d::Q},\n};";
        let found: Vec<String> = imports(text, &known).into_iter().collect();
        assert_eq!(found, ["a", "b"]);
        let one_line: Vec<String> = imports("use crate::{c, a::{self}};", &known)
            .into_iter()
            .collect();
        assert_eq!(one_line, ["a", "c"]);
    }

    #[test]
    fn a_cycle_is_reported_with_its_edges_and_an_order_without_one_is_not() {
        let cyclic = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"])]);
        let (lines, cycles) = report(&cyclic);
        assert_eq!(cycles, ["a -> b, b -> c, c -> a"]);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("[a, b, c]") && lines[0].contains("import each other"));
        assert!(lines[1].contains("d ") && lines[1].ends_with("imports: a"));

        let acyclic = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &[]), ("d", &["a"])]);
        let (lines, cycles) = report(&acyclic);
        assert!(cycles.is_empty(), "{cycles:?}");
        let order: Vec<&str> = lines
            .iter()
            .map(|l| l.split_whitespace().nth(1).unwrap())
            .collect();
        assert_eq!(order, ["c", "b", "a", "d"]);
    }

    #[test]
    fn modules_that_import_each_other_share_a_level_above_what_they_import() {
        let graph = graph(&[
            ("a", &["b", "z"]),
            ("b", &["c"]),
            ("c", &["a", "z"]),
            ("d", &["a"]),
            ("z", &[]),
        ]);
        let levels: Vec<Vec<String>> = levels(&graph)
            .into_iter()
            .map(|l| l.into_iter().collect())
            .collect();
        assert_eq!(levels, [vec!["z"], vec!["a", "b", "c"], vec!["d"]]);
    }
}
