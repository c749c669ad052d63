//! Image references as workloads write them: `[registry/]path[:tag][@digest]`,
//! with Docker's defaults (`nginx` is `docker.io/library/nginx`). Pure.

use std::fmt;

/// Docker Hub's name for itself in references.
pub const DOCKER_HUB: &str = "docker.io";

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    /// The registry as written; `None` for Docker Hub by default.
    pub registry: Option<String>,
    /// The repository path as written (`nginx`, `team/app`).
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    pub fn parse(text: &str) -> Result<ImageRef, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("an empty image reference".into());
        }
        let (name, digest) = match text.split_once('@') {
            Some((n, d)) => {
                if !d.contains(':') {
                    return Err(format!("{text:?}: the digest after @ is not algorithm:hex"));
                }
                (n, Some(d.to_string()))
            }
            None => (text, None),
        };
        // A tag follows the last ':' after the last '/'; a ':' before it is
        // a registry's port.
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (
                &name[..last_slash + i],
                Some(name[last_slash + i + 1..].to_string()),
            ),
            None => (name, None),
        };
        if let Some(tag) = &tag
            && !valid_tag(tag)
        {
            return Err(format!("{text:?}: {tag:?} is not a valid tag"));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (Some(first.to_string()), rest)
            }
            _ => (None, name),
        };
        if path.is_empty()
            || !path.split('/').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| {
                        b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || matches!(b, b'.' | b'_' | b'-')
                    })
            })
        {
            return Err(format!(
                "{text:?}: the repository {path:?} must be lower-case letters, digits, '.', '_', '-' and '/'"
            ));
        }
        Ok(ImageRef {
            registry,
            path: path.to_string(),
            tag,
            digest,
        })
    }

    /// The registry's host (and port): `docker.io` by default.
    pub fn host(&self) -> &str {
        self.registry.as_deref().unwrap_or(DOCKER_HUB)
    }

    /// The repository's path in its registry: `library/nginx` for `nginx`.
    pub fn repository(&self) -> String {
        if self.host() == DOCKER_HUB && !self.path.contains('/') {
            format!("library/{}", self.path)
        } else {
            self.path.clone()
        }
    }

    /// One name per repository however it is written: `docker.io/library/nginx`.
    pub fn canonical(&self) -> String {
        format!("{}/{}", self.host(), self.repository())
    }

    /// The name as written, without tag or digest.
    pub fn name(&self) -> String {
        match &self.registry {
            Some(r) => format!("{r}/{}", self.path),
            None => self.path.clone(),
        }
    }

    /// The name as written, with `tag` (and no digest).
    pub fn with_tag(&self, tag: &str) -> String {
        format!("{}:{tag}", self.name())
    }
}

/// As written: `registry/path:tag@digest`.
impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// A tag: up to 128 of letters, digits, `_`, `.`, `-`, not starting with
/// `.` or `-`.
pub fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_defaults_and_registries_with_ports() {
        let nginx = ImageRef::parse("nginx:1.25").unwrap();
        assert_eq!(nginx.canonical(), "docker.io/library/nginx");
        assert_eq!(nginx.tag.as_deref(), Some("1.25"));
        assert_eq!(nginx.with_tag("1.26"), "nginx:1.26");

        let local = ImageRef::parse("localhost:5000/team/app").unwrap();
        assert_eq!(local.host(), "localhost:5000");
        assert_eq!(local.repository(), "team/app");
        assert_eq!(local.tag, None);
        assert_eq!(local.with_tag("v2"), "localhost:5000/team/app:v2");

        let pinned = ImageRef::parse("ghcr.io/org/tool:1.0@sha256:abc").unwrap();
        assert_eq!(pinned.digest.as_deref(), Some("sha256:abc"));
        assert_eq!(pinned.to_string(), "ghcr.io/org/tool:1.0@sha256:abc");
        assert_eq!(pinned.with_tag("1.1"), "ghcr.io/org/tool:1.1");

        let hub_org = ImageRef::parse("fluxcd/flux:1.21.0").unwrap();
        assert_eq!(hub_org.canonical(), "docker.io/fluxcd/flux");
    }

    #[test]
    fn references_that_do_not_parse_say_why() {
        for bad in [
            "",
            "Nginx:1",
            "app:",
            "app:-x",
            "app@sha256",
            "reg.io//x",
            "a b",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?}");
        }
    }
}
