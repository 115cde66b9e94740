# Ingest from bucket events (docs/ingest.md), off unless ingest_bucket names a bucket: the bucket's object
# notifications go to a Pub/Sub topic; a push subscription posts each to the service's /ingest/gcs with an
# OIDC token of its own service account (the service checks audience and account), retries with backoff and,
# after ingest_max_delivery_attempts, moves the message to a dead-letter topic. The service reads objects
# with its own identity and forwards what can never succeed to the same dead-letter topic once.

locals {
  ingest          = var.ingest_bucket != null && local.deploy_app
  ingest_audience = "clipserve-ingest/${var.project_id}/${var.name}" # any string both ends agree on
  ingest_env = local.ingest ? {
    INGEST_BUCKETS              = "gs://${var.ingest_bucket}"
    INGEST_PUSH_AUDIENCE        = local.ingest_audience
    INGEST_PUSH_SERVICE_ACCOUNT = google_service_account.push[0].email
    INGEST_DEAD_LETTER          = google_pubsub_topic.ingest_dead[0].id
  } : {}
}

data "google_project" "ingest" {
  count = local.ingest ? 1 : 0
}

data "google_storage_project_service_account" "ingest" {
  count = local.ingest ? 1 : 0
}

resource "google_pubsub_topic" "ingest" {
  #checkov:skip=CKV_GCP_83:object names and metadata only, encrypted at rest with Google-managed keys; a customer key would need a KMS key and grants this module does not own
  count = local.ingest ? 1 : 0
  name  = "${var.name}-ingest"
}

resource "google_pubsub_topic" "ingest_dead" {
  #checkov:skip=CKV_GCP_83:as the ingest topic: Google-managed encryption at rest
  count                      = local.ingest ? 1 : 0
  name                       = "${var.name}-ingest-dead"
  message_retention_duration = "604800s" # a week to look at what failed and replay it
}

# Cloud Storage's service agent publishes the notifications.
resource "google_pubsub_topic_iam_member" "gcs_publishes" {
  count  = local.ingest ? 1 : 0
  topic  = google_pubsub_topic.ingest[0].id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${data.google_storage_project_service_account.ingest[0].email_address}"
}

resource "google_storage_notification" "ingest" {
  count          = local.ingest ? 1 : 0
  bucket         = var.ingest_bucket
  payload_format = "JSON_API_V1"
  topic          = google_pubsub_topic.ingest[0].id
  event_types    = ["OBJECT_FINALIZE", "OBJECT_DELETE", "OBJECT_ARCHIVE"]
  depends_on     = [google_pubsub_topic_iam_member.gcs_publishes]
}

# The identity the push subscription signs its OIDC tokens as: it may invoke the service, nothing else.
resource "google_service_account" "push" {
  count        = local.ingest ? 1 : 0
  account_id   = substr("${var.name}-push", 0, 30)
  display_name = "Pub/Sub push to ${var.name}/ingest/gcs"
}

resource "google_cloud_run_v2_service_iam_member" "push_invokes" {
  count    = local.ingest ? 1 : 0
  name     = google_cloud_run_v2_service.service[0].name
  location = var.region
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.push[0].email}"
}

resource "google_pubsub_subscription" "ingest" {
  count                      = local.ingest ? 1 : 0
  name                       = "${var.name}-ingest"
  topic                      = google_pubsub_topic.ingest[0].id
  ack_deadline_seconds       = min(600, max(10, var.request_timeout_s))
  message_retention_duration = "604800s"

  push_config {
    push_endpoint = "${google_cloud_run_v2_service.service[0].uri}/ingest/gcs"
    oidc_token {
      service_account_email = google_service_account.push[0].email
      audience              = local.ingest_audience
    }
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.ingest_dead[0].id
    max_delivery_attempts = var.ingest_max_delivery_attempts
  }

  expiration_policy {
    ttl = "" # never expires for lack of traffic
  }
}

# Pub/Sub's own service agent moves messages to the dead-letter topic and mints the push tokens.
locals {
  pubsub_agent = local.ingest ? "serviceAccount:service-${data.google_project.ingest[0].number}@gcp-sa-pubsub.iam.gserviceaccount.com" : null
}

resource "google_pubsub_topic_iam_member" "agent_dead_letters" {
  count  = local.ingest ? 1 : 0
  topic  = google_pubsub_topic.ingest_dead[0].id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "agent_acks" {
  count        = local.ingest ? 1 : 0
  subscription = google_pubsub_subscription.ingest[0].id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

resource "google_service_account_iam_member" "agent_mints_push_tokens" {
  count              = local.ingest ? 1 : 0
  service_account_id = google_service_account.push[0].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

# The service reads the bucket's objects (never a public URL) and forwards permanent failures.
resource "google_storage_bucket_iam_member" "service_reads_ingest" {
  count  = local.ingest ? 1 : 0
  bucket = var.ingest_bucket
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.service.email}"
}

resource "google_pubsub_topic_iam_member" "service_dead_letters" {
  count  = local.ingest ? 1 : 0
  topic  = google_pubsub_topic.ingest_dead[0].id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.service.email}"
}
