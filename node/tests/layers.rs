//! The node's layers depend one way (`node/src/lib.rs`'s layout): a module of a layer names
//! only the layers below it. Read from the sources, so an import against the grain fails here
//! before it becomes a circle.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;

/// Each top-level module and the modules it may name.
fn allowed() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    let base = ["config", "metrics", "planted"];
    let below = |more: &[&'static str]| base.iter().chain(more).copied().collect::<BTreeSet<_>>();
    BTreeMap::from([
        ("planted", BTreeSet::new()),
        ("metrics", BTreeSet::new()),
        ("config", BTreeSet::from(["planted"])),
        ("net", below(&[])),
        ("control", below(&["net"])),
        ("tunnels", below(&["net", "control"])),
        ("edge", below(&["net", "control", "tunnels"])),
        ("api", below(&["net", "control"])),
        ("app", below(&["net", "control", "tunnels", "edge", "api"])),
    ])
}

/// The `.rs` files under `dir`, with the top-level module each belongs to.
fn sources(dir: &Path, top: Option<&str>, out: &mut Vec<(String, std::path::PathBuf)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        let module = top.map(str::to_string).unwrap_or(stem);
        if path.is_dir() {
            sources(&path, Some(&module), out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push((module, path));
        }
    }
}

#[test]
fn every_layer_names_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, None, &mut files);
    let allowed = allowed();
    let mut wrong = Vec::new();
    let mut seen = BTreeSet::new();
    for (module, path) in &files {
        if module == "lib" || module == "main" {
            continue;
        }
        let may = allowed.get(module.as_str()).unwrap_or_else(|| panic!("{module} is not in the layout"));
        seen.insert(module.clone());
        let text = std::fs::read_to_string(path).unwrap();
        // The code, not its tests (which may reach anywhere) or comments.
        let code = text.split("#[cfg(test)]").next().unwrap();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let named: String = line[i + 7..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                if named != *module && !may.contains(named.as_str()) {
                    wrong.push(format!("{}: {module} names {named}", path.display()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers:\n{}", wrong.join("\n"));
    let expected: BTreeSet<String> = allowed.keys().map(|k| k.to_string()).collect();
    assert_eq!(seen, expected, "every layer has code, and every module is a layer");
}
