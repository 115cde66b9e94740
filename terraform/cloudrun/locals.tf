# Values derived from the variables only (no resources): tests evaluate this file with
# `terraform console` alongside variables.tf, which needs no Google provider.
locals {
  default_cpu        = { english = 2, multilingual = 4 }
  default_memory_gib = { english = 4, multilingual = 6 }
  gpu                = var.gpu_type != null
  cpu                = coalesce(var.cpu, local.gpu ? 4 : local.default_cpu[var.model_variant])
  concurrency        = local.gpu ? var.gpu_concurrency : var.concurrency
  # model + index + headroom: the variant's default (model and image decoding) + 1.25 x the index.
  index_gib          = var.index_size_gib + var.baked_index_mib / 1024
  memory_default_gib = max(local.gpu ? 16 : 0, ceil(local.default_memory_gib[var.model_variant] + 1.25 * local.index_gib))
  memory_gib         = coalesce(var.memory_gib, local.memory_default_gib)
  serves_index       = var.index_bucket != null
  deploy_app         = var.image != null
  port               = 8080

  app_env = merge(var.extra_env, {
    MODEL_VARIANT = var.model_variant
    # One worker process; one spare thread beyond the concurrency so probes never queue.
    HTTP_THREADS      = tostring(local.concurrency + 1)
    TORCH_THREADS     = tostring(local.cpu)
    REQUEST_TIMEOUT_S = tostring(max(1, var.request_timeout_s - 5))
    # Cloud Run does not set it: without it trace headers cannot become Cloud Logging trace links.
    GOOGLE_CLOUD_PROJECT = var.project_id
    }, local.gpu_env, local.serves_index ? {
    INDEX_DIR = "/index/${var.index_path}"
    # Read the index in at start: a bucket mount serves random reads (an mmap's page faults) slowly.
    INDEX_LOAD = "memory"
  } : {}, local.qdrant_env)
  # The batch job: same image, no HTTP server.
  job_env = merge(var.extra_env, {
    MODEL_VARIANT        = var.model_variant
    TORCH_THREADS        = tostring(local.cpu)
    GOOGLE_CLOUD_PROJECT = var.project_id
  }, local.gpu_env, local.qdrant_env)
  # On a GPU every vCPU decodes (the GPU outruns them); DEVICE=cuda makes a start without a GPU fail loudly.
  gpu_env = local.gpu ? { DEVICE = "cuda", DECODE_CONCURRENCY = tostring(local.cpu) } : {}
  qdrant_env = var.qdrant_url == null ? {} : {
    QDRANT_URL        = var.qdrant_url
    QDRANT_COLLECTION = var.qdrant_collection
  }
  # QDRANT_API_KEY comes from Secret Manager by reference (see main.tf), not from here.
  qdrant_secret = var.qdrant_url != null && var.qdrant_api_key_secret != null
  resource_limits = merge({
    cpu    = tostring(local.cpu)
    memory = "${local.memory_gib}Gi"
  }, local.gpu ? { "nvidia.com/gpu" = "1" } : {})
}

