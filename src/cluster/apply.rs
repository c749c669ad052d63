//! Writes to one object: server-side apply (real or dry-run), delete, and
//! delete-then-recreate for changes the API server cannot make in place.

use std::time::Duration;

use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PropagationPolicy};

use super::fence::WriteError;
use super::{Cluster, FIELD_MANAGER, Resolved};
use crate::model::ObjectRef;

/// How long a recreate waits for the old object to be gone.
const RECREATE_TIMEOUT: Duration = Duration::from_secs(120);

/// True for the API server's refusal of a change to an immutable field. The
/// wording differs by kind: "field is immutable" (Deployment selector, Job
/// template), "may not change once set" (Service clusterIP), "updates to
/// statefulset spec for fields other than … are forbidden", "pod updates
/// may not change fields other than …".
pub fn is_immutable_error(e: &WriteError) -> bool {
    match e.api() {
        Some(kube::Error::Api(status)) => {
            let m = &status.message;
            status.code == 422
                && (m.contains("immutable")
                    || m.contains("may not change once set")
                    || (m.contains("updates to") && m.contains("are forbidden"))
                    || m.contains("pod updates may not change fields"))
        }
        _ => false,
    }
}

/// The API server's own words for a refusal, without the HTTP wrapping.
pub fn reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => status.message.clone(),
        other => crate::model::error_chain(other),
    }
}

impl WriteError {
    /// The API server's own words, or why nothing was sent.
    pub fn reason(&self) -> String {
        match self {
            WriteError::Api(e) => reason(e),
            WriteError::NotLeader(e) => e.to_string(),
        }
    }
}

/// What a delete request found.
enum Deletion {
    Absent,
    Deleted,
    /// Still there (finalizers, foreground deletion of dependents).
    Deleting {
        uid: String,
    },
}

impl Cluster {
    /// Server-side apply with field manager `tidegate`.
    pub async fn apply(
        &self,
        resolved: &Resolved,
        id: &ObjectRef,
        object: &(impl serde::Serialize + std::fmt::Debug + Sync),
        force: bool,
        dry_run: bool,
    ) -> Result<DynamicObject, WriteError> {
        let api = self.api(resolved, id.namespace.as_deref());
        let mut params = PatchParams::apply(FIELD_MANAGER);
        params.force = force;
        params.dry_run = dry_run;
        if !dry_run {
            self.fenced()?;
            self.count_write();
        }
        Ok(api.patch(&id.name, &params, &Patch::Apply(object)).await?)
    }

    /// Deletes an object (dependents in the background); `Ok(false)` if it was gone.
    pub async fn delete(&self, resolved: &Resolved, id: &ObjectRef) -> Result<bool, WriteError> {
        let deletion = self
            .delete_with(resolved, id, PropagationPolicy::Background)
            .await?;
        Ok(!matches!(deletion, Deletion::Absent))
    }

    async fn delete_with(
        &self,
        resolved: &Resolved,
        id: &ObjectRef,
        propagation: PropagationPolicy,
    ) -> Result<Deletion, WriteError> {
        let api = self.api(resolved, id.namespace.as_deref());
        let params = DeleteParams {
            propagation_policy: Some(propagation),
            ..DeleteParams::default()
        };
        self.fenced()?;
        self.count_write();
        match api.delete(&id.name, &params).await {
            // The object while it is still being deleted, or a Status once gone.
            Ok(answer) => Ok(match answer.left().and_then(|o| o.metadata.uid) {
                Some(uid) => Deletion::Deleting { uid },
                None => Deletion::Deleted,
            }),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(Deletion::Absent),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes an object, waits until it is gone, then applies it anew.
    pub async fn recreate(
        &self,
        resolved: &Resolved,
        id: &ObjectRef,
        object: &(impl serde::Serialize + std::fmt::Debug + Sync),
        force: bool,
    ) -> Result<DynamicObject, WriteError> {
        use kube::runtime::wait::{await_condition, conditions};
        let deletion = self
            .delete_with(resolved, id, PropagationPolicy::Foreground)
            .await?;
        if let Deletion::Deleting { uid } = deletion {
            let api = self.api(resolved, id.namespace.as_deref());
            let gone = await_condition(api, &id.name, conditions::is_deleted(&uid));
            // Past the timeout the apply tells what still holds it.
            let _ = tokio::time::timeout(RECREATE_TIMEOUT, gone).await;
        }
        self.apply(resolved, id, object, force, false).await
    }

    /// Waits until a CustomResourceDefinition is Established, so custom
    /// resources of it can be applied in the same sync.
    pub async fn wait_established(&self, name: &str, timeout: Duration) -> bool {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        use kube::runtime::wait::{await_condition, conditions};
        let api: kube::Api<CustomResourceDefinition> = kube::Api::all(self.client.clone());
        let established = await_condition(api, name, conditions::is_crd_established());
        matches!(
            tokio::time::timeout(timeout, established).await,
            Ok(Ok(Some(_)))
        )
    }
}
