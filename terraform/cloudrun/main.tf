resource "google_artifact_registry_repository" "images" {
  #checkov:skip=CKV_GCP_84:the images hold public code and public model weights; Google-managed encryption at rest is enough
  repository_id = var.name
  location      = var.region
  format        = "DOCKER"
  description   = "clipserve images (deploy.sh pushes one tag per deploy)"

  cleanup_policy_dry_run = false
  cleanup_policies {
    id     = "keep-newest"
    action = "KEEP"
    most_recent_versions {
      keep_count = var.keep_images
    }
  }
  cleanup_policies {
    id     = "delete-older"
    action = "DELETE"
    condition {
      tag_state  = "ANY"
      older_than = "604800s"
    }
  }
}

# The service runs as its own identity holding no roles but object read on index_bucket and access to the
# Qdrant key's secret, when set.
resource "google_service_account" "service" {
  account_id   = "${var.name}-run"
  display_name = "clipserve service (no roles)"
}

resource "google_cloud_run_v2_service" "service" {
  count               = local.deploy_app ? 1 : 0
  name                = var.name
  location            = var.region
  ingress             = var.ingress
  deletion_protection = var.deletion_protection

  template {
    service_account                  = google_service_account.service.email
    execution_environment            = "EXECUTION_ENVIRONMENT_GEN2"
    max_instance_request_concurrency = local.concurrency
    timeout                          = "${var.request_timeout_s}s"
    gpu_zonal_redundancy_disabled    = local.gpu ? !var.gpu_zonal_redundancy : null

    dynamic "node_selector" {
      for_each = local.gpu ? [var.gpu_type] : []
      content {
        accelerator = node_selector.value
      }
    }

    scaling {
      min_instance_count = var.min_instances
      max_instance_count = var.max_instances
    }

    containers {
      image = var.image

      ports {
        container_port = local.port
      }

      resources {
        limits            = local.resource_limits
        cpu_idle          = local.gpu ? false : !var.cpu_always_allocated # a GPU needs CPU always allocated
        startup_cpu_boost = var.startup_cpu_boost
      }

      dynamic "env" {
        for_each = local.app_env
        content {
          name  = env.key
          value = env.value
        }
      }

      dynamic "env" {
        for_each = local.qdrant_secret ? [var.qdrant_api_key_secret] : []
        content {
          name = "QDRANT_API_KEY"
          value_source {
            secret_key_ref {
              secret  = env.value
              version = "latest"
            }
          }
        }
      }

      dynamic "env" {
        for_each = local.redis_env
        content {
          name  = env.key
          value = env.value
        }
      }

      dynamic "env" {
        for_each = local.ingest_env
        content {
          name  = env.key
          value = env.value
        }
      }

      dynamic "env" {
        for_each = var.redis_enabled ? [google_secret_manager_secret.redis_auth[0].secret_id] : []
        content {
          name = "REDIS_PASSWORD"
          value_source {
            secret_key_ref {
              secret  = env.value
              version = "latest"
            }
          }
        }
      }

      # /health answers 503 while the model loads and 200 once it serves.
      startup_probe {
        initial_delay_seconds = var.startup_probe_initial_delay_s
        period_seconds        = var.startup_probe_period_s
        failure_threshold     = var.startup_probe_failure_threshold
        timeout_seconds       = min(var.startup_probe_period_s, 4)
        http_get {
          path = "/health"
          port = local.port
        }
      }

      liveness_probe {
        period_seconds    = var.liveness_probe_period_s
        failure_threshold = var.liveness_probe_failure_threshold
        timeout_seconds   = min(var.liveness_probe_period_s, 5)
        http_get {
          path = "/health"
          port = local.port
        }
      }

      dynamic "volume_mounts" {
        for_each = local.serves_index ? [1] : []
        content {
          name       = "index"
          mount_path = "/index"
        }
      }

      dynamic "volume_mounts" {
        for_each = var.redis_enabled ? [1] : []
        content {
          name       = "redis-ca"
          mount_path = "/secrets/redis-ca"
        }
      }
    }

    # Memorystore is reached over Direct VPC egress; only private ranges go through the VPC, so image URLs on
    # the internet are still fetched directly.
    dynamic "vpc_access" {
      for_each = var.redis_enabled ? [1] : []
      content {
        egress = "PRIVATE_RANGES_ONLY"
        network_interfaces {
          network    = var.vpc_network
          subnetwork = var.vpc_subnetwork
        }
      }
    }

    dynamic "volumes" {
      for_each = var.redis_enabled ? [google_secret_manager_secret.redis_ca[0].secret_id] : []
      content {
        name = "redis-ca"
        secret {
          secret = volumes.value
          items {
            version = "latest"
            path    = "ca.pem"
          }
        }
      }
    }

    # The search index: version folders in a bucket, mounted read-only (the service never writes).
    dynamic "volumes" {
      for_each = local.serves_index ? [var.index_bucket] : []
      content {
        name = "index"
        gcs {
          bucket    = volumes.value
          read_only = true
        }
      }
    }
  }

  # Canary releases on Cloud Run's own traffic split (deploy.sh --canary / --promote / --rollback).
  dynamic "traffic" {
    for_each = local.traffic
    content {
      type     = traffic.value.type
      revision = traffic.value.revision
      percent  = traffic.value.percent
      tag      = traffic.value.tag
    }
  }
}

resource "google_project_iam_member" "trace_agent" {
  count   = var.tracing_enabled ? 1 : 0
  project = var.project_id
  role    = "roles/cloudtrace.agent"
  member  = "serviceAccount:${google_service_account.service.email}"
}

resource "google_storage_bucket_iam_member" "service_index" {
  count  = local.serves_index ? 1 : 0
  bucket = var.index_bucket
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.service.email}"
}

# The Qdrant API key: readable by the service and the job, by reference (the value never enters state).
resource "google_secret_manager_secret_iam_member" "service_qdrant_key" {
  count     = local.qdrant_secret ? 1 : 0
  secret_id = var.qdrant_api_key_secret
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.service.email}"
}

resource "google_secret_manager_secret_iam_member" "job_qdrant_key" {
  count     = local.qdrant_secret ? 1 : 0
  secret_id = var.qdrant_api_key_secret
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.job.email}"
}

resource "google_storage_bucket_iam_member" "job_index" {
  count  = local.serves_index ? 1 : 0
  bucket = var.index_bucket
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.job.email}"
}

resource "google_cloud_run_v2_service_iam_member" "public" {
  #checkov:skip=CKV2_CLIPSERVE_4:exists only when allow_unauthenticated = true, an explicit opt-in to a public service
  count    = local.deploy_app && var.allow_unauthenticated ? 1 : 0
  name     = google_cloud_run_v2_service.service[0].name
  location = var.region
  role     = "roles/run.invoker"
  member   = "allUsers"
}

resource "google_cloud_run_v2_service_iam_member" "invokers" {
  for_each = local.deploy_app ? toset(var.invokers) : toset([])
  name     = google_cloud_run_v2_service.service[0].name
  location = var.region
  role     = "roles/run.invoker"
  member   = each.value
}

# Batch: the same image runs clipserve-batch with the model in-process (no HTTP hop).
resource "google_service_account" "job" {
  account_id   = "${var.name}-job"
  display_name = "clipserve batch job (object access to job_bucket only)"
}

resource "google_storage_bucket_iam_member" "job_data" {
  count  = var.job_bucket == null ? 0 : 1
  bucket = var.job_bucket
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.job.email}"
}

resource "google_cloud_run_v2_job" "batch" {
  count               = local.deploy_app ? 1 : 0
  name                = "${var.name}-batch"
  location            = var.region
  deletion_protection = var.deletion_protection

  template {
    task_count  = var.job_tasks
    parallelism = var.job_parallelism

    template {
      service_account               = google_service_account.job.email
      execution_environment         = "EXECUTION_ENVIRONMENT_GEN2"
      max_retries                   = var.job_max_retries
      timeout                       = "${var.job_task_timeout_s}s"
      gpu_zonal_redundancy_disabled = local.gpu ? !var.gpu_zonal_redundancy : null

      dynamic "node_selector" {
        for_each = local.gpu ? [var.gpu_type] : []
        content {
          accelerator = node_selector.value
        }
      }

      containers {
        image   = var.image
        command = var.job_command
        args    = var.job_args

        resources {
          limits = local.resource_limits
        }

        dynamic "env" {
          for_each = local.job_env
          content {
            name  = env.key
            value = env.value
          }
        }

        dynamic "env" {
          for_each = local.qdrant_secret ? [var.qdrant_api_key_secret] : []
          content {
            name = "QDRANT_API_KEY"
            value_source {
              secret_key_ref {
                secret  = env.value
                version = "latest"
              }
            }
          }
        }

        dynamic "env" {
          for_each = local.redis_env
          content {
            name  = env.key
            value = env.value
          }
        }

        dynamic "env" {
          for_each = var.redis_enabled ? [google_secret_manager_secret.redis_auth[0].secret_id] : []
          content {
            name = "REDIS_PASSWORD"
            value_source {
              secret_key_ref {
                secret  = env.value
                version = "latest"
              }
            }
          }
        }

        dynamic "volume_mounts" {
          for_each = var.redis_enabled ? [1] : []
          content {
            name       = "redis-ca"
            mount_path = "/secrets/redis-ca"
          }
        }

        dynamic "volume_mounts" {
          for_each = var.job_bucket == null ? [] : [1]
          content {
            name       = "data"
            mount_path = "/data"
          }
        }

        # index build writes new version folders here: --args=index,build,...,--output,/index/NAME/vN
        dynamic "volume_mounts" {
          for_each = local.serves_index ? [1] : []
          content {
            name       = "index"
            mount_path = "/index"
          }
        }
      }

      dynamic "vpc_access" {
        for_each = var.redis_enabled ? [1] : []
        content {
          egress = "PRIVATE_RANGES_ONLY"
          network_interfaces {
            network    = var.vpc_network
            subnetwork = var.vpc_subnetwork
          }
        }
      }

      dynamic "volumes" {
        for_each = var.redis_enabled ? [google_secret_manager_secret.redis_ca[0].secret_id] : []
        content {
          name = "redis-ca"
          secret {
            secret = volumes.value
            items {
              version = "latest"
              path    = "ca.pem"
            }
          }
        }
      }

      dynamic "volumes" {
        for_each = var.job_bucket == null ? [] : [var.job_bucket]
        content {
          name = "data"
          gcs {
            bucket    = volumes.value
            read_only = false
          }
        }
      }

      dynamic "volumes" {
        for_each = local.serves_index ? [var.index_bucket] : []
        content {
          name = "index"
          gcs {
            bucket    = volumes.value
            read_only = false
          }
        }
      }
    }
  }
}
