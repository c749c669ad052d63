//! Image update automation: the policies of workloads as Flux v1 wrote
//! them in annotations (`policy`, with `semver` for its version
//! constraints), the containers and where their images are written
//! (`containers`, `image`), and the edit of a file that changes only those
//! bytes (`edit`); Flux v2's way too: `ImagePolicy` documents
//! (`image_policy`) named by setter markers in YAML files (`markers`); one
//! cycle's updates and commit message (`update`).

pub mod annotate;
pub mod cache;
pub mod containers;
pub mod credentials;
pub mod edit;
pub mod image;
pub mod image_policy;
pub mod markers;
pub mod patch_file;
pub mod policy;
pub mod request;
pub mod semver;
pub mod update;
