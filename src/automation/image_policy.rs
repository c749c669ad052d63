//! Flux v2's way of choosing an image, for repositories that use it: a
//! `tidegate.dev/v1 ImagePolicy` document in the repository (read, never
//! applied) names an image and how its tags are ordered, and setter
//! markers in YAML files (`markers`) name the policy. Pure.
//!
//! ```yaml
//! apiVersion: tidegate.dev/v1
//! kind: ImagePolicy
//! metadata: {name: web, namespace: shop}
//! spec:
//!   image: reg.io/shop/web
//!   filterTags: {pattern: '^main-[a-f0-9]+-(?P<ts>[0-9]+)', extract: '$ts'}
//!   policy:
//!     numerical: {order: asc}     # or semver: {range: '>=1.0 <2'}, alphabetical: {order: asc}
//! ```

use serde_json::Value;

use super::image::ImageRef;
use super::semver::{self, Constraint};

/// The document's kind as people read it.
pub const SHOWN: &str = "tidegate.dev/v1 ImagePolicy";

/// The longest `filterTags.pattern` or `extract`, in characters.
pub const MAX_FILTER: usize = 256;

/// One policy as the repository declares it.
#[derive(Debug, Clone)]
pub struct ImagePolicy {
    pub namespace: String,
    pub name: String,
    /// The repository its tags are read from (no tag, no digest).
    pub image: ImageRef,
    pub rule: Rule,
    /// `spec.secretRef.name`: a pull secret in its namespace to read the
    /// registry with.
    pub secret: Option<String>,
}

/// Which tags pass, and how those that pass are ordered (the last wins).
#[derive(Debug, Clone)]
pub struct Rule {
    pub filter: Option<Filter>,
    pub order: Order,
}

/// `filterTags`: tags that match `pattern` pass, and are ordered by what
/// `extract` makes of them (`$1`, `$name`; the whole tag by default).
#[derive(Debug, Clone)]
pub struct Filter {
    pub pattern: regex::Regex,
    pub extract: String,
}

#[derive(Debug, Clone)]
pub enum Order {
    /// The highest version in the range.
    Semver(Constraint),
    /// By the text; ascending picks the last.
    Alphabetical { descending: bool },
    /// By the number; tags that are not one do not pass.
    Numerical { descending: bool },
}

impl ImagePolicy {
    /// The policy a document declares, or what is wrong with it.
    pub fn from_object(object: &Value, default_namespace: &str) -> Result<ImagePolicy, String> {
        let meta = &object["metadata"];
        let name = meta["name"]
            .as_str()
            .ok_or("metadata.name is missing")?
            .to_string();
        let namespace = meta["namespace"]
            .as_str()
            .unwrap_or(default_namespace)
            .to_string();
        let spec = &object["spec"];
        let image = spec["image"]
            .as_str()
            .ok_or("spec.image is missing: name the repository its tags are read from")?;
        let image = ImageRef::parse(image).map_err(|e| format!("spec.image: {e}"))?;
        if image.tag.is_some() || image.digest.is_some() {
            return Err(format!(
                "spec.image {image} names a tag or digest: name the repository alone"
            ));
        }
        let secret = spec["secretRef"]["name"].as_str().map(str::to_string);
        Ok(ImagePolicy {
            namespace,
            name,
            image,
            rule: Rule::from_spec(spec)?,
            secret,
        })
    }
}

impl Rule {
    fn from_spec(spec: &Value) -> Result<Rule, String> {
        let filter = match &spec["filterTags"] {
            Value::Null => None,
            f => {
                let pattern = f["pattern"].as_str().unwrap_or(".*");
                let extract = f["extract"].as_str().unwrap_or("$0");
                // Each tag is matched and expanded: both stay small.
                if pattern.len() > MAX_FILTER || extract.len() > MAX_FILTER {
                    return Err(format!(
                        "spec.filterTags: a pattern or extract longer than {MAX_FILTER} characters"
                    ));
                }
                let pattern = regex::Regex::new(pattern).map_err(|e| {
                    format!("spec.filterTags.pattern {pattern:?} is not a regular expression: {e}")
                })?;
                Some(Filter {
                    pattern,
                    extract: extract.to_string(),
                })
            }
        };
        let policy = &spec["policy"];
        let set: Vec<&str> = ["semver", "alphabetical", "numerical"]
            .into_iter()
            .filter(|k| !policy[*k].is_null())
            .collect();
        let descending = |kind: &str| match policy[kind]["order"].as_str() {
            None | Some("asc") => Ok(false),
            Some("desc") => Ok(true),
            Some(other) => Err(format!(
                "spec.policy.{kind}.order is {other:?}: asc or desc"
            )),
        };
        let order = match set.as_slice() {
            ["semver"] => {
                let range = policy["semver"]["range"]
                    .as_str()
                    .ok_or("spec.policy.semver.range is missing")?;
                Order::Semver(
                    Constraint::parse(range)
                        .map_err(|e| format!("spec.policy.semver.range: {e}"))?,
                )
            }
            ["alphabetical"] => Order::Alphabetical {
                descending: descending("alphabetical")?,
            },
            ["numerical"] => Order::Numerical {
                descending: descending("numerical")?,
            },
            [] => {
                return Err("spec.policy names no order: semver, alphabetical or numerical".into());
            }
            many => {
                return Err(format!(
                    "spec.policy names {} orders: name one",
                    many.join(" and ")
                ));
            }
        };
        Ok(Rule { filter, order })
    }

    /// What a tag is ordered by, if it passes.
    fn key(&self, tag: &str) -> Option<String> {
        let value = match &self.filter {
            None => tag.to_string(),
            Some(f) => {
                let captures = f.pattern.captures(tag)?;
                let mut out = String::new();
                captures.expand(&f.extract, &mut out);
                out
            }
        };
        let orderable = match &self.order {
            Order::Semver(c) => semver::parse_tag(&value).is_some_and(|v| c.matches(&v)),
            Order::Alphabetical { .. } => true,
            Order::Numerical { .. } => number(&value).is_some(),
        };
        orderable.then_some(value)
    }

    pub fn matches(&self, tag: &str) -> bool {
        self.key(tag).is_some()
    }

    /// The tag the policy chooses of `tags`.
    pub fn pick<'a>(&self, tags: impl Iterator<Item = &'a str>) -> Option<&'a str> {
        self.ranked(tags).into_iter().next()
    }

    /// The tags that pass, best first.
    pub fn ranked<'a>(&self, tags: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
        let mut keyed: Vec<(String, &str)> = tags.filter_map(|t| Some((self.key(t)?, t))).collect();
        let cmp = |a: &(String, &str), b: &(String, &str)| {
            let by_key = match &self.order {
                Order::Semver(_) => {
                    let (x, y) = (semver::parse_tag(&a.0), semver::parse_tag(&b.0));
                    x.zip(y)
                        .map_or(std::cmp::Ordering::Equal, |(x, y)| x.cmp_precedence(&y))
                }
                Order::Alphabetical { descending } => {
                    let o = a.0.cmp(&b.0);
                    if *descending { o.reverse() } else { o }
                }
                Order::Numerical { descending } => {
                    let (x, y) = (number(&a.0).unwrap_or(0.0), number(&b.0).unwrap_or(0.0));
                    let o = x.total_cmp(&y);
                    if *descending { o.reverse() } else { o }
                }
            };
            // Equal keys: the greater tag, so the choice never depends on
            // the order the registry listed them in.
            by_key.then_with(|| a.1.cmp(b.1))
        };
        keyed.sort_by(|a, b| cmp(b, a));
        keyed.into_iter().map(|(_, t)| t).collect()
    }
}

fn number(text: &str) -> Option<f64> {
    text.parse::<f64>().ok().filter(|n| n.is_finite())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn policy(spec: Value) -> Result<ImagePolicy, String> {
        ImagePolicy::from_object(
            &json!({"apiVersion": "tidegate.dev/v1", "kind": "ImagePolicy",
                "metadata": {"name": "web"}, "spec": spec}),
            "shop",
        )
    }

    fn pick(spec: Value, tags: &[&str]) -> Option<String> {
        let p = policy(spec).unwrap();
        p.rule.pick(tags.iter().copied()).map(str::to_string)
    }

    #[test]
    fn each_order_picks_as_flux_v2_does() {
        let tags = ["1.2.0", "1.10.0", "v1.9.3", "2.0.0", "2.0.0-rc.1", "dev"];
        assert_eq!(
            pick(
                json!({"image": "reg.io/web", "policy": {"semver": {"range": ">=1.0 <2"}}}),
                &tags
            )
            .as_deref(),
            Some("1.10.0")
        );
        assert_eq!(
            pick(
                json!({"image": "reg.io/web", "policy": {"alphabetical": {}}}),
                &["a", "c", "b"]
            )
            .as_deref(),
            Some("c")
        );
        assert_eq!(
            pick(
                json!({"image": "reg.io/web", "policy": {"alphabetical": {"order": "desc"}}}),
                &["b", "a", "c"]
            )
            .as_deref(),
            Some("a")
        );
        assert_eq!(
            pick(
                json!({"image": "reg.io/web", "policy": {"numerical": {"order": "asc"}}}),
                &["9", "10", "x", "2"]
            )
            .as_deref(),
            Some("10"),
            "by number, not by text; x is not one"
        );
    }

    #[test]
    fn filter_tags_extract_what_is_ordered() {
        let spec = json!({"image": "reg.io/web",
            "filterTags": {"pattern": "^main-[a-f0-9]+-(?P<ts>[0-9]+)$", "extract": "$ts"},
            "policy": {"numerical": {"order": "asc"}}});
        let tags = [
            "main-abc123-1700000300",
            "main-def456-1700000900",
            "main-999999-170000",
            "dev-aaa-1800000000",
        ];
        assert_eq!(
            pick(spec, &tags).as_deref(),
            Some("main-def456-1700000900"),
            "the dev tag does not pass the filter"
        );
        let spec = json!({"image": "reg.io/web",
            "filterTags": {"pattern": "^v(.*)$", "extract": "$1"},
            "policy": {"semver": {"range": "~1.4"}}});
        assert_eq!(
            pick(spec, &["v1.4.1", "v1.4.7", "v1.5.0", "1.4.9"]).as_deref(),
            Some("v1.4.7")
        );
    }

    #[test]
    fn a_policy_that_cannot_be_read_says_what_to_fix() {
        let cases = [
            (
                json!({"policy": {"alphabetical": {}}}),
                "spec.image is missing",
            ),
            (
                json!({"image": "reg.io/web:1", "policy": {"alphabetical": {}}}),
                "names a tag",
            ),
            (json!({"image": "reg.io/web"}), "names no order"),
            (
                json!({"image": "reg.io/web", "policy": {"alphabetical": {}, "numerical": {}}}),
                "alphabetical and numerical",
            ),
            (
                json!({"image": "reg.io/web", "policy": {"semver": {"range": ">= banana"}}}),
                "spec.policy.semver.range",
            ),
            (
                json!({"image": "reg.io/web", "policy": {"numerical": {"order": "up"}}}),
                "asc or desc",
            ),
            (
                json!({"image": "reg.io/web", "filterTags": {"pattern": "(["}, "policy": {"alphabetical": {}}}),
                "not a regular expression",
            ),
            (
                json!({"image": "reg.io/web", "filterTags": {"pattern": "^(.*)$", "extract": "$1".repeat(200)},
                    "policy": {"alphabetical": {}}}),
                "longer than 256 characters",
            ),
        ];
        for (spec, expected) in cases {
            let e = policy(spec.clone()).unwrap_err();
            assert!(e.contains(expected), "{spec}: {e}");
        }
        let ok = policy(json!({"image": "reg.io/web", "secretRef": {"name": "pull"},
            "policy": {"alphabetical": {}}}))
        .unwrap();
        assert_eq!(
            (ok.namespace.as_str(), ok.secret.as_deref()),
            ("shop", Some("pull"))
        );
    }
}
