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
