# The optional shared cache: Memorystore for Redis, reached over Direct VPC egress (main.tf's vpc_access).
# AUTH on (its string in Secret Manager, passed as REDIS_PASSWORD by reference) and TLS with the instance's own
# server CA (in Secret Manager too, mounted as REDIS_CA_FILE). allkeys-lru: every key may be evicted when the
# instance is full, so the cache's memory is bounded by the instance. With Redis' default volatile-lru only keys
# with a TTL are candidates; clipserve sets a TTL on every key (CACHE_TTL_S, SEARCH_CACHE_TTL_S) except the small
# write-generation counters, so that default also bounds it, but allkeys-lru says so without that proviso.
resource "google_redis_instance" "cache" {
  count                   = var.redis_enabled ? 1 : 0
  name                    = "${var.name}-cache"
  region                  = var.region
  tier                    = var.redis_tier
  memory_size_gb          = var.redis_memory_size_gib
  redis_version           = "REDIS_7_2"
  authorized_network      = "projects/${var.project_id}/global/networks/${var.vpc_network}"
  auth_enabled            = true
  transit_encryption_mode = "SERVER_AUTHENTICATION"
  redis_configs = {
    maxmemory-policy = "allkeys-lru"
  }
}

resource "google_secret_manager_secret" "redis_auth" {
  #checkov:skip=CKV_GCP_125:Google-managed encryption; the secret holds a cache's AUTH string, no user data
  count     = var.redis_enabled ? 1 : 0
  secret_id = "${var.name}-redis-auth"
  replication {
    auto {}
  }
}

resource "google_secret_manager_secret_version" "redis_auth" {
  count       = var.redis_enabled ? 1 : 0
  secret      = google_secret_manager_secret.redis_auth[0].id
  secret_data = google_redis_instance.cache[0].auth_string
}

resource "google_secret_manager_secret" "redis_ca" {
  #checkov:skip=CKV_GCP_125:Google-managed encryption; the secret holds a public CA certificate
  count     = var.redis_enabled ? 1 : 0
  secret_id = "${var.name}-redis-ca"
  replication {
    auto {}
  }
}

resource "google_secret_manager_secret_version" "redis_ca" {
  count       = var.redis_enabled ? 1 : 0
  secret      = google_secret_manager_secret.redis_ca[0].id
  secret_data = google_redis_instance.cache[0].server_ca_certs[0].cert
}

resource "google_secret_manager_secret_iam_member" "redis" {
  for_each = var.redis_enabled ? {
    "service-auth" = [google_secret_manager_secret.redis_auth[0].secret_id, google_service_account.service.email]
    "service-ca"   = [google_secret_manager_secret.redis_ca[0].secret_id, google_service_account.service.email]
    "job-auth"     = [google_secret_manager_secret.redis_auth[0].secret_id, google_service_account.job.email]
    "job-ca"       = [google_secret_manager_secret.redis_ca[0].secret_id, google_service_account.job.email]
  } : {}
  secret_id = each.value[0]
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${each.value[1]}"
}

locals {
  # REDIS_URL carries no password (REDIS_PASSWORD comes from the secret); rediss: the instance encrypts in transit.
  redis_env = var.redis_enabled ? {
    REDIS_URL     = "rediss://${google_redis_instance.cache[0].host}:${google_redis_instance.cache[0].port}/0"
    REDIS_CA_FILE = "/secrets/redis-ca/ca.pem"
  } : {}
}
