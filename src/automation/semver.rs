//! Version constraints as Flux v1 read `semver:` tag filters: the
//! Masterminds (Go) syntax — `~1.2`, `^1.2.3`, `>= 1.2, < 2`, `1.2 - 1.4`,
//! `1.2.x`, `||`, a leading `v` — over tags that parse loosely (`v1`, `1.2`).
//! One fix: a tag of digits only (a short commit SHA, `12345678`) is not a
//! version, where Flux v1 read it as `12345678.0.0` and chose it forever.
//!
//! A pre-release version satisfies a comparator only if that comparator
//! names a pre-release itself (`>= 1.2.3-0`), as in Masterminds v3.1.

use semver::{Prerelease, Version};

/// A tag read as a version: a leading `v`, then one to three numbers, and
/// an optional pre-release and build; `None` if it is not one.
pub fn parse_tag(tag: &str) -> Option<Version> {
    if tag.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    parse_loose(tag)
}

fn parse_loose(text: &str) -> Option<Version> {
    let text = text.strip_prefix(['v', 'V']).unwrap_or(text);
    let (core, build) = match text.split_once('+') {
        Some((c, b)) => (c, Some(b)),
        None => (text, None),
    };
    let (numbers, pre) = match core.split_once('-') {
        Some((n, p)) => (n, Some(p)),
        None => (core, None),
    };
    let parts: Vec<&str> = numbers.split('.').collect();
    if parts.is_empty() || parts.len() > 3 {
        return None;
    }
    let mut nums = [0u64; 3];
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        nums[i] = p.parse().ok()?;
    }
    let mut version = Version::new(nums[0], nums[1], nums[2]);
    if let Some(pre) = pre {
        version.pre = Prerelease::new(pre).ok()?;
    }
    if let Some(build) = build {
        version.build = semver::BuildMetadata::new(build).ok()?;
    }
    Some(version)
}

/// A constraint: any of its groups, each all of its comparators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    any: Vec<Vec<Comparator>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Comparator {
    op: Op,
    version: Version,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Constraint {
    pub fn parse(text: &str) -> Result<Constraint, String> {
        let mut any = Vec::new();
        for group in text.split("||") {
            any.push(parse_group(group.trim()).map_err(|e| format!("{text:?}: {e}"))?);
        }
        Ok(Constraint { any })
    }

    pub fn matches(&self, version: &Version) -> bool {
        self.any
            .iter()
            .any(|all| all.iter().all(|c| c.matches(version)))
    }
}

impl Comparator {
    fn matches(&self, v: &Version) -> bool {
        if !v.pre.is_empty() && self.version.pre.is_empty() {
            return false;
        }
        // Build metadata does not order versions.
        let ordering = (v.major, v.minor, v.patch, &v.pre).cmp(&(
            self.version.major,
            self.version.minor,
            self.version.patch,
            &self.version.pre,
        ));
        match self.op {
            Op::Eq => ordering.is_eq(),
            Op::Ne => !ordering.is_eq(),
            Op::Gt => ordering.is_gt(),
            Op::Ge => ordering.is_ge(),
            Op::Lt => ordering.is_lt(),
            Op::Le => ordering.is_le(),
        }
    }
}

/// A version as a constraint writes it: up to three parts, any of them a
/// wildcard (`x`, `X`, `*`) or missing, which then ends it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Partial {
    /// The parts given before the first wildcard or the end.
    parts: Vec<u64>,
    pre: Prerelease,
}

impl Partial {
    fn parse(text: &str) -> Result<Partial, String> {
        let text = text.trim();
        let text = text.strip_prefix(['v', 'V']).unwrap_or(text);
        if text.is_empty() {
            return Err("a comparator without a version".into());
        }
        let core = text.split_once('+').map_or(text, |(c, _)| c);
        let (numbers, pre) = match core.split_once('-') {
            Some((n, p)) => (n, p),
            None => (core, ""),
        };
        let mut parts = Vec::new();
        for (i, p) in numbers.split('.').enumerate() {
            if i >= 3 {
                return Err(format!("{text:?} has more than three parts"));
            }
            if matches!(p, "x" | "X" | "*") {
                break;
            }
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{text:?} is not a version"));
            }
            parts.push(
                p.parse()
                    .map_err(|_| format!("{text:?}: a part is too large"))?,
            );
        }
        let pre = Prerelease::new(pre).map_err(|e| format!("{text:?}: {e}"))?;
        if !pre.is_empty() && parts.len() < 3 {
            return Err(format!("{text:?}: a pre-release needs a whole version"));
        }
        Ok(Partial { parts, pre })
    }

    fn lowest(&self) -> Version {
        let mut v = Version::new(
            self.parts.first().copied().unwrap_or(0),
            self.parts.get(1).copied().unwrap_or(0),
            self.parts.get(2).copied().unwrap_or(0),
        );
        v.pre = self.pre.clone();
        v
    }

    /// The first version past every version this one stands for, with
    /// the part at `level` bumped (0 major, 1 minor, 2 patch).
    fn bumped(&self, level: usize) -> Version {
        let get = |i: usize| self.parts.get(i).copied().unwrap_or(0);
        match level {
            0 => Version::new(get(0).saturating_add(1), 0, 0),
            1 => Version::new(get(0), get(1).saturating_add(1), 0),
            _ => Version::new(get(0), get(1), get(2).saturating_add(1)),
        }
    }

    /// `[lowest, next)` of what a partial version stands for.
    fn range(&self) -> Vec<Comparator> {
        let low = Comparator {
            op: Op::Ge,
            version: self.lowest(),
        };
        match self.parts.len() {
            0 => vec![low],
            3 => vec![Comparator {
                op: Op::Eq,
                version: self.lowest(),
            }],
            n => vec![
                low,
                Comparator {
                    op: Op::Lt,
                    version: self.bumped(n - 1),
                },
            ],
        }
    }
}

fn parse_group(group: &str) -> Result<Vec<Comparator>, String> {
    if group.is_empty() {
        return Ok(Vec::new());
    }
    // `1.2 - 1.4`: inclusive at both ends.
    let tokens = tokens(group);
    let mut comparators = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if tokens.get(i + 1).is_some_and(|t| t == "-") {
            let low = Partial::parse(&tokens[i])?;
            let high = Partial::parse(tokens.get(i + 2).ok_or("a range without its end")?)?;
            comparators.push(Comparator {
                op: Op::Ge,
                version: low.lowest(),
            });
            comparators.extend(upper(Op::Le, &high));
            i += 3;
            continue;
        }
        comparators.extend(comparator(&tokens[i])?);
        i += 1;
    }
    Ok(comparators)
}

/// The words of a group: comparators split at commas and spaces, an
/// operator joined to the version that follows it (`>= 1.2` is one).
fn tokens(group: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for word in group.split([',', ' ', '\t']).filter(|w| !w.is_empty()) {
        match words.last_mut() {
            Some(last) if !last.is_empty() && last.chars().all(|c| "<>=!~^".contains(c)) => {
                last.push_str(word)
            }
            _ => words.push(word.to_string()),
        }
    }
    words
}

fn comparator(text: &str) -> Result<Vec<Comparator>, String> {
    let ops = ["!=", ">=", "=>", "<=", "=<", "~>", ">", "<", "~", "^", "="];
    let (op, rest) = ops
        .iter()
        .find_map(|op| text.strip_prefix(op).map(|rest| (*op, rest)))
        .unwrap_or(("", text));
    let v = Partial::parse(rest)?;
    let low = |op: Op| Comparator {
        op,
        version: v.lowest(),
    };
    Ok(match op {
        "" | "=" => v.range(),
        "!=" => match v.parts.len() {
            3 => vec![low(Op::Ne)],
            // `!= 1.2`: outside 1.2.x; a group is all of its comparators, so
            // only a whole version can be excluded in one.
            _ => return Err(format!("{text:?}: != needs a whole version")),
        },
        ">" => match v.parts.len() {
            3 => vec![low(Op::Gt)],
            0 => return Err(format!("{text:?}: nothing is greater than any version")),
            n => vec![Comparator {
                op: Op::Ge,
                version: v.bumped(n - 1),
            }],
        },
        ">=" | "=>" => vec![low(Op::Ge)],
        "<" => vec![low(Op::Lt)],
        "<=" | "=<" => upper(Op::Le, &v),
        "~" | "~>" => {
            let level = if v.parts.len() <= 1 { 0 } else { 1 };
            vec![
                low(Op::Ge),
                Comparator {
                    op: Op::Lt,
                    version: v.bumped(level),
                },
            ]
        }
        "^" => {
            // The first part that is not zero may not change (of those given).
            let given = v.parts.len().max(1);
            let level = v
                .parts
                .iter()
                .position(|p| *p != 0)
                .unwrap_or(given - 1)
                .min(given - 1);
            vec![
                low(Op::Ge),
                Comparator {
                    op: Op::Lt,
                    version: v.bumped(level),
                },
            ]
        }
        _ => unreachable!("every operator is listed"),
    })
}

/// `<= 1.2` is every 1.2.x; `<= 1.2.3` that version and below.
fn upper(op: Op, v: &Partial) -> Vec<Comparator> {
    match v.parts.len() {
        0 => Vec::new(),
        3 => vec![Comparator {
            op,
            version: v.lowest(),
        }],
        n => vec![Comparator {
            op: Op::Lt,
            version: v.bumped(n - 1),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(constraint: &str, tags: &[&str]) -> Vec<String> {
        let c = Constraint::parse(constraint).unwrap();
        tags.iter()
            .filter(|t| parse_tag(t).is_some_and(|v| c.matches(&v)))
            .map(|t| t.to_string())
            .collect()
    }

    const TAGS: [&str; 14] = [
        "1.0.0",
        "v1.2.0",
        "1.2.3",
        "1.2.9",
        "1.3.0",
        "1.10",
        "2.0.0",
        "2.0.1-alpha.1",
        "0.2.3",
        "0.2.9",
        "0.3.0",
        "12345678",
        "latest",
        "3.0",
    ];

    #[test]
    fn tilde_caret_and_partial_versions_as_masterminds_reads_them() {
        assert_eq!(ok("~1.2", &TAGS), ["v1.2.0", "1.2.3", "1.2.9"]);
        assert_eq!(ok("~1.2.3", &TAGS), ["1.2.3", "1.2.9"]);
        assert_eq!(
            ok("~1", &TAGS),
            ["1.0.0", "v1.2.0", "1.2.3", "1.2.9", "1.3.0", "1.10"]
        );
        assert_eq!(ok("^1.2.3", &TAGS), ["1.2.3", "1.2.9", "1.3.0", "1.10"]);
        assert_eq!(ok("^0.2.3", &TAGS), ["0.2.3", "0.2.9"]);
        assert_eq!(ok("1.2", &TAGS), ["v1.2.0", "1.2.3", "1.2.9"]);
        assert_eq!(ok("1.2.x", &TAGS), ["v1.2.0", "1.2.3", "1.2.9"]);
        assert_eq!(ok("=1.2.3", &TAGS), ["1.2.3"]);
        assert_eq!(ok("v1.2.3", &TAGS), ["1.2.3"]);
    }

    #[test]
    fn comparisons_ranges_and_alternatives() {
        assert_eq!(ok(">= 1.2, < 1.3", &TAGS), ["v1.2.0", "1.2.3", "1.2.9"]);
        assert_eq!(ok(">=1.2 <1.3", &TAGS), ["v1.2.0", "1.2.3", "1.2.9"]);
        assert_eq!(ok(">1.2", &TAGS), ["1.3.0", "1.10", "2.0.0", "3.0"]);
        assert_eq!(ok(">1.2.3 <=1.3", &TAGS), ["1.2.9", "1.3.0"]);
        assert_eq!(
            ok("1.2 - 1.3", &TAGS),
            ["v1.2.0", "1.2.3", "1.2.9", "1.3.0"]
        );
        assert_eq!(ok("~0.2 || >=3", &TAGS), ["0.2.3", "0.2.9", "3.0"]);
        assert_eq!(ok(">=1.2.3, != 1.2.9, <1.3", &TAGS), ["1.2.3"]);
    }

    #[test]
    fn pre_releases_only_when_asked_for_and_digits_only_is_no_version() {
        assert!(!ok("*", &TAGS).contains(&"2.0.1-alpha.1".to_string()));
        assert_eq!(ok(">=2.0.1-0", &TAGS), ["2.0.1-alpha.1", "3.0"]);
        assert!(
            !ok("*", &TAGS).contains(&"12345678".to_string()),
            "a short SHA"
        );
        assert!(!ok("*", &TAGS).contains(&"latest".to_string()));
        assert_eq!(parse_tag("3"), None, "digits only");
        assert_eq!(parse_tag("v3"), Some(Version::new(3, 0, 0)));
    }

    #[test]
    fn a_constraint_that_cannot_be_read_says_why() {
        for bad in [
            ">=", "~1.2.3.4", "1.2-beta", "> *", "!=1.2", "banana", "1.2 -",
        ] {
            assert!(Constraint::parse(bad).is_err(), "{bad}");
        }
    }
}
