//! No import circles in the workspace: within each crate, between its top-level modules
//! (`crate::a` used in module `b` is an edge `b → a`), and between the sibling files of each
//! directory module (`super::s` / `crate::d::s`). Test modules are left out: a test may reach
//! anywhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of `file` under `src` (`router/mod.rs` → `["router"]`, `lib.rs` → `[]`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    if parts == ["lib"] || parts == ["main"] {
        parts.clear();
    }
    parts
}

/// `text` without its `#[cfg(test)] mod NAME { … }` blocks.
fn strip_tests(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        if !trimmed.starts_with("mod ") {
            out.push_str(&rest[..at + "#[cfg(test)]".len()]);
            rest = after;
            continue;
        }
        out.push_str(&rest[..at]);
        let Some(open) = after.find('{') else {
            return out;
        };
        let mut depth = 0usize;
        let mut end = after.len();
        for (i, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Every `prefix` path in `text`: the first one or two segments after it.
fn paths<'a>(
    text: &'a str,
    prefix: &'a str,
) -> impl Iterator<Item = (String, Option<String>)> + 'a {
    text.match_indices(prefix).filter_map(move |(at, _)| {
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            return None;
        }
        let mut segs = text[at + prefix.len()..].split("::").map(|s| {
            s.chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        });
        let a = segs.next().filter(|s| !s.is_empty())?;
        let b = segs.next().filter(|s| !s.is_empty());
        Some((a, b))
    })
}

/// The strongly connected components of more than one module (Tarjan's algorithm).
fn circles(g: &Graph) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_crate_of_the_workspace_has_an_import_circle() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    let mut checked = 0;
    for e in std::fs::read_dir(&crates).unwrap() {
        let src = e.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        let crate_name = src
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let modules: Vec<(PathBuf, Vec<String>)> = files
            .into_iter()
            .map(|f| {
                let m = module_of(&src, &f);
                (f, m)
            })
            .collect();
        let tops: BTreeSet<&str> = modules
            .iter()
            .filter_map(|(_, m)| m.first().map(String::as_str))
            .collect();
        let mut top = Graph::new();
        let mut siblings: BTreeMap<String, Graph> = BTreeMap::new();
        for (file, m) in &modules {
            checked += 1;
            let text = strip_tests(&std::fs::read_to_string(file).unwrap());
            let Some(me) = m.first() else { continue };
            for (a, b) in paths(&text, "crate::") {
                if &a != me && tops.contains(a.as_str()) {
                    top.entry(me.clone()).or_default().insert(a.clone());
                }
                if let (Some(mine), Some(b)) = (m.get(1), b) {
                    if &a == me && &b != mine {
                        siblings
                            .entry(me.clone())
                            .or_default()
                            .entry(mine.clone())
                            .or_default()
                            .insert(b);
                    }
                }
            }
            if m.len() == 2 {
                let kids: BTreeSet<&str> = modules
                    .iter()
                    .filter(|(_, k)| k.len() >= 2 && k[0] == *me)
                    .map(|(_, k)| k[1].as_str())
                    .collect();
                for (s, _) in paths(&text, "super::") {
                    if kids.contains(s.as_str()) && s != m[1] {
                        siblings
                            .entry(me.clone())
                            .or_default()
                            .entry(m[1].clone())
                            .or_default()
                            .insert(s);
                    }
                }
            }
        }
        for c in circles(&top) {
            found.push(format!("{crate_name}: {}", c.join(" <-> ")));
        }
        for (dir, g) in &siblings {
            for c in circles(g) {
                found.push(format!("{crate_name}::{dir}: {}", c.join(" <-> ")));
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} files read: wrong workspace path?"
    );
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
}

#[test]
fn the_checker_sees_a_circle() {
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default().insert("a".into());
    g.entry("d".into()).or_default().insert("a".into());
    assert_eq!(
        circles(&g),
        vec![vec!["a".to_string(), "b".into(), "c".into()]]
    );
    let text = "use crate::router::Router;\n#[cfg(test)]\nmod tests { use crate::stats; }\nfn f() { super::x::y(); }";
    let kept = strip_tests(text);
    assert!(
        kept.contains("crate::router") && !kept.contains("crate::stats"),
        "{kept}"
    );
    let found: Vec<_> = paths(&kept, "crate::").collect();
    assert_eq!(found, vec![("router".to_string(), None)]);
}
