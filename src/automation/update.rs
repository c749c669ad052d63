//! One automation cycle's decisions: the automated containers of the
//! desired set, the tag each moves to given what the registries list, the
//! edits per file, and the commit message as Flux v1 wrote it. Pure: the
//! registry answers come in as data.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use super::containers::{self, Container, Location};
use super::edit::Edit;
use super::image::{self, ImageRef};
use super::image_policy::{self, ImagePolicy};
use super::markers::{self, Field};
use super::policy::{self, Pattern, Policy};
use crate::model::record::{ImageStatus, MAX_LISTED_IMAGES, MAX_LISTED_TAGS};
use crate::render::manifest::{document_ranges, parse_documents};
use crate::render::{Manifest, ParseLimits};

/// Why an automated workload a build made is not updated by its annotations.
const BUILT: &str = "is built by kustomize, so automation cannot edit it where it is written: \
     mark its image with a setter marker ({\"$imagepolicy\": \"NAMESPACE:NAME\"}) in the kustomization's images:, \
     or generate it with a .flux.yaml patchUpdated, whose patch file automation writes";

/// A container automation may move.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The object, as people read it (`apps/v1 Deployment shop/web`).
    pub object: String,
    /// As fluxctl named it (`shop:deployment/web`); a marker as `object`.
    pub workload: String,
    /// Its namespace: whose pull secrets its images are read with.
    pub namespace: String,
    pub file: PathBuf,
    pub document: usize,
    pub container: Container,
    pub pattern: Pattern,
}

/// Something in Git automation cannot use, naming what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub object: String,
    pub file: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            crate::model::shown(&self.file),
            self.object,
            self.reason
        )
    }
}

/// The automated, unlocked containers of the desired set in namespaces
/// `allowed` (empty: any), and what keeps others from being read (a bad
/// annotation, an image that does not parse). Objects of a `…List` are
/// left alone: their paths are not the file's.
pub fn candidates(
    manifests: &[Manifest],
    default_namespace: &str,
    allowed: &[String],
) -> (Vec<Candidate>, Vec<Problem>) {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    let mut per_document: BTreeMap<(&PathBuf, usize), usize> = BTreeMap::new();
    for m in manifests {
        *per_document.entry((&m.file, m.index)).or_default() += 1;
    }
    for m in manifests {
        if per_document[&(&m.file, m.index)] > 1 {
            continue;
        }
        let object = m.object.value();
        let id = &m.id;
        let Some((namespace, policy, errors)) = automated(m, &object, default_namespace, allowed)
        else {
            continue;
        };
        let problem = |reason: String| Problem {
            object: id.to_string(),
            file: m.file.clone(),
            reason,
        };
        // Those a .flux.yaml generates move through its patch file.
        match m.built {
            None => {}
            Some(crate::render::Builder::FluxYaml) => continue,
            Some(crate::render::Builder::Kustomize) => {
                problems.push(problem(BUILT.into()));
                continue;
            }
        }
        problems.extend(errors.iter().map(|e| problem(e.to_string())));
        let broken: Vec<&str> = errors
            .iter()
            .filter_map(|e| tag_annotation_container(&e.annotation))
            .collect();
        let (list, bad) = containers::containers(&object);
        problems.extend(
            bad.into_iter()
                .map(|e| problem(format!("container {}: {}", e.container, e.reason))),
        );
        for container in list {
            // A container whose filter cannot be read is left alone.
            if broken.contains(&container.name.as_str()) {
                continue;
            }
            if container.image.digest.is_some() {
                continue;
            }
            found.push(Candidate {
                object: id.to_string(),
                workload: format!("{namespace}:{}/{}", id.kind.to_lowercase(), id.name),
                namespace: namespace.clone(),
                file: m.file.clone(),
                document: m.index,
                pattern: policy.pattern(&container.name),
                container,
            });
        }
    }
    (found, problems)
}

/// The namespace and policy of an automated workload in the namespaces
/// `allowed` (empty: any), and what of its annotations cannot be read.
pub(super) fn automated(
    m: &Manifest,
    object: &Value,
    default_namespace: &str,
    allowed: &[String],
) -> Option<(String, Policy, Vec<super::policy::PolicyError>)> {
    let id = &m.id;
    let namespace = id
        .namespace
        .clone()
        .unwrap_or_else(|| default_namespace.to_string());
    if !allowed.is_empty() && !allowed.contains(&namespace) {
        return None;
    }
    if !containers::is_workload(&id.api_version(), &id.kind) {
        return None;
    }
    let empty = serde_json::Map::new();
    let annotations = object["metadata"]["annotations"]
        .as_object()
        .unwrap_or(&empty);
    let (policy, errors) = Policy::from_annotations(annotations);
    policy.is_automated().then_some((namespace, policy, errors))
}

/// What setter markers name: the candidates, the documents of the marked
/// files (what an edit is checked against), the policies read, and what
/// cannot be used.
#[derive(Debug, Default)]
pub struct Marked {
    pub candidates: Vec<Candidate>,
    pub objects: BTreeMap<(PathBuf, usize), Value>,
    pub policies: Vec<ImagePolicy>,
    pub problems: Vec<Problem>,
}

/// The values `$imagepolicy` markers in `files` (path, text) set, each
/// moved as its `ImagePolicy` (of `policies`, the documents render took
/// out) chooses; policies outside the namespaces `allowed` (empty: any)
/// are left alone.
pub fn marked(
    files: &[(PathBuf, String)],
    policies: &[Manifest],
    default_namespace: &str,
    allowed: &[String],
) -> Marked {
    let mut out = Marked::default();
    read_policies(&mut out, policies, default_namespace, allowed);
    for (file, text) in files {
        let (setters, errors) = markers::setters(text);
        let problem = |object: String, reason: String| Problem {
            object,
            file: file.clone(),
            reason,
        };
        out.problems.extend(
            errors
                .into_iter()
                .map(|e| problem("$imagepolicy marker".into(), e.to_string())),
        );
        if setters.is_empty() {
            continue;
        }
        let documents = each_document(text);
        for s in setters {
            let object = format!("$imagepolicy {}:{} (line {})", s.namespace, s.name, s.line);
            let policy = out
                .policies
                .iter()
                .find(|p| p.namespace == s.namespace && p.name == s.name);
            let Some(policy) = policy else {
                if allowed.is_empty() || allowed.contains(&s.namespace) {
                    let reason = format!(
                        "no {} {}/{} in the synced paths",
                        image_policy::SHOWN,
                        s.namespace,
                        s.name
                    );
                    out.problems.push(problem(object, reason));
                }
                continue;
            };
            let Some(Some(document)) = documents.get(s.document) else {
                out.problems.push(problem(
                    object,
                    "the document it is in cannot be read".into(),
                ));
                continue;
            };
            // The object the marker is in must be one automation may edit.
            match marker_allowed(document, default_namespace, allowed) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(reason) => {
                    out.problems.push(problem(object, reason));
                    continue;
                }
            }
            match setter_container(policy, &s, document) {
                Ok(container) => out.candidates.push(Candidate {
                    workload: object.clone(),
                    object,
                    namespace: policy.namespace.clone(),
                    file: file.clone(),
                    document: s.document,
                    container,
                    pattern: Pattern::Policy(Box::new(policy.rule.clone())),
                }),
                Err(reason) => {
                    out.problems.push(problem(object, reason));
                    continue;
                }
            }
            out.objects
                .insert((file.clone(), s.document), document.clone());
        }
    }
    out
}

/// Whether a marker in `document` is followed under the namespaces
/// `allowed` (empty: any): in an object there, yes; in a file that is no
/// object (a kustomization), whose objects' namespaces cannot be known
/// from it, an error.
fn marker_allowed(
    document: &Value,
    default_namespace: &str,
    allowed: &[String],
) -> Result<bool, String> {
    if allowed.is_empty() {
        return Ok(true);
    }
    if !document["kind"].is_string() {
        return Err("with --k8s-allow-namespace, only markers in objects are followed: this file is none, so the namespace of what it sets is not known".into());
    }
    let namespace = document["metadata"]["namespace"]
        .as_str()
        .unwrap_or(default_namespace);
    Ok(allowed.iter().any(|a| a == namespace))
}

/// The policies in the allowed namespaces; what cannot be read, named.
fn read_policies(
    out: &mut Marked,
    policies: &[Manifest],
    default_namespace: &str,
    allowed: &[String],
) {
    for m in policies {
        match ImagePolicy::from_object(&m.object.value(), default_namespace) {
            Ok(p) if allowed.is_empty() || allowed.contains(&p.namespace) => out.policies.push(p),
            Ok(_) => {}
            Err(reason) => out.problems.push(Problem {
                object: m.id.to_string(),
                file: m.file.clone(),
                reason,
            }),
        }
    }
}

/// Each document of a file as `document_ranges` counts them (empty ones
/// too), `None` where one cannot be read.
pub(super) fn each_document(text: &str) -> Vec<Option<Value>> {
    document_ranges(text)
        .into_iter()
        .map(|r| {
            parse_documents(&text[r], &ParseLimits::default())
                .ok()
                .and_then(|mut d| d.pop())
        })
        .collect()
}

/// What a setter sets, as a container: the policy's image, with the tag
/// the marked value holds (none if it names another image).
fn setter_container(
    policy: &ImagePolicy,
    s: &markers::Setter,
    document: &Value,
) -> Result<Container, String> {
    let current = containers::at(document, &s.path)
        .as_str()
        .ok_or("the marked value is not a string")?;
    let mut image = policy.image.clone();
    let location = match s.field {
        Field::Whole => {
            let now = ImageRef::parse(current)?;
            let same = now.canonical() == image.canonical();
            image.tag = now.tag.filter(|_| same);
            Location::Whole(s.path.clone())
        }
        Field::Tag => {
            image.tag = Some(current.to_string()).filter(|t| image::valid_tag(t));
            Location::Tag(s.path.clone())
        }
        Field::Name => Location::Name(s.path.clone()),
    };
    Ok(Container {
        name: policy.name.clone(),
        image,
        location,
    })
}

/// The container a `tag.<container>` annotation is for.
fn tag_annotation_container(annotation: &str) -> Option<&str> {
    policy::PREFIXES
        .iter()
        .find_map(|p| annotation.strip_prefix(p)?.strip_prefix("tag."))
        .or_else(|| annotation.strip_prefix(policy::FILTER_PREFIX))
}

/// One container to move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub object: String,
    pub file: PathBuf,
    pub container: String,
    pub from: String,
    /// The new reference, as it is written.
    pub to: String,
    pub edits: Vec<Edit>,
    /// The object the edits were decided on (none for a marker in a file
    /// that is no object): what the document edited must still be.
    pub identity: Option<super::edit::Identity>,
}

/// Under which key a candidate's tags are looked up: its repository as
/// read with its namespace's credentials.
pub fn tags_key(namespace: &str, canonical: &str) -> String {
    format!("{namespace} {canonical}")
}

/// The tag each candidate moves to, given the tags of each repository
/// (by [`tags_key`]: `(tag, when built)`); a candidate whose repository
/// is not known, or whose pick is its tag already, does not move.
pub fn updates(
    candidates: &[Candidate],
    tags: &BTreeMap<String, Vec<(String, Option<i64>)>>,
    objects: &BTreeMap<(PathBuf, usize), Value>,
) -> Vec<Update> {
    let mut out = Vec::new();
    for c in candidates {
        let image = &c.container.image;
        let Some(listed) = tags.get(&tags_key(&c.namespace, &image.canonical())) else {
            continue;
        };
        let Some(pick) = policy::pick(&c.pattern, listed) else {
            continue;
        };
        if image.tag.as_deref() == Some(pick) {
            continue;
        }
        let Some(object) = objects.get(&(c.file.clone(), c.document)) else {
            continue;
        };
        let edits: Vec<Edit> = containers::edits(&c.container, pick, object)
            .into_iter()
            // What holds its new value already is not edited.
            .filter(|(path, value)| containers::at(object, path).as_str() != Some(value))
            .map(|(path, value)| Edit {
                document: c.document,
                path,
                value,
            })
            .collect();
        if edits.is_empty() {
            continue;
        }
        out.push(Update {
            object: c.object.clone(),
            file: c.file.clone(),
            container: c.container.name.clone(),
            from: image.to_string(),
            to: ImageRef {
                tag: Some(pick.to_string()),
                digest: None,
                ..image.clone()
            }
            .to_string(),
            edits,
            identity: super::edit::identity_of(object),
        });
    }
    out
}

/// What each candidate runs (once the cycle's commit is synced: what
/// `moved` it to) and may move to, for `tidegate list-images`; the first
/// [`MAX_LISTED_IMAGES`].
pub fn image_statuses(
    candidates: &[Candidate],
    tags: &BTreeMap<String, Vec<(String, Option<i64>)>>,
    moved: &[Update],
) -> Vec<ImageStatus> {
    candidates
        .iter()
        .take(MAX_LISTED_IMAGES)
        .map(|c| {
            let current = moved
                .iter()
                .find(|u| u.object == c.object && u.container == c.container.name)
                .map_or_else(|| c.container.image.to_string(), |u| u.to.clone());
            let listed = tags
                .get(&tags_key(&c.namespace, &c.container.image.canonical()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            ImageStatus {
                workload: c.workload.clone(),
                container: c.container.name.clone(),
                current,
                available: policy::ranked(&c.pattern, listed)
                    .into_iter()
                    .take(MAX_LISTED_TAGS)
                    .map(str::to_string)
                    .collect(),
            }
        })
        .collect()
}

/// The commit message for a cycle's updates, as Flux v1 wrote it:
/// `Auto-release <image>`, or `Auto-release multiple (N) images` and a
/// line ` - <image>` for each; `[ci skip]` after a blank line if asked.
pub fn commit_message(updates: &[Update], ci_skip: bool) -> String {
    let mut images: Vec<&str> = updates.iter().map(|u| u.to.as_str()).collect();
    images.sort_unstable();
    images.dedup();
    let mut message = match images.as_slice() {
        [] => "Auto-release (no images)\n".to_string(),
        [one] => format!("Auto-release {one}"),
        many => {
            let mut m = format!("Auto-release multiple ({}) images\n\n", many.len());
            for image in many {
                m.push_str(&format!(" - {image}\n"));
            }
            m
        }
    };
    if ci_skip {
        message.push_str("\n\n[ci skip]");
    }
    message
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::{Json, ObjectRef};

    fn manifest(file: &str, index: usize, object: Value) -> Manifest {
        let meta = &object["metadata"];
        Manifest {
            file: file.into(),
            index,
            id: ObjectRef::new(
                object["apiVersion"].as_str().unwrap(),
                object["kind"].as_str().unwrap(),
                meta["namespace"].as_str(),
                meta["name"].as_str().unwrap(),
            ),
            checksum: String::new(),
            built: None,
            object: Json::new(&object),
        }
    }

    fn deployment(name: &str, annotations: Value, images: &[(&str, &str)]) -> Value {
        let containers: Vec<Value> = images
            .iter()
            .map(|(n, i)| json!({"name": n, "image": i}))
            .collect();
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "shop", "annotations": annotations},
            "spec": {"template": {"spec": {"containers": containers}}}})
    }

    fn tags(list: &[(&str, &str, Option<i64>)]) -> BTreeMap<String, Vec<(String, Option<i64>)>> {
        let mut out: BTreeMap<String, Vec<(String, Option<i64>)>> = BTreeMap::new();
        for (repo, tag, created) in list {
            out.entry(tags_key("shop", repo))
                .or_default()
                .push((tag.to_string(), *created));
        }
        out
    }

    #[test]
    fn automated_containers_move_and_the_rest_stay() {
        let manifests = vec![
            manifest(
                "web.yaml",
                0,
                deployment(
                    "web",
                    json!({"fluxcd.io/automated": "true", "fluxcd.io/tag.web": "semver:~1.2"}),
                    &[("web", "reg.io/web:1.2.0"), ("side", "reg.io/side:a")],
                ),
            ),
            manifest(
                "web.yaml",
                1,
                deployment(
                    "locked",
                    json!({"fluxcd.io/automated": "true", "fluxcd.io/locked": "true"}),
                    &[("web", "reg.io/web:1.2.0")],
                ),
            ),
            manifest(
                "manual.yaml",
                0,
                deployment("manual", json!({}), &[("web", "reg.io/web:1.2.0")]),
            ),
        ];
        let (found, problems) = candidates(&manifests, "default", &[]);
        assert!(problems.is_empty(), "{problems:?}");
        let names: Vec<(&str, &str)> = found
            .iter()
            .map(|c| (c.object.as_str(), c.container.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("apps/v1 Deployment shop/web", "web"),
                ("apps/v1 Deployment shop/web", "side")
            ]
        );
        let listed = tags(&[
            ("reg.io/web", "1.2.0", Some(1)),
            ("reg.io/web", "1.2.5", Some(2)),
            ("reg.io/web", "1.3.0", Some(3)),
            ("reg.io/side", "a", Some(1)),
        ]);
        let objects: BTreeMap<(PathBuf, usize), Value> = manifests
            .iter()
            .map(|m| ((m.file.clone(), m.index), m.object.value()))
            .collect();
        let moved = updates(&found, &listed, &objects);
        assert_eq!(moved.len(), 1, "side is at its newest already: {moved:?}");
        assert_eq!(moved[0].to, "reg.io/web:1.2.5");
        assert_eq!(moved[0].edits[0].value, "reg.io/web:1.2.5");
        assert_eq!(
            commit_message(&moved, false),
            "Auto-release reg.io/web:1.2.5"
        );
    }

    #[test]
    fn workloads_outside_the_allowed_namespaces_and_in_lists_are_left_alone() {
        let automated = json!({"fluxcd.io/automated": "true"});
        let web = deployment("web", automated.clone(), &[("web", "reg.io/web:1")]);
        let mut elsewhere = web.clone();
        elsewhere["metadata"]["namespace"] = "other".into();
        let manifests = vec![
            manifest("web.yaml", 0, web.clone()),
            manifest("other.yaml", 0, elsewhere),
            // Two objects of one document: a List's items.
            manifest(
                "list.yaml",
                0,
                deployment("a", automated.clone(), &[("a", "reg.io/a:1")]),
            ),
            manifest(
                "list.yaml",
                0,
                deployment("b", automated, &[("b", "reg.io/b:1")]),
            ),
        ];
        let (found, _) = candidates(&manifests, "default", &["shop".to_string()]);
        let objects: Vec<&str> = found.iter().map(|c| c.object.as_str()).collect();
        assert_eq!(objects, ["apps/v1 Deployment shop/web"]);
        assert_eq!(found[0].namespace, "shop");
    }

    #[test]
    fn a_bad_filter_names_the_annotation_and_leaves_its_container_alone() {
        let manifests = vec![manifest(
            "web.yaml",
            0,
            deployment(
                "web",
                json!({"fluxcd.io/automated": "true", "fluxcd.io/tag.web": "regex:(["}),
                &[("web", "reg.io/web:1"), ("side", "Bad Image")],
            ),
        )];
        let (found, problems) = candidates(&manifests, "default", &[]);
        assert!(found.is_empty());
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            shown[0]
                .starts_with("web.yaml: apps/v1 Deployment shop/web: annotation fluxcd.io/tag.web"),
            "{shown:?}"
        );
        assert!(shown[1].contains("container side"), "{shown:?}");
    }

    #[test]
    fn a_helm_release_file_is_edited_where_its_values_say() {
        let text = "\
# The shop's chart.
apiVersion: helm.fluxcd.io/v1
kind: HelmRelease
metadata:
  name: shop
  namespace: shop
  annotations:
    fluxcd.io/automated: \"true\"
    filter.fluxcd.io/chart-image: semver:~2
    fluxcd.io/tag.api: glob:main-*
spec:
  chart: {git: git@example.com:org/charts, path: shop}
  values:
    image: reg.io/shop   # the web tier
    tag: \"2.0.0\"
    api:
      image:
        repository: reg.io/api
        tag: main-aaa
";
        let object: Value = serde_saphyr::from_str(text).unwrap();
        let manifests = vec![manifest("shop.yaml", 0, object.clone())];
        let (found, problems) = candidates(&manifests, "default", &[]);
        assert!(problems.is_empty(), "{problems:?}");
        let listed = tags(&[
            ("reg.io/shop", "2.0.0", Some(1)),
            ("reg.io/shop", "2.3.1", Some(2)),
            ("reg.io/shop", "3.0.0", Some(3)),
            ("reg.io/api", "main-aaa", Some(1)),
            ("reg.io/api", "main-bbb", Some(5)),
            ("reg.io/api", "dev-ccc", Some(9)),
        ]);
        let objects = [(("shop.yaml".into(), 0), object)].into_iter().collect();
        let moved = updates(&found, &listed, &objects);
        let edits: Vec<Edit> = moved.iter().flat_map(|u| u.edits.clone()).collect();
        let out = crate::automation::edit::apply(text, &edits).unwrap();
        assert_eq!(
            out,
            text.replace("tag: \"2.0.0\"", "tag: \"2.3.1\"")
                .replace("tag: main-aaa", "tag: main-bbb")
        );
        assert_eq!(
            commit_message(&moved, false),
            "Auto-release multiple (2) images\n\n - reg.io/api:main-bbb\n - reg.io/shop:2.3.1\n"
        );
    }

    #[test]
    fn markers_move_as_their_image_policy_chooses_in_any_yaml_file() {
        // A header document and a leading `---`: documents are counted as
        // render counts them.
        let deploy = r#"# The web tier.
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  template:
    spec:
      containers:
      - name: web
        image: reg.io/web:1.0.0 # {"$imagepolicy": "shop:web"}
      - name: old
        image: reg.io/web:0.9 # {"$imagepolicy": "shop:missing"}
"#;
        let kustomization = r#"# The shop, with its images.
resources: [web.yaml]
images:
- name: api
  newName: reg.io/api # {"$imagepolicy": "shop:api:name"}
  newTag: "main-1"    # {"$imagepolicy": "shop:api:tag"}
"#;
        let policy = |name: &str, spec: Value| {
            manifest(
                "policies.yaml",
                0,
                json!({"apiVersion": "tidegate.dev/v1", "kind": "ImagePolicy",
                    "metadata": {"name": name, "namespace": "shop"}, "spec": spec}),
            )
        };
        let policies = vec![
            policy(
                "web",
                json!({"image": "reg.io/web", "policy": {"semver": {"range": "^1"}}}),
            ),
            policy(
                "api",
                json!({"image": "reg.io/api",
                    "filterTags": {"pattern": "^main-(\\d+)$", "extract": "$1"},
                    "policy": {"numerical": {}}}),
            ),
            policy("broken", json!({"image": "reg.io/x"})),
        ];
        let files = vec![
            (PathBuf::from("web.yaml"), deploy.to_string()),
            (
                PathBuf::from("kustomization.yaml"),
                kustomization.to_string(),
            ),
        ];
        let marked = marked(&files, &policies, "default", &[]);
        let shown: Vec<String> = marked.problems.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(shown[0].contains("ImagePolicy shop/broken: spec.policy names no order"));
        assert!(shown[1].starts_with(
            "web.yaml: $imagepolicy shop:missing (line 13): no tidegate.dev/v1 ImagePolicy shop/missing"
        ));
        assert_eq!(marked.candidates.len(), 3);
        let listed = tags(&[
            ("reg.io/web", "1.0.0", None),
            ("reg.io/web", "1.4.2", None),
            ("reg.io/web", "2.0.0", None),
            ("reg.io/api", "main-1", None),
            ("reg.io/api", "main-10", None),
            ("reg.io/api", "main-9", None),
        ]);
        let moved = updates(&marked.candidates, &listed, &marked.objects);
        let to: Vec<&str> = moved.iter().map(|u| u.to.as_str()).collect();
        assert_eq!(
            to,
            ["reg.io/web:1.4.2", "reg.io/api:main-10"],
            "the name is what it was: not an update"
        );
        for (file, text) in &files {
            let edits: Vec<Edit> = moved
                .iter()
                .filter(|u| &u.file == file)
                .flat_map(|u| u.edits.clone())
                .collect();
            let out = crate::automation::edit::apply(text, &edits).unwrap();
            let expected = text
                .replace("web:1.0.0 #", "web:1.4.2 #")
                .replace("\"main-1\"", "\"main-10\"");
            assert_eq!(out, expected, "{}", file.display());
        }
    }

    #[test]
    fn a_marker_in_an_object_outside_the_allowed_namespaces_moves_nothing() {
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: dns, namespace: kube-system}\n\
            spec: {template: {spec: {containers: [{name: c, image: reg.io/web:1}]}}}\n";
        let text = text.replace(
            "image: reg.io/web:1}]}}}",
            "image: reg.io/web:1}]}}} # {\"$imagepolicy\": \"shop:web\"}",
        );
        let policy = manifest(
            "p.yaml",
            0,
            json!({"apiVersion": "tidegate.dev/v1", "kind": "ImagePolicy",
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"image": "reg.io/web", "policy": {"alphabetical": {}}}}),
        );
        let files = vec![(PathBuf::from("dns.yaml"), text)];
        let allowed = ["shop".to_string()];
        assert!(
            marked(&files, std::slice::from_ref(&policy), "default", &allowed)
                .candidates
                .is_empty()
        );
        assert_eq!(
            marked(&files, std::slice::from_ref(&policy), "default", &[])
                .candidates
                .len(),
            1
        );
        // A kustomization's marker: its objects' namespaces are not known.
        let kustomization =
            "images:\n- name: web\n  newTag: \"1\" # {\"$imagepolicy\": \"shop:web:tag\"}\n";
        let files = vec![(
            PathBuf::from("kustomization.yaml"),
            kustomization.to_string(),
        )];
        let refused = marked(&files, std::slice::from_ref(&policy), "default", &allowed);
        assert!(refused.candidates.is_empty());
        assert!(
            refused.problems[0]
                .reason
                .contains("only markers in objects"),
            "{:?}",
            refused.problems
        );
        assert_eq!(
            marked(&files, &[policy], "default", &[]).candidates.len(),
            1
        );
    }

    #[test]
    fn the_record_of_images_is_bounded() {
        let automated = json!({"fluxcd.io/automated": "true"});
        let manifests: Vec<Manifest> = (0..MAX_LISTED_IMAGES + 20)
            .map(|i| {
                let name = format!("w{i}");
                manifest(
                    "w.yaml",
                    i,
                    deployment(&name, automated.clone(), &[("c", "reg.io/c:1")]),
                )
            })
            .collect();
        let (found, _) = candidates(&manifests, "default", &[]);
        assert_eq!(found.len(), MAX_LISTED_IMAGES + 20);
        let listed = tags(&[("reg.io/c", "1", Some(1)), ("reg.io/c", "2", Some(2))]);
        let statuses = image_statuses(&found, &listed, &[]);
        assert_eq!(statuses.len(), MAX_LISTED_IMAGES);
        assert_eq!(statuses[0].available, ["2", "1"]);
    }

    #[test]
    fn commit_messages_as_flux_wrote_them() {
        let update = |to: &str| Update {
            object: String::new(),
            file: PathBuf::new(),
            container: String::new(),
            from: String::new(),
            to: to.into(),
            edits: Vec::new(),
            identity: None,
        };
        assert_eq!(
            commit_message(&[update("b:2"), update("a:1"), update("b:2")], true),
            "Auto-release multiple (2) images\n\n - a:1\n - b:2\n\n\n[ci skip]"
        );
        assert_eq!(
            commit_message(&[update("a:1")], true),
            "Auto-release a:1\n\n[ci skip]"
        );
    }
}
