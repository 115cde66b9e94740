# Values derived from the variables only (no resources): tests evaluate this file with
# `terraform console` alongside variables.tf, which needs no Google provider.
locals {
  # Per variant: the vCPUs it wants, and the GiB its model takes once used (weights, tokenizer, buffers: see
  # bench/RESULTS.md "Model variants"); the process itself (runtime libraries, image decoding) takes base_gib.
  default_cpu = { english = 2, multilingual = 4, "siglip2-b32" = 2, "siglip2-b16" = 4, "siglip2-so400m" = 8 }
  model_gib   = { english = 2.5, multilingual = 4.5, "siglip2-b32" = 2.5, "siglip2-b16" = 2.5, "siglip2-so400m" = 7 }
  base_gib    = 1.5
  models      = var.models != null ? var.models : [var.model_variant]
  gpu         = var.gpu_type != null
  cpu         = coalesce(var.cpu, local.gpu ? 4 : max([for m in local.models : local.default_cpu[m]]...))
  concurrency = local.gpu ? var.gpu_concurrency : var.concurrency
  # Every model of the list in memory at once (else MODEL_MEMORY_BUDGET evicts) + 1.25 x the index.
  index_gib          = var.index_size_gib + var.baked_index_mib / 1024
  memory_default_gib = max(local.gpu ? 16 : 0, ceil(local.base_gib + sum([for m in local.models : local.model_gib[m]]) + 1.25 * local.index_gib))
  # One model: MODEL_VARIANT as before; several: MODELS, the first the default.
  model_env    = length(local.models) > 1 ? { MODELS = join(",", local.models) } : { MODEL_VARIANT = local.models[0] }
  memory_gib   = coalesce(var.memory_gib, local.memory_default_gib)
  serves_index = var.index_bucket != null
  deploy_app   = var.image != null
  port         = 8080

  app_env = merge(var.extra_env, local.model_env, {
    # One worker process; one spare thread beyond the concurrency so probes never queue.
    HTTP_THREADS      = tostring(local.concurrency + 1)
    TORCH_THREADS     = tostring(local.cpu)
    REQUEST_TIMEOUT_S = tostring(max(1, var.request_timeout_s - 5))
    # Cloud Run does not set it: without it trace headers cannot become Cloud Logging trace links.
    GOOGLE_CLOUD_PROJECT = var.project_id
    }, local.tracing_env, local.gpu_env, local.serves_index ? {
    INDEX_DIR = "/index/${var.index_path}"
    # Read the index in at start: a bucket mount serves random reads (an mmap's page faults) slowly.
    INDEX_LOAD = "memory"
  } : {}, local.qdrant_env)
  tracing_env = var.tracing_enabled ? { OTEL_ENABLED = "true", OTEL_TRACES_EXPORTER = "gcp_trace" } : {}
  # Traffic: everything to the latest revision, or (a canary) the latest revision tagged, with canary_percent,
  # and stable_revision with the rest. A tagged revision at 0% is reachable at its own URL only.
  traffic = var.stable_revision == null ? [
    { type = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", revision = null, percent = 100, tag = null }
    ] : [
    { type = "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", revision = var.stable_revision, percent = 100 - var.canary_percent, tag = "stable" },
    { type = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", revision = null, percent = var.canary_percent, tag = var.canary_tag },
  ]
  # The batch job: same image, no HTTP server.
  job_env = merge(var.extra_env, local.model_env, {
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

locals {
  # Cloud Monitoring (monitoring.tf): log-based metrics from the request line, and the alert policies' PromQL.
  monitor   = var.monitoring_enabled && local.deploy_app
  on_run    = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"${var.name}\""
  request   = "${local.on_run} AND labels.python_logger=\"clipserve.request\""
  run_sel   = "monitored_resource=\"cloud_run_revision\",service_name=\"${var.name}\""
  api_route = "/embed/.*|/score|/search|/v1/embeddings|/vectorize"
  revision_label = {
    revision = "resource.labels.revision_name"
  }
  log_metrics = {
    clipserve_requests = {
      filter = local.request, kind = "counter", value = null, unit = "1"
      labels = merge(local.revision_label, { route = "EXTRACT(jsonPayload.route)", status = "EXTRACT(jsonPayload.status)", error_code = "EXTRACT(jsonPayload.error_code)" })
    }
    clipserve_latency = {
      filter = local.request, kind = "distribution", value = "EXTRACT(jsonPayload.latency_ms)", unit = "ms"
      labels = merge(local.revision_label, { route = "EXTRACT(jsonPayload.route)" })
    }
    clipserve_queue_wait = {
      filter = "${local.request} AND jsonPayload.queue_wait_ms:*", kind = "distribution", unit = "ms"
      value  = "EXTRACT(jsonPayload.queue_wait_ms)", labels = local.revision_label
    }
    clipserve_batch_size = {
      filter = "${local.request} AND jsonPayload.batch_size:*", kind = "distribution", unit = "1"
      value  = "EXTRACT(jsonPayload.batch_size)", labels = local.revision_label
    }
    clipserve_health_failing = {
      filter = "${local.request} AND jsonPayload.route=\"/health\" AND jsonPayload.status=503", kind = "counter"
      value  = null, unit = "1", labels = local.revision_label
    }
    clipserve_search_unavailable = {
      filter = "${local.request} AND jsonPayload.error_code=(\"search_unavailable\" OR \"index_loading\")"
      kind   = "counter", value = null, unit = "1", labels = local.revision_label
    }
    clipserve_cache_breaker = {
      filter = "${local.on_run} AND labels.python_logger=\"infra.redis_cache\" AND jsonPayload.message:\"shared cache (Redis) failed\""
      kind   = "counter", value = null, unit = "1", labels = local.revision_label
    }
  }
  # name => [PromQL, seconds it must hold, documentation]
  alerts = {
    "5xx ratio over 2%" = [
      "sum(rate(run_googleapis_com:request_count{${local.run_sel},response_code_class=\"5xx\"}[5m])) / sum(rate(run_googleapis_com:request_count{${local.run_sel}}[5m])) > 0.02",
      600, "Availability SLO 99.5% non-5xx over 30 days: 2% for 10 minutes burns the budget 4x too fast. The request log lines with status >= 500 name the error_code.",
    ]
    "p99 latency over the SLO" = [
      "histogram_quantile(0.99, sum by (le) (rate(logging_googleapis_com:user_clipserve_latency_bucket{${local.run_sel},route=~\"${local.api_route}\"}[5m]))) > ${var.latency_slo_s * 1000}",
      600, "p99 of the API routes above latency_slo_s for 10 minutes: look at the queue wait and batch size charts (saturation) and the image fetch spans in Cloud Trace.",
    ]
    "429 ratio over 5% (saturated)" = [
      "sum(rate(run_googleapis_com:request_count{${local.run_sel},response_code=\"429\"}[5m])) / sum(rate(run_googleapis_com:request_count{${local.run_sel}}[5m])) > 0.05",
      300, "The model queue is full (overloaded) or RATE_LIMIT refuses (rate_limited): the log lines' error_code says which. Raise max_instances, lower concurrency, or move to a GPU.",
    ]
    "model not ready (health failing)" = [
      "sum(rate(logging_googleapis_com:user_clipserve_health_failing{${local.run_sel}}[5m])) > 0",
      300, "GET /health answered 503 for 5 minutes: the model failed to load or the inference loop stalled; Cloud Run replaces instances whose liveness probe fails.",
    ]
    "shared cache breaker open" = [
      "sum(increase(logging_googleapis_com:user_clipserve_cache_breaker{${local.run_sel}}[10m])) > 0",
      0, "The service skips Redis after a failure (answers stay right, just slower). Check the Memorystore instance.",
    ]
    "search index or collection unreachable" = [
      "sum(rate(logging_googleapis_com:user_clipserve_search_unavailable{${local.run_sel}}[5m])) > 0",
      300, "POST /search answered 503 (index_loading / search_unavailable) for 5 minutes: check INDEX_DIR's bucket or the Qdrant server.",
    ]
  }
}
