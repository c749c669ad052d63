//! Writes to one object: server-side apply (real or dry-run), delete, and
//! delete-then-recreate for changes the API server cannot make in place.

use std::time::Duration;

use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PropagationPolicy};

use super::{Cluster, FIELD_MANAGER, Resolved};
use crate::object::ObjectRef;

/// True for the API server's refusal of a change to an immutable field. The
/// wording differs by kind: "field is immutable" (Deployment selector, Job
/// template), "may not change once set" (Service clusterIP), "updates to
/// statefulset spec for fields other than … are forbidden", "pod updates
/// may not change fields other than …".
pub fn is_immutable_error(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => {
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
        other => crate::error_chain(other),
    }
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
    ) -> Result<DynamicObject, kube::Error> {
        let api = self.api(resolved, id.namespace.as_deref());
        let mut params = PatchParams::apply(FIELD_MANAGER);
        params.force = force;
        params.dry_run = dry_run;
        if !dry_run {
            self.fenced()?;
            self.count_write();
        }
        api.patch(&id.name, &params, &Patch::Apply(object)).await
    }

    /// Deletes an object (dependents in the background); `Ok(false)` if it was gone.
    pub async fn delete(&self, resolved: &Resolved, id: &ObjectRef) -> Result<bool, kube::Error> {
        self.delete_with(resolved, id, PropagationPolicy::Background)
            .await
    }

    async fn delete_with(
        &self,
        resolved: &Resolved,
        id: &ObjectRef,
        propagation: PropagationPolicy,
    ) -> Result<bool, kube::Error> {
        let api = self.api(resolved, id.namespace.as_deref());
        let params = DeleteParams {
            propagation_policy: Some(propagation),
            ..DeleteParams::default()
        };
        self.fenced()?;
        self.count_write();
        match api.delete(&id.name, &params).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes an object, waits until it is gone, then applies it anew.
    pub async fn recreate(
        &self,
        resolved: &Resolved,
        id: &ObjectRef,
        object: &(impl serde::Serialize + std::fmt::Debug + Sync),
        force: bool,
    ) -> Result<DynamicObject, kube::Error> {
        self.delete_with(resolved, id, PropagationPolicy::Foreground)
            .await?;
        let api = self.api(resolved, id.namespace.as_deref());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while api.get_opt(&id.name).await?.is_some() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
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
