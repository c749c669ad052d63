//! `cargo xtask shape`: the tree keeps one direction. No file in `src/`
//! over 700 lines of code (tests and comments not counted), no function
//! over 80 lines, and no module that imports one listed after it in
//! `src/lib.rs`, so no import cycle between modules.
//!
//! Read line by line from rustfmt's layout: an item's body ends at the
//! first line that closes it at the item's own indentation.

use std::path::{Path, PathBuf};

use crate::Result;

const MAX_FILE_LINES: usize = 700;
const MAX_FN_LINES: usize = 80;

pub fn shape(args: &[&str]) -> Result<()> {
    if !args.is_empty() {
        return Err("usage: cargo xtask shape".into());
    }
    let src = crate::root().join("src");
    let order =
        module_order(&std::fs::read_to_string(src.join("lib.rs")).map_err(|e| e.to_string())?);
    let mut problems = Vec::new();
    for path in rust_files(&src)? {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let rel = path.strip_prefix(&src).expect("under src").to_path_buf();
        problems.extend(check_file(&rel, &text, &order));
    }
    if problems.is_empty() {
        println!(
            "shape: no file over {MAX_FILE_LINES} lines of code, no function over {MAX_FN_LINES}, modules in one direction"
        );
        return Ok(());
    }
    for p in &problems {
        eprintln!("{p}");
    }
    Err(format!(
        "{} problem(s) with the shape of src/",
        problems.len()
    ))
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))? {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The top-level modules in the order `lib.rs` declares them.
fn module_order(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod ")?.strip_suffix(';'))
        .map(str::to_string)
        .collect()
}

/// Everything wrong with one file of `src/` (`rel` is its path there).
fn check_file(rel: &Path, text: &str, order: &[String]) -> Vec<String> {
    let lines = without_tests(text);
    let mut problems = Vec::new();
    let code = lines
        .iter()
        .filter(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with("//")
        })
        .count();
    if code > MAX_FILE_LINES {
        problems.push(format!(
            "src/{}: {code} lines of code; at most {MAX_FILE_LINES}",
            rel.display()
        ));
    }
    for (name, length) in long_functions(&lines) {
        problems.push(format!(
            "src/{}: fn {name} is {length} lines; at most {MAX_FN_LINES}",
            rel.display()
        ));
    }
    let module = rel
        .components()
        .next()
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string()
        })
        .unwrap_or_default();
    if let Some(rank) = order.iter().position(|m| *m == module) {
        for used in used_modules(&lines) {
            let Some(used_rank) = order.iter().position(|m| *m == used) else {
                continue;
            };
            if used_rank > rank {
                problems.push(format!(
                    "src/{}: module {module} uses crate::{used}, which lib.rs lists after it",
                    rel.display()
                ));
            }
        }
    }
    problems
}

/// The lines of a file without its `#[cfg(test)]` items.
fn without_tests(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let mut kept = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() == "#[cfg(test)]" {
            i = item_end(&lines, i + 1) + 1;
            continue;
        }
        kept.push(lines[i]);
        i += 1;
    }
    kept
}

/// The index of the last line of the item starting at `start`.
fn item_end(lines: &[&str], start: usize) -> usize {
    let Some(first) = lines.get(start) else {
        return start;
    };
    let indent = indentation(first);
    let mut i = start;
    while i < lines.len() {
        let line = lines[i];
        let opens = line.contains('{');
        if i == start && line.trim_end().ends_with(';') && !opens {
            return i;
        }
        if i > start && indentation(line) == indent && line.trim_start().starts_with('}') {
            return i;
        }
        if i == start && opens && line.trim_end().ends_with('}') {
            return i;
        }
        i += 1;
    }
    lines.len() - 1
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Functions longer than the limit: (name, lines from `fn` to its `}`).
fn long_functions(lines: &[&str]) -> Vec<(String, usize)> {
    let mut long = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = fn_name(line) else { continue };
        // A declaration without a body (in a trait) has none to measure.
        let mut j = i;
        while j < lines.len() && !lines[j].contains('{') && !lines[j].trim_end().ends_with(';') {
            j += 1;
        }
        if j >= lines.len() || !lines[j].contains('{') {
            continue;
        }
        let end = item_end(lines, i);
        let length = end - i + 1;
        if length > MAX_FN_LINES {
            long.push((name, length));
        }
    }
    long
}

/// The name of the function a line starts, if it starts one.
fn fn_name(line: &str) -> Option<String> {
    let mut rest = line.trim_start();
    for prefix in [
        "pub(crate) ",
        "pub(super) ",
        "pub ",
        "async ",
        "const ",
        "unsafe ",
    ] {
        rest = rest.strip_prefix(prefix).unwrap_or(rest);
        rest = rest.strip_prefix("async ").unwrap_or(rest);
    }
    let name: String = rest
        .strip_prefix("fn ")?
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// The top-level modules of the crate a file names (`crate::x`).
fn used_modules(lines: &[&str]) -> Vec<String> {
    let mut used = Vec::new();
    for line in lines {
        if line.trim_start().starts_with("//") {
            continue;
        }
        let mut rest = *line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && !used.contains(&name) {
                used.push(name);
            }
            rest = after;
        }
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: [&str; 3] = ["model", "render", "sync"];

    fn order() -> Vec<String> {
        ORDER.iter().map(|s| s.to_string()).collect()
    }

    fn function(name: &str, body_lines: usize) -> String {
        let mut text = format!("pub async fn {name}() {{\n");
        for i in 0..body_lines {
            text.push_str(&format!("    let x{i} = {i};\n"));
        }
        text.push_str("}\n");
        text
    }

    #[test]
    fn a_long_function_is_named_and_a_test_module_is_not_counted() {
        let text = format!(
            "{}{}\n#[cfg(test)]\nmod tests {{\n{}}}\n",
            function("short", 10),
            function("long", 90),
            function("in_a_test", 200)
        );
        let problems = check_file(Path::new("render/mod.rs"), &text, &order());
        assert_eq!(
            problems,
            vec!["src/render/mod.rs: fn long is 92 lines; at most 80".to_string()]
        );
    }

    #[test]
    fn a_module_may_use_those_before_it_only() {
        let text = "use crate::model::ObjectRef;\nfn f() { crate::sync::run(); }\n";
        assert_eq!(
            check_file(Path::new("render/files.rs"), text, &order()),
            vec![
                "src/render/files.rs: module render uses crate::sync, which lib.rs lists after it"
                    .to_string()
            ]
        );
        assert!(check_file(Path::new("sync/mod.rs"), text, &order()).is_empty());
    }

    #[test]
    fn a_file_counts_code_lines_only() {
        let mut text = String::new();
        for i in 0..701 {
            text.push_str(&format!("const C{i}: u8 = 0;\n// a comment\n\n"));
        }
        let problems = check_file(Path::new("model/mod.rs"), &text, &order());
        assert_eq!(
            problems,
            vec!["src/model/mod.rs: 701 lines of code; at most 700".to_string()]
        );
    }

    #[test]
    fn modules_are_read_from_lib_in_order() {
        let lib =
            "//! docs\n\n/// The vocabulary.\npub mod model;\npub mod render;\n\npub mod sync;\n";
        assert_eq!(module_order(lib), order());
    }
}
