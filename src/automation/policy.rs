//! Automation policy as Flux v1 wrote it in annotations: whether a
//! workload is automated or locked, and which tags each of its containers
//! may move to. Read from the object in Git; pure.
//!
//! Where Flux v1 guessed, this refuses: a tag filter that does not compile
//! is an error naming the annotation, not a filter that matches every tag.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::image_policy::Rule;
use super::semver::{self, Constraint};

/// The prefixes of policy annotations, current and old.
pub const PREFIXES: [&str; 2] = ["fluxcd.io/", "flux.weave.works/"];
/// HelmRelease filters: `filter.fluxcd.io/<alias>` is `tag.<alias>`.
pub const FILTER_PREFIX: &str = "filter.fluxcd.io/";

/// Which tags a container may move to.
#[derive(Debug, Clone)]
pub enum Pattern {
    /// `*` the only wildcard; case-sensitive; without `*` an exact tag.
    Glob(String),
    /// The highest version that satisfies the constraint.
    Semver(Constraint),
    /// Unanchored, as Flux v1 matched them (write `^…$` to anchor).
    Regex(regex::Regex),
    /// A `tidegate.dev/v1 ImagePolicy`'s filter and order (Flux v2's way).
    Policy(Box<Rule>),
}

impl Pattern {
    /// `glob:`, `semver:`, `regex:` or `regexp:` then the pattern; anything
    /// else is a glob.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if let Some(c) = text.strip_prefix("semver:") {
            return Constraint::parse(c.trim()).map(Pattern::Semver);
        }
        if let Some(re) = text
            .strip_prefix("regexp:")
            .or_else(|| text.strip_prefix("regex:"))
        {
            return regex::Regex::new(re)
                .map(Pattern::Regex)
                .map_err(|e| format!("{re:?} is not a regular expression: {e}"));
        }
        Ok(Pattern::Glob(
            text.strip_prefix("glob:").unwrap_or(text).to_string(),
        ))
    }

    /// Whether a tag passes. `latest` (in any case) passes only a filter
    /// that names it exactly.
    pub fn matches(&self, tag: &str) -> bool {
        if tag.eq_ignore_ascii_case("latest") {
            return matches!(self, Pattern::Glob(g) if g == "latest");
        }
        match self {
            Pattern::Glob(glob) => glob_matches(glob, tag),
            Pattern::Semver(c) => semver::parse_tag(tag).is_some_and(|v| c.matches(&v)),
            Pattern::Regex(re) => re.is_match(tag),
            Pattern::Policy(rule) => rule.matches(tag),
        }
    }

    /// Versions order semver tags, and a policy orders its own; the others
    /// are ordered by when their image was built.
    pub fn by_version(&self) -> bool {
        matches!(self, Pattern::Semver(_) | Pattern::Policy(_))
    }
}

impl Default for Pattern {
    fn default() -> Pattern {
        Pattern::Glob("*".into())
    }
}

/// `*` matches any run of characters; nothing else is special.
pub fn glob_matches(glob: &str, text: &str) -> bool {
    let parts: Vec<&str> = glob.split('*').collect();
    if parts.len() == 1 {
        return glob == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// A lock: the workload is never changed while it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lock {
    pub message: Option<String>,
    pub user: Option<String>,
}

/// One workload's policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub automated: bool,
    pub locked: Option<Lock>,
    /// Per container name.
    pub tags: BTreeMap<String, Pattern>,
    /// `tag_all`: for every container without its own.
    pub tag_all: Option<Pattern>,
}

impl Policy {
    /// The policy an object's annotations set, and an error for each
    /// annotation that cannot be read (that container is then left alone).
    pub fn from_annotations(annotations: &Map<String, Value>) -> (Policy, Vec<PolicyError>) {
        let mut policy = Policy::default();
        let mut errors = Vec::new();
        let mut lock = Lock::default();
        let mut locked = false;
        for (key, value) in annotations {
            let Some(value) = value.as_str() else {
                continue;
            };
            let name = match PREFIXES.iter().find_map(|p| key.strip_prefix(p)) {
                Some(name) => name.to_string(),
                None => match key.strip_prefix(FILTER_PREFIX) {
                    Some(alias) => format!("tag.{alias}"),
                    None => continue,
                },
            };
            match name.as_str() {
                "automated" => policy.automated = value == "true",
                "locked" => locked = value == "true",
                "locked_msg" => lock.message = Some(value.to_string()),
                "locked_user" => lock.user = Some(value.to_string()),
                "tag_all" => match Pattern::parse(value) {
                    Ok(p) => policy.tag_all = Some(p),
                    Err(reason) => errors.push(PolicyError {
                        annotation: key.clone(),
                        reason,
                    }),
                },
                _ => {
                    let Some(container) = name.strip_prefix("tag.") else {
                        continue;
                    };
                    match Pattern::parse(value) {
                        Ok(p) => {
                            policy.tags.insert(container.to_string(), p);
                        }
                        Err(reason) => errors.push(PolicyError {
                            annotation: key.clone(),
                            reason,
                        }),
                    }
                }
            }
        }
        if locked {
            policy.locked = Some(lock);
        }
        (policy, errors)
    }

    /// The filter of one container: its own, else `tag_all`, else `glob:*`.
    pub fn pattern(&self, container: &str) -> Pattern {
        self.tags
            .get(container)
            .or(self.tag_all.as_ref())
            .cloned()
            .unwrap_or_default()
    }

    /// Whether automation may change this workload at all.
    pub fn is_automated(&self) -> bool {
        self.automated && self.locked.is_none()
    }
}

/// An annotation that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub annotation: String,
    pub reason: String,
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "annotation {}: {}", self.annotation, self.reason)
    }
}

/// The tag to move to: of those that pass `pattern`, the highest version
/// (for `semver:`), else the newest image. `tags` are (tag, when built);
/// a tag whose build time is unknown is never chosen by time.
pub fn pick<'a>(pattern: &Pattern, tags: &'a [(String, Option<i64>)]) -> Option<&'a str> {
    ranked(pattern, tags).into_iter().next()
}

/// The tags that pass `pattern`, best first (the first is the pick); by
/// time, only those whose build time is known.
pub fn ranked<'a>(pattern: &Pattern, tags: &'a [(String, Option<i64>)]) -> Vec<&'a str> {
    let passing = tags.iter().filter(|(t, _)| pattern.matches(t));
    if let Pattern::Policy(rule) = pattern {
        rule.ranked(passing.map(|(t, _)| t.as_str()))
    } else if pattern.by_version() {
        let mut versions: Vec<_> = passing
            .filter_map(|(t, _)| Some((semver::parse_tag(t)?, t.as_str())))
            .collect();
        // Equal versions (`1.10`, `1.10.0`): the longer tag, as Flux did.
        versions.sort_by(|a, b| b.0.cmp_precedence(&a.0).then_with(|| b.1.cmp(a.1)));
        versions.into_iter().map(|(_, t)| t).collect()
    } else {
        let mut built: Vec<_> = passing
            .filter_map(|(t, created)| Some((*created.as_ref()?, t.as_str())))
            .collect();
        // Built at the same second: the smaller name, as Flux did.
        built.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        built.into_iter().map(|(_, t)| t).collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn policy(annotations: Value) -> (Policy, Vec<PolicyError>) {
        Policy::from_annotations(annotations.as_object().unwrap())
    }

    #[test]
    fn annotations_of_both_prefixes_and_helm_filters() {
        let (p, errors) = policy(json!({
            "fluxcd.io/automated": "true",
            "flux.weave.works/tag.web": "semver:~1.2",
            "filter.fluxcd.io/chart-image": "glob:1.*",
            "fluxcd.io/tag.side": "regex:^v[0-9]+$",
            "fluxcd.io/tag.plain": "main-*",
            "other.io/tag.x": "glob:nothing",
        }));
        assert!(errors.is_empty(), "{errors:?}");
        assert!(p.is_automated());
        assert!(p.pattern("web").matches("1.2.7"));
        assert!(!p.pattern("web").matches("1.3.0"));
        assert!(p.pattern("chart-image").matches("1.9"));
        assert!(p.pattern("side").matches("v12") && !p.pattern("side").matches("v12a"));
        assert!(p.pattern("plain").matches("main-abc") && !p.pattern("plain").matches("dev-abc"));
        assert!(
            p.pattern("unnamed").matches("anything"),
            "glob:* by default"
        );
        assert!(!p.tags.contains_key("x"));
    }

    #[test]
    fn a_lock_holds_the_workload_and_says_who_and_why() {
        let (p, _) = policy(json!({
            "fluxcd.io/automated": "true",
            "fluxcd.io/locked": "true",
            "fluxcd.io/locked_msg": "incident 42",
            "fluxcd.io/locked_user": "jane",
        }));
        assert!(!p.is_automated());
        assert_eq!(
            p.locked,
            Some(Lock {
                message: Some("incident 42".into()),
                user: Some("jane".into())
            })
        );
        let (p, _) = policy(json!({"fluxcd.io/automated": "false"}));
        assert!(!p.is_automated());
        let (p, _) = policy(json!({"fluxcd.io/automated": "True"}));
        assert!(
            !p.is_automated(),
            "only the exact \"true\", as Flux v1 read it"
        );
    }

    #[test]
    fn a_filter_that_does_not_compile_is_an_error_not_a_match_all() {
        let (p, errors) = policy(json!({
            "fluxcd.io/tag.web": "regex:([",
            "fluxcd.io/tag.api": "semver:>= banana",
            "fluxcd.io/tag_all": "semver:~2",
        }));
        let named: Vec<&str> = errors.iter().map(|e| e.annotation.as_str()).collect();
        assert_eq!(named, ["fluxcd.io/tag.web", "fluxcd.io/tag.api"]);
        assert!(!p.tags.contains_key("web"));
        assert!(p.pattern("other").matches("2.1.0"), "tag_all applies");
    }

    #[test]
    fn latest_is_chosen_only_when_named() {
        assert!(!Pattern::parse("glob:*").unwrap().matches("latest"));
        assert!(!Pattern::parse("regex:.*").unwrap().matches("LATEST"));
        assert!(Pattern::parse("latest").unwrap().matches("latest"));
        assert!(Pattern::parse("glob:latest").unwrap().matches("latest"));
    }

    #[test]
    fn globs() {
        for (glob, text, ok) in [
            ("*", "x", true),
            ("1.*", "1.2", true),
            ("1.*", "2.1", false),
            ("*-alpine", "3.1-alpine", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXcYb", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("a*a", "a", false),
        ] {
            assert_eq!(glob_matches(glob, text), ok, "{glob} {text}");
        }
    }

    #[test]
    fn the_pick_is_the_highest_version_or_the_newest_build() {
        let tags: Vec<(String, Option<i64>)> = [
            ("1.2.0", Some(300)),
            ("1.10", Some(100)),
            ("1.10.0", Some(100)),
            ("1.9.0", Some(400)),
            ("12345678", Some(900)),
            ("latest", Some(1000)),
            ("dev", None),
        ]
        .iter()
        .map(|(t, c)| (t.to_string(), *c))
        .collect();
        let semver = Pattern::parse("semver:>=1").unwrap();
        assert_eq!(pick(&semver, &tags), Some("1.10.0"));
        let glob = Pattern::parse("glob:*").unwrap();
        assert_eq!(
            pick(&glob, &tags),
            Some("12345678"),
            "newest build; latest is not named"
        );
        let ones = Pattern::parse("glob:1.*").unwrap();
        assert_eq!(pick(&ones, &tags), Some("1.9.0"));
        let none = Pattern::parse("semver:>5").unwrap();
        assert_eq!(pick(&none, &tags), None);
        let tie: Vec<(String, Option<i64>)> = vec![("b".into(), Some(5)), ("a".into(), Some(5))];
        assert_eq!(pick(&glob, &tie), Some("a"));
    }
}
