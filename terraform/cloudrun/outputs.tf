output "url" {
  description = "HTTPS URL of the service (null until an image is deployed)."
  value       = local.deploy_app ? google_cloud_run_v2_service.service[0].uri : null
}

output "private" {
  description = "true: callers need roles/run.invoker and an identity token (gcloud auth print-identity-token)."
  value       = !var.allow_unauthenticated
}

output "repository" {
  description = "Push images here (deploy.sh does)."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
}

output "job_name" {
  value = local.deploy_app ? google_cloud_run_v2_job.batch[0].name : null
}

output "service_account" {
  value = google_service_account.service.email
}

output "revision" {
  description = "The latest ready revision: what deploy.sh --canary records as stable_revision before it deploys."
  value       = local.deploy_app ? google_cloud_run_v2_service.service[0].latest_ready_revision : null
}

output "canary_url" {
  description = "The tagged URL of the latest revision while a canary runs (null otherwise)."
  value = local.deploy_app && var.stable_revision != null ? one([
    for t in google_cloud_run_v2_service.service[0].traffic_statuses : t.uri if t.tag == var.canary_tag
  ]) : null
}

output "stable_revision" {
  description = "The revision a running canary would roll back to (null outside a canary)."
  value       = var.stable_revision
}
