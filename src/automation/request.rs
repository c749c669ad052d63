//! What fluxctl's workload commands asked fluxd for, as tidegate's CLI asks
//! the daemon: release an image, automate or deautomate, lock or unlock,
//! set a container's tag filter. A request names the workload as fluxctl
//! did (`namespace:kind/name`); `changes` turns it into the edit of the
//! workload's file. Pure: who asks, and whether they may, is the daemon's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::annotate::Change;
use super::containers;
use super::image::ImageRef;
use super::policy::{self, Pattern};
use crate::render::Manifest;

/// One request, as the CLI sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// `namespace:kind/name`, as fluxctl named workloads.
    pub workload: String,
    #[serde(flatten)]
    pub action: Action,
    /// Say what would change; write nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// The daemon asked (its sync set and namespace): part of what is
    /// signed into the request, so it cannot be sent to another.
    #[serde(default)]
    pub sync_set: String,
    #[serde(default)]
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// `--update-image IMG:TAG` (its containers of that repository), or
    /// `--update-all-images` (`image` none: each as its filter chooses).
    Release {
        image: Option<String>,
    },
    Automate,
    Deautomate,
    Lock {
        message: Option<String>,
    },
    Unlock,
    /// `--tag CONTAINER=PATTERN`, each.
    Policy {
        tags: BTreeMap<String, String>,
    },
}

/// The annotation prefix the commands write.
const PREFIX: &str = "fluxcd.io/";

impl Request {
    /// Whether the request is well formed: the workload name parses, the
    /// image has a tag, the patterns compile.
    pub fn check(&self) -> Result<(), String> {
        Workload::parse(&self.workload)?;
        match &self.action {
            Action::Release { image: Some(i) } => {
                let image = ImageRef::parse(i)?;
                if image.tag.is_none() || image.digest.is_some() {
                    return Err(format!("--update-image {i}: name the tag to release"));
                }
            }
            Action::Policy { tags } => {
                if tags.is_empty() {
                    return Err("policy: give at least one --tag CONTAINER=PATTERN".into());
                }
                for (container, pattern) in tags {
                    if !crate::render::manifest::is_dns_label(container) {
                        return Err(format!(
                            "--tag {container}=…: {container:?} is not a container name (a DNS label)"
                        ));
                    }
                    Pattern::parse(pattern)
                        .map_err(|e| format!("--tag {container}={pattern}: {e}"))?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The commit message, as fluxd wrote them.
    pub fn message(&self, images: &[String]) -> String {
        let w = &self.workload;
        match &self.action {
            Action::Release { .. } => match images {
                [one] => format!("Release {one} to {w}"),
                many => format!(
                    "Release {} images to {w}\n\n - {}\n",
                    many.len(),
                    many.join("\n - ")
                ),
            },
            Action::Automate => format!("Automated: {w}"),
            Action::Deautomate => format!("Deautomated: {w}"),
            Action::Lock { message: Some(m) } => format!("Locked: {w}\n\n{m}"),
            Action::Lock { message: None } => format!("Locked: {w}"),
            Action::Unlock => format!("Unlocked: {w}"),
            Action::Policy { .. } => format!("Updated policy: {w}"),
        }
    }

    /// The annotations the request sets and removes; `user` is who asked
    /// (a lock records them). Empty for a release.
    pub fn annotations(&self, user: &str) -> Vec<Change> {
        let set = |k: &str, v: &str| (format!("{PREFIX}{k}"), Some(v.to_string()));
        let remove = |k: &str| (format!("{PREFIX}{k}"), None);
        match &self.action {
            Action::Release { .. } => Vec::new(),
            Action::Automate => vec![set("automated", "true")],
            Action::Deautomate => vec![set("automated", "false")],
            Action::Lock { message } => {
                let mut out = vec![set("locked", "true"), set("locked_user", user)];
                out.push(match message {
                    Some(m) => set("locked_msg", m),
                    None => remove("locked_msg"),
                });
                out
            }
            Action::Unlock => vec![
                remove("locked"),
                remove("locked_msg"),
                remove("locked_user"),
            ],
            Action::Policy { tags } => tags
                .iter()
                .map(|(c, p)| set(&format!("tag.{c}"), p))
                .collect(),
        }
    }
}

/// `namespace:kind/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    /// In lower case, as fluxctl wrote it (`deployment`, `helmrelease`).
    pub kind: String,
    pub name: String,
}

impl Workload {
    pub fn parse(text: &str) -> Result<Workload, String> {
        let parsed = text.split_once(':').and_then(|(ns, rest)| {
            let (kind, name) = rest.split_once('/')?;
            Some((ns, kind, name))
        });
        match parsed {
            Some((ns, kind, name)) if !ns.is_empty() && !kind.is_empty() && !name.is_empty() => {
                Ok(Workload {
                    namespace: ns.into(),
                    kind: kind.to_ascii_lowercase(),
                    name: name.into(),
                })
            }
            _ => Err(format!(
                "workload {text:?} is not namespace:kind/name (shop:deployment/web)"
            )),
        }
    }

    /// This workload's manifest in the desired set.
    pub fn find<'a>(
        &self,
        manifests: &'a [Manifest],
        default_namespace: &str,
    ) -> Option<&'a Manifest> {
        manifests.iter().find(|m| {
            let ns = m.id.namespace.as_deref().unwrap_or(default_namespace);
            containers::is_workload(&m.id.api_version(), &m.id.kind)
                && m.id.kind.eq_ignore_ascii_case(&self.kind)
                && m.id.name == self.name
                && ns == self.namespace
        })
    }
}

/// The image edits `--update-image` makes to a workload: each container of
/// that repository moves to its tag; an error if none runs it.
pub fn release_edits(
    object: &Value,
    image: &str,
) -> Result<Vec<(containers::Path, String)>, String> {
    let wanted = ImageRef::parse(image)?;
    let tag = wanted.tag.clone().unwrap_or_default();
    let (list, _) = containers::containers(object);
    let edits: Vec<(containers::Path, String)> = list
        .iter()
        .filter(|c| c.image.canonical() == wanted.canonical())
        .flat_map(|c| containers::edits(c, &tag, object))
        .filter(|(path, value)| containers::at(object, path).as_str() != Some(value))
        .collect();
    if edits.is_empty()
        && !list
            .iter()
            .any(|c| c.image.canonical() == wanted.canonical())
    {
        return Err(format!(
            "no container of the workload runs {}",
            wanted.name()
        ));
    }
    Ok(edits)
}

/// Whether the object is locked, and by whom, as its annotations say.
pub fn lock_of(object: &Value) -> Option<policy::Lock> {
    let empty = serde_json::Map::new();
    let annotations = object["metadata"]["annotations"]
        .as_object()
        .unwrap_or(&empty);
    policy::Policy::from_annotations(annotations).0.locked
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn requests_read_as_fluxctl_wrote_them() {
        let r: Request = serde_json::from_value(json!({
            "workload": "shop:Deployment/web", "action": "policy",
            "tags": {"web": "semver:~1"}}))
        .unwrap();
        assert!(r.check().is_ok());
        assert_eq!(
            Workload::parse(&r.workload).unwrap(),
            Workload {
                namespace: "shop".into(),
                kind: "deployment".into(),
                name: "web".into()
            }
        );
        assert_eq!(
            r.annotations("jane"),
            [(
                "fluxcd.io/tag.web".to_string(),
                Some("semver:~1".to_string())
            )]
        );
        let lock = Request {
            workload: "shop:deployment/web".into(),
            action: Action::Lock {
                message: Some("incident 42".into()),
            },
            dry_run: false,
            sync_set: String::new(),
            namespace: String::new(),
        };
        assert_eq!(lock.annotations("jane")[1].1.as_deref(), Some("jane"));
        assert_eq!(
            lock.message(&[]),
            "Locked: shop:deployment/web\n\nincident 42"
        );
        for (bad, why) in [
            (
                json!({"workload": "web", "action": "automate"}),
                "namespace:kind/name",
            ),
            (
                json!({"workload": "a:deployment/b", "action": "release", "image": "reg.io/web"}),
                "name the tag",
            ),
            (
                json!({"workload": "a:deployment/b", "action": "policy", "tags": {"w": "regex:(["}}),
                "--tag w=",
            ),
            (
                json!({"workload": "a:deployment/b", "action": "policy", "tags": {"a b": "glob:*"}}),
                "not a container name",
            ),
        ] {
            let r: Request = serde_json::from_value(bad).unwrap();
            let e = r.check().unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn a_release_moves_the_containers_of_that_image() {
        let object = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"template": {"spec": {"containers": [
                {"name": "web", "image": "reg.io/web:1.0"},
                {"name": "side", "image": "reg.io/side:1.0"}]}}}});
        let edits = release_edits(&object, "reg.io/web:1.2").unwrap();
        assert_eq!(edits.len(), 1);
        assert_eq!(edits[0].1, "reg.io/web:1.2");
        assert!(release_edits(&object, "reg.io/web:1.0").unwrap().is_empty());
        let e = release_edits(&object, "reg.io/other:1").unwrap_err();
        assert!(e.contains("no container"), "{e}");
    }
}
