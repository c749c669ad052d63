//! The containers automation can move, found in an object as Git has it,
//! each with where its image is written (the YAML path of each scalar),
//! as Flux v1 found them: the containers and init containers of
//! Deployments, StatefulSets, DaemonSets and CronJobs, and the images of a
//! `helm.fluxcd.io/v1` HelmRelease's `spec.values`. Pure.

use serde_json::Value;

use super::image::ImageRef;

/// One step of a path into a YAML document.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Seg {
    Key(String),
    Index(usize),
}

pub type Path = Vec<Seg>;

/// `spec.values.image` as people read it.
pub fn shown(path: &Path) -> String {
    let mut text = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(k);
            }
            Seg::Index(i) => text.push_str(&format!("[{i}]")),
        }
    }
    text
}

/// Where one container's image is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// One scalar holding the whole reference.
    Whole(Path),
    /// A repository (maybe with its tag), and the tag and registry apart.
    Parts {
        repository: Path,
        tag: Option<Path>,
        registry: Option<Path>,
    },
    /// The tag alone, as a setter marker says (`…:tag`).
    Tag(Path),
    /// The repository alone, as a setter marker says (`…:name`).
    Name(Path),
}

/// A container and its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub name: String,
    pub image: ImageRef,
    pub location: Location,
}

/// A container whose image could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerError {
    pub container: String,
    pub reason: String,
}

/// The kinds automation moves: group, version, kind, resource.
pub const KINDS: [(&str, &str, &str, &str); 5] = [
    ("apps", "v1", "Deployment", "deployments"),
    ("apps", "v1", "StatefulSet", "statefulsets"),
    ("apps", "v1", "DaemonSet", "daemonsets"),
    ("batch", "v1", "CronJob", "cronjobs"),
    ("helm.fluxcd.io", "v1", "HelmRelease", "helmreleases"),
];

/// The kinds whose images automation moves.
pub fn is_workload(api_version: &str, kind: &str) -> bool {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    matches!(
        (group, kind),
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet")
            | ("batch", "CronJob")
            | ("helm.fluxcd.io", "HelmRelease")
    )
}

/// The containers of an object, in Flux v1's order (containers, then init
/// containers; for a HelmRelease `chart-image` first, then by key), and
/// an error for each whose image does not parse.
pub fn containers(object: &Value) -> (Vec<Container>, Vec<ContainerError>) {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    if !is_workload(api_version, kind) {
        return (Vec::new(), Vec::new());
    }
    let mut found = Found::default();
    if kind == "HelmRelease" {
        helm_release(object, &mut found);
    } else {
        let spec: &[&str] = match kind {
            "CronJob" => &["spec", "jobTemplate", "spec", "template", "spec"],
            _ => &["spec", "template", "spec"],
        };
        pod_spec(object, spec, &mut found);
    }
    (found.containers, found.errors)
}

#[derive(Default)]
struct Found {
    containers: Vec<Container>,
    errors: Vec<ContainerError>,
}

impl Found {
    fn add(&mut self, name: String, image: &str, location: Location) {
        match ImageRef::parse(image) {
            Ok(image) => {
                // An explicit mapping replaces what was found by name.
                self.containers.retain(|c| c.name != name);
                self.containers.push(Container {
                    name,
                    image,
                    location,
                });
            }
            Err(reason) => self.errors.push(ContainerError {
                container: name,
                reason,
            }),
        }
    }
}

fn keys(path: &[&str]) -> Path {
    path.iter().map(|k| Seg::Key(k.to_string())).collect()
}

/// The value at `path` (`null` where there is none).
pub fn at<'a>(value: &'a Value, path: &Path) -> &'a Value {
    path.iter().fold(value, |v, seg| match seg {
        Seg::Key(k) => &v[k.as_str()],
        Seg::Index(i) => &v[*i],
    })
}

fn pod_spec(object: &Value, spec: &[&str], found: &mut Found) {
    let spec = keys(spec);
    for list in ["containers", "initContainers"] {
        let mut list_path = spec.clone();
        list_path.push(Seg::Key(list.into()));
        let Some(items) = at(object, &list_path).as_array() else {
            continue;
        };
        for (i, c) in items.iter().enumerate() {
            let (Some(name), Some(image)) = (c["name"].as_str(), c["image"].as_str()) else {
                continue;
            };
            let mut path = list_path.clone();
            path.extend([Seg::Index(i), Seg::Key("image".into())]);
            found.add(name.to_string(), image, Location::Whole(path));
        }
    }
}

fn helm_release(object: &Value, found: &mut Found) {
    let values = keys(&["spec", "values"]);
    let Some(map) = at(object, &values).as_object() else {
        return;
    };
    if map.contains_key("image") {
        image_of(object, &values, "chart-image", found);
    }
    for (key, value) in map {
        if value.as_object().is_some_and(|m| m.contains_key("image")) {
            let mut under = values.clone();
            under.push(Seg::Key(key.clone()));
            image_of(object, &under, key, found);
        }
    }
    mapped(object, &values, found);
}

/// The image of a values map holding `image`: `image: repo:tag`, `image:
/// repo` with `tag` (and `registry`) beside it, or `image: {repository,
/// tag, registry}`. Tags and registries must be strings, as Flux v1 read them.
fn image_of(object: &Value, map: &Path, name: &str, found: &mut Found) {
    let child = |base: &Path, key: &str| {
        let mut p = base.clone();
        p.push(Seg::Key(key.into()));
        p
    };
    let image_path = child(map, "image");
    let (base, repository) = match at(object, &image_path) {
        Value::String(_) => (map.clone(), image_path),
        Value::Object(_) => (image_path.clone(), child(&image_path, "repository")),
        _ => return,
    };
    let Some(repo) = at(object, &repository).as_str() else {
        return;
    };
    let string_at = |key: &str| {
        let p = child(&base, key);
        at(object, &p).as_str().map(|s| (p, s.to_string()))
    };
    let tag = string_at("tag");
    let registry = string_at("registry");
    let mut text = repo.to_string();
    if let Some((_, r)) = &registry {
        text = format!("{r}/{text}");
    }
    if let Some((_, t)) = &tag {
        text = format!("{text}:{t}");
    }
    let location = match (&tag, &registry) {
        (None, None) => Location::Whole(repository),
        _ => Location::Parts {
            repository,
            tag: tag.map(|(p, _)| p),
            registry: registry.map(|(p, _)| p),
        },
    };
    found.add(name.to_string(), &text, location);
}

/// helm-operator's explicit mappings: `repository.fluxcd.io/<alias>` (and
/// `tag.`, `registry.`) name dot paths into `spec.values`.
fn mapped(object: &Value, values: &Path, found: &mut Found) {
    let Some(annotations) = object["metadata"]["annotations"].as_object() else {
        return;
    };
    for (key, value) in annotations {
        let (Some(alias), Some(path)) = (key.strip_prefix("repository.fluxcd.io/"), value.as_str())
        else {
            continue;
        };
        let dotted = |text: &str| {
            let mut p = values.clone();
            p.extend(text.split('.').map(|k| Seg::Key(k.to_string())));
            p
        };
        let part = |prefix: &str| {
            let path = annotations
                .get(&format!("{prefix}.fluxcd.io/{alias}"))?
                .as_str()?;
            let path = dotted(path);
            at(object, &path).as_str().map(|s| (path, s.to_string()))
        };
        let repository = dotted(path);
        let Some(repo) = at(object, &repository).as_str() else {
            found.errors.push(ContainerError {
                container: alias.to_string(),
                reason: format!("{key}: spec.values.{path} is not a string in the HelmRelease"),
            });
            continue;
        };
        let (tag, registry) = (part("tag"), part("registry"));
        let mut text = repo.to_string();
        if let Some((_, r)) = &registry {
            text = format!("{r}/{text}");
        }
        if let Some((_, t)) = &tag {
            text = format!("{text}:{t}");
        }
        let location = Location::Parts {
            repository,
            tag: tag.map(|(p, _)| p),
            registry: registry.map(|(p, _)| p),
        };
        found.add(alias.to_string(), &text, location);
    }
}

/// The scalars to write, and their new values, to move a container to `tag`.
pub fn edits(container: &Container, tag: &str, object: &Value) -> Vec<(Path, String)> {
    match &container.location {
        Location::Whole(path) => vec![(path.clone(), container.image.with_tag(tag))],
        Location::Tag(path) => vec![(path.clone(), tag.to_string())],
        Location::Name(path) => vec![(path.clone(), container.image.name())],
        Location::Parts {
            tag: Some(path), ..
        } => vec![(path.clone(), tag.to_string())],
        Location::Parts {
            repository,
            tag: None,
            ..
        } => {
            // The repository scalar holds the tag too: keep what it names.
            let written = at(object, repository).as_str().unwrap_or_default();
            let name = match ImageRef::parse(written) {
                Ok(r) => r.name(),
                Err(_) => written.to_string(),
            };
            vec![(repository.clone(), format!("{name}:{tag}"))]
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn names(object: &Value) -> Vec<(String, String)> {
        let (found, errors) = containers(object);
        assert!(errors.is_empty(), "{errors:?}");
        found
            .into_iter()
            .map(|c| (c.name, c.image.to_string()))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn containers_then_init_containers_of_each_workload_kind() {
        let pod = json!({"containers": [{"name": "web", "image": "nginx:1.25"}],
                         "initContainers": [{"name": "migrate", "image": "reg.io/tool:2"}]});
        let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "spec": {"template": {"spec": pod}}});
        assert_eq!(
            names(&deployment),
            pairs(&[("web", "nginx:1.25"), ("migrate", "reg.io/tool:2")])
        );
        let (found, _) = containers(&deployment);
        assert_eq!(
            found[1].location,
            Location::Whole(
                keys(&["spec", "template", "spec", "initContainers"])
                    .into_iter()
                    .chain([Seg::Index(0), Seg::Key("image".into())])
                    .collect()
            )
        );
        let cron = json!({"apiVersion": "batch/v1", "kind": "CronJob",
            "spec": {"jobTemplate": {"spec": {"template": {"spec": pod}}}}});
        assert_eq!(names(&cron).len(), 2);
        let service =
            json!({"apiVersion": "v1", "kind": "Service", "spec": {"template": {"spec": pod}}});
        assert!(names(&service).is_empty());
    }

    #[test]
    fn helm_release_values_in_each_form_flux_read() {
        let release = json!({
            "apiVersion": "helm.fluxcd.io/v1", "kind": "HelmRelease",
            "metadata": {"annotations": {
                "repository.fluxcd.io/worker": "jobs.runner.repo",
                "tag.fluxcd.io/worker": "jobs.runner.version",
            }},
            "spec": {"values": {
                "image": "ghcr.io/org/app", "tag": "1.0.0",
                "api": {"image": {"repository": "org/api", "tag": "2.1", "registry": "reg.io"}},
                "sidecar": {"image": "busybox:1.36"},
                "jobs": {"runner": {"repo": "org/runner", "version": "0.3"}},
                "plain": {"replicas": 2},
            }}
        });
        assert_eq!(
            names(&release),
            pairs(&[
                ("chart-image", "ghcr.io/org/app:1.0.0"),
                ("api", "reg.io/org/api:2.1"),
                ("sidecar", "busybox:1.36"),
                ("worker", "org/runner:0.3"),
            ])
        );
        let (found, _) = containers(&release);
        let edit = |name: &str, tag: &str| {
            let c = found.iter().find(|c| c.name == name).unwrap();
            edits(c, tag, &release)
                .into_iter()
                .map(|(p, v)| (shown(&p), v))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            edit("chart-image", "1.1.0"),
            [("spec.values.tag".into(), "1.1.0".into())]
        );
        assert_eq!(
            edit("api", "2.2"),
            [("spec.values.api.image.tag".into(), "2.2".into())]
        );
        assert_eq!(
            edit("sidecar", "1.37"),
            [("spec.values.sidecar.image".into(), "busybox:1.37".into())]
        );
        assert_eq!(
            edit("worker", "0.4"),
            [("spec.values.jobs.runner.version".into(), "0.4".into())]
        );
    }

    #[test]
    fn a_number_for_a_tag_is_not_a_tag_and_a_bad_image_is_named() {
        let release = json!({
            "apiVersion": "helm.fluxcd.io/v1", "kind": "HelmRelease",
            "spec": {"values": {"image": "org/app", "tag": 1.2}}
        });
        assert_eq!(names(&release), pairs(&[("chart-image", "org/app")]));
        let bad = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "Not An Image"}]}}}});
        let (found, errors) = containers(&bad);
        assert!(found.is_empty());
        assert_eq!(errors[0].container, "web");
    }
}
