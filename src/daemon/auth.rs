//! Who may ask the daemon's HTTP API for a sync: a bearer token in, the
//! Kubernetes API's decision out (TokenReview, then SubjectAccessReview for
//! `update` on the daemon's state ConfigMap — what `tidegate sync` needs).

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;

use crate::cluster::state::StateRef;

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Unauthenticated,
    /// Authenticated as this user, who may not update the state object.
    Forbidden(String),
}

pub async fn may_request_sync(
    client: &kube::Client,
    state: &StateRef,
    token: &str,
) -> Result<Decision, kube::Error> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_string()),
            ..TokenReviewSpec::default()
        },
        ..TokenReview::default()
    };
    let reviewed = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    let Some(status) = reviewed.status.filter(|s| s.authenticated == Some(true)) else {
        return Ok(Decision::Unauthenticated);
    };
    let user = status.user.unwrap_or_default();
    let name = user.username.clone().unwrap_or_default();
    let attributes = ResourceAttributes {
        namespace: Some(state.namespace.clone()),
        verb: Some("update".into()),
        resource: Some("configmaps".into()),
        name: Some(state.name()),
        ..ResourceAttributes::default()
    };
    Ok(if may(client, user, attributes).await? {
        Decision::Allowed
    } else {
        Decision::Forbidden(name)
    })
}

/// Whether `user`, as the API server authenticated them, may do what
/// `attributes` say (a SubjectAccessReview).
pub async fn may(
    client: &kube::Client,
    user: UserInfo,
    attributes: ResourceAttributes,
) -> Result<bool, kube::Error> {
    let access = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: user.username,
            groups: user.groups,
            uid: user.uid,
            extra: user.extra,
            resource_attributes: Some(attributes),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let decided = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &access)
        .await?;
    Ok(decided.status.is_some_and(|s| s.allowed))
}
