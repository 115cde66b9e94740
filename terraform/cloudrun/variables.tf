# Every scaling and concurrency knob is a variable with the range Cloud Run accepts.

variable "project_id" {
  description = "Google Cloud project ID."
  type        = string
}

variable "region" {
  description = "Region of the service, the job and the Artifact Registry repository."
  type        = string
  default     = "us-central1"
}

variable "name" {
  description = "Name of the service; the job, repository and service accounts derive from it."
  type        = string
  default     = "clipserve"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,22}[a-z0-9]$", var.name))
    error_message = "name: 2-24 lower-case letters, digits or '-', starting with a letter (service account IDs need the room)."
  }
}

variable "image" {
  description = "Image to run, e.g. REGION-docker.pkg.dev/PROJECT/clipserve/clipserve:TAG (deploy.sh pushes it to this module's repository). null before the first push: only the repository is created (deploy.sh applies it alone first)."
  type        = string
  default     = null
}

variable "model_variant" {
  description = "Baked model variant to serve (the image must contain it)."
  type        = string
  default     = "english"
  validation {
    condition     = contains(["english", "multilingual", "siglip2-b32", "siglip2-b16", "siglip2-so400m"], var.model_variant)
    error_message = "model_variant: one of models/registry.py's variants (english, multilingual, siglip2-b32, siglip2-b16, siglip2-so400m)."
  }
}

variable "models" {
  description = "Several baked variants to serve from one deployment (MODELS), the first the default; null: model_variant alone. The default memory fits all of them at once."
  type        = list(string)
  default     = null
  validation {
    condition     = var.models == null ? true : (length(var.models) > 0 && length(distinct(var.models)) == length(var.models) && alltrue([for m in var.models : contains(["english", "multilingual", "siglip2-b32", "siglip2-b16", "siglip2-so400m"], m)]))
    error_message = "models: distinct variants of models/registry.py, at least one."
  }
}

variable "cpu" {
  description = "vCPUs per instance (1, 2, 4, 6 or 8). null picks the variant's default: english 2, multilingual 4."
  type        = number
  default     = null
  validation {
    condition     = var.cpu == null ? true : contains([1, 2, 4, 6, 8], var.cpu)
    error_message = "cpu: 1, 2, 4, 6 or 8."
  }
  validation {
    condition     = var.gpu_type == null || coalesce(var.cpu, 4) >= 4
    error_message = "a GPU instance needs at least 4 vCPU on Cloud Run (cpu)."
  }
}

variable "memory_gib" {
  description = "Memory per instance in GiB. null picks the variant's default, english 4, multilingual 6 (peak RSS after loading: about 1.3 and 2.4 GB; the rest is for decoding images of concurrent requests), plus 1.25 x index_size_gib for a search index (model + index + headroom, rounded up). Cloud Run needs at least 2 GiB from 4 vCPUs (4 GiB from 6) and allows at most 4 GiB per vCPU."
  type        = number
  default     = null
  validation {
    condition     = var.memory_gib == null ? true : (floor(var.memory_gib) == var.memory_gib && var.memory_gib >= 1 && var.memory_gib <= 32)
    error_message = "memory_gib: a whole number from 1 to 32."
  }
  validation {
    # Checked on the effective values (variant defaults included).
    condition = (coalesce(var.memory_gib, local.memory_default_gib) <= 4 * local.cpu &&
    coalesce(var.memory_gib, local.memory_default_gib) >= lookup({ 4 = 2, 6 = 4, 8 = 4 }, tostring(local.cpu), 1))
    error_message = "Cloud Run allows at most 4 GiB per vCPU and needs at least 2 GiB at 4 vCPUs and 4 GiB at 6 or 8 (a large index_size_gib may need more cpu)."
  }
  validation {
    condition     = var.gpu_type == null || coalesce(var.memory_gib, local.memory_default_gib) >= 16
    error_message = "a GPU instance needs at least 16 GiB on Cloud Run (memory_gib)."
  }
}

variable "min_instances" {
  description = "Instances kept warm (billed while idle). 0 = scale to zero; the first request then waits for a cold start."
  type        = number
  default     = 0
  validation {
    condition     = floor(var.min_instances) == var.min_instances && var.min_instances >= 0 && var.min_instances <= 1000
    error_message = "min_instances: a whole number from 0 to 1000."
  }
}

variable "max_instances" {
  description = "Most instances Cloud Run may start: caps the bill under a flood of requests."
  type        = number
  default     = 5
  validation {
    condition     = floor(var.max_instances) == var.max_instances && var.max_instances >= 1 && var.max_instances <= 1000
    error_message = "max_instances: a whole number from 1 to 1000."
  }
  validation {
    condition     = var.max_instances >= var.min_instances
    error_message = "max_instances must be at least min_instances."
  }
}

variable "concurrency" {
  description = "Requests one instance receives at once. The model is CPU-bound and one inference thread batches across requests, so a small number: enough to fill a batch, not so many that requests queue inside one instance while Cloud Run could start another. gunicorn gets concurrency + 1 threads so a health probe always finds a free thread."
  type        = number
  default     = 8
  validation {
    condition     = floor(var.concurrency) == var.concurrency && var.concurrency >= 1 && var.concurrency <= 255
    error_message = "concurrency: a whole number from 1 to 255 (Cloud Run allows 1000; gunicorn's thread pool is capped at 256)."
  }
}

variable "request_timeout_s" {
  description = "Cloud Run request timeout in seconds; the service answers 504 itself after REQUEST_TIMEOUT_S (set a little lower)."
  type        = number
  default     = 120
  validation {
    condition     = floor(var.request_timeout_s) == var.request_timeout_s && var.request_timeout_s >= 2 && var.request_timeout_s <= 3600
    error_message = "request_timeout_s: a whole number from 2 to 3600."
  }
}

variable "startup_cpu_boost" {
  description = "Extra CPU while an instance starts (imports torch and loads the model faster)."
  type        = bool
  default     = true
}

variable "cpu_always_allocated" {
  description = "false (default): CPU only while requests run (request-based billing, what scale-to-zero needs). true: instance-based billing."
  type        = bool
  default     = false
}

variable "startup_probe_initial_delay_s" {
  description = "Seconds before the first startup probe on /health."
  type        = number
  default     = 0
  validation {
    condition     = floor(var.startup_probe_initial_delay_s) == var.startup_probe_initial_delay_s && var.startup_probe_initial_delay_s >= 0 && var.startup_probe_initial_delay_s <= 240
    error_message = "startup_probe_initial_delay_s: a whole number from 0 to 240."
  }
}

variable "startup_probe_period_s" {
  description = "Seconds between startup probes on /health (503 while the model loads)."
  type        = number
  default     = 5
  validation {
    condition     = floor(var.startup_probe_period_s) == var.startup_probe_period_s && var.startup_probe_period_s >= 1 && var.startup_probe_period_s <= 240
    error_message = "startup_probe_period_s: a whole number from 1 to 240."
  }
}

variable "startup_probe_failure_threshold" {
  description = "Failed startup probes before Cloud Run gives up on the instance. initial delay + period x threshold must fit Cloud Run's 240 s start window."
  type        = number
  default     = 46
  validation {
    condition     = floor(var.startup_probe_failure_threshold) == var.startup_probe_failure_threshold && var.startup_probe_failure_threshold >= 1
    error_message = "startup_probe_failure_threshold: a whole number of at least 1."
  }
  validation {
    condition     = var.startup_probe_initial_delay_s + var.startup_probe_period_s * var.startup_probe_failure_threshold <= 240
    error_message = "startup probe: initial delay + period x failure threshold must be at most 240 s (Cloud Run's start window)."
  }
}

variable "liveness_probe_period_s" {
  description = "Seconds between liveness probes on /health once started (it reports a stalled model as unhealthy)."
  type        = number
  default     = 30
  validation {
    condition     = floor(var.liveness_probe_period_s) == var.liveness_probe_period_s && var.liveness_probe_period_s >= 1 && var.liveness_probe_period_s <= 3600
    error_message = "liveness_probe_period_s: a whole number from 1 to 3600."
  }
}

variable "liveness_probe_failure_threshold" {
  description = "Failed liveness probes in a row before Cloud Run restarts the instance."
  type        = number
  default     = 3
  validation {
    condition     = floor(var.liveness_probe_failure_threshold) == var.liveness_probe_failure_threshold && var.liveness_probe_failure_threshold >= 1 && var.liveness_probe_failure_threshold <= 100
    error_message = "liveness_probe_failure_threshold: a whole number from 1 to 100."
  }
}

variable "allow_unauthenticated" {
  description = "Make the service public (allUsers may invoke). Default: private, callers need roles/run.invoker and an identity token."
  type        = bool
  default     = false
}

variable "invokers" {
  description = "Members granted roles/run.invoker, e.g. [\"user:me@example.com\", \"serviceAccount:caller@p.iam.gserviceaccount.com\"]."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for m in var.invokers : can(regex("^(user|serviceAccount|group|domain|principal|principalSet):", m))])
    error_message = "invokers: IAM members such as user:..., serviceAccount:..., group:... (use allow_unauthenticated for allUsers)."
  }
}

variable "ingress" {
  description = "Who can reach the URL at the network level."
  type        = string
  default     = "INGRESS_TRAFFIC_ALL"
  validation {
    condition     = contains(["INGRESS_TRAFFIC_ALL", "INGRESS_TRAFFIC_INTERNAL_ONLY", "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"], var.ingress)
    error_message = "ingress: INGRESS_TRAFFIC_ALL, INGRESS_TRAFFIC_INTERNAL_ONLY or INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER."
  }
}

variable "extra_env" {
  description = "Extra environment variables for the service and the job (see the README's configuration section)."
  type        = map(string)
  default     = {}
}

variable "deletion_protection" {
  description = "Refuse `terraform destroy` of the service and job."
  type        = bool
  default     = false
}

variable "keep_images" {
  description = "Artifact Registry cleanup keeps this many newest image versions."
  type        = number
  default     = 10
  validation {
    condition     = floor(var.keep_images) == var.keep_images && var.keep_images >= 1 && var.keep_images <= 1000
    error_message = "keep_images: a whole number from 1 to 1000."
  }
}

# Batch job (Cloud Run job on the same image, running clipserve-batch with the model in-process).

variable "job_tasks" {
  description = "Tasks per job execution; each task takes its shard of the input (CLOUD_RUN_TASK_INDEX of CLOUD_RUN_TASK_COUNT)."
  type        = number
  default     = 1
  validation {
    condition     = floor(var.job_tasks) == var.job_tasks && var.job_tasks >= 1 && var.job_tasks <= 10000
    error_message = "job_tasks: a whole number from 1 to 10000."
  }
}

variable "job_parallelism" {
  description = "Tasks running at once (0 = as many as Cloud Run allows)."
  type        = number
  default     = 1
  validation {
    condition     = floor(var.job_parallelism) == var.job_parallelism && var.job_parallelism >= 0 && var.job_parallelism <= 1000
    error_message = "job_parallelism: a whole number from 0 to 1000."
  }
}

variable "job_max_retries" {
  description = "Retries per failed task (a retried task resumes from its last written record)."
  type        = number
  default     = 3
  validation {
    condition     = floor(var.job_max_retries) == var.job_max_retries && var.job_max_retries >= 0 && var.job_max_retries <= 10
    error_message = "job_max_retries: a whole number from 0 to 10."
  }
}

variable "job_task_timeout_s" {
  description = "Longest time one task attempt may run."
  type        = number
  default     = 3600
  validation {
    condition     = floor(var.job_task_timeout_s) == var.job_task_timeout_s && var.job_task_timeout_s >= 1 && var.job_task_timeout_s <= 604800
    error_message = "job_task_timeout_s: a whole number from 1 to 604800 (7 days)."
  }
}

variable "job_command" {
  description = "Command of the batch job's container."
  type        = list(string)
  default     = ["clipserve-batch"]
}

variable "job_args" {
  description = "Arguments of the batch job (input, output, task); override per execution with `gcloud run jobs execute --args`."
  type        = list(string)
  default     = ["--help"]
}

variable "job_bucket" {
  description = "GCS bucket mounted at /data in the job (input and output files); null = no bucket. The job's service account gets object access to this bucket only."
  type        = string
  default     = null
}

# --- search -------------------------------------------------------------------------------------------

variable "index_bucket" {
  description = "Cloud Storage bucket holding search index version folders (clipserve-batch index build writes them). Mounted read-only at /index in the service (its account gets object read on this bucket only) and read-write in the job. null = no search."
  type        = string
  default     = null
}

variable "index_path" {
  description = "The version folder inside index_bucket that the service serves, e.g. \"products/v3\". A new version is a new revision; rolling back is the old path."
  type        = string
  default     = null
  validation {
    condition = (var.index_bucket == null ? true : var.index_path == null ? false :
    can(regex("^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$", var.index_path)) && !strcontains(var.index_path, ".."))
    error_message = "index_path: the version folder inside index_bucket (letters, digits, '.', '_', '-', separated by '/'), required with index_bucket."
  }
}

variable "index_size_gib" {
  description = "Size of the served index version folder in GiB (about vectors x dim x 4 bytes, +13% for HNSW links, + the metadata; `du` of the folder). The service reads it into memory at start (bucket mounts read randomly slowly), so the memory default grows by 1.25 x this."
  type        = number
  default     = 0
  validation {
    condition     = var.index_size_gib >= 0 && var.index_size_gib <= 24
    error_message = "index_size_gib: from 0 to 24 (Cloud Run has at most 32 GiB per instance)."
  }
}

variable "baked_index_mib" {
  description = "Set by deploy.sh --index: MiB of an index baked into the image (counted like index_size_gib)."
  type        = number
  default     = 0
}

variable "qdrant_url" {
  description = "A Qdrant server (self-hosted or Qdrant Cloud) for search and writes instead of an index bucket, e.g. https://xyz.cloud.qdrant.io:6333; null = none. The job gets it too (clipserve-batch index push reads QDRANT_URL)."
  type        = string
  default     = null
  validation {
    condition     = var.qdrant_url == null ? true : can(regex("^https?://[^/]+", var.qdrant_url))
    error_message = "qdrant_url: an http(s) URL."
  }
  validation {
    condition     = var.qdrant_url == null || var.index_bucket == null
    error_message = "qdrant_url and index_bucket: choose one search backend."
  }
}

variable "qdrant_collection" {
  description = "The Qdrant collection the service serves (QDRANT_COLLECTION)."
  type        = string
  default     = "clipserve"
}

variable "qdrant_api_key_secret" {
  description = "Secret Manager secret (id or projects/P/secrets/S) holding the Qdrant API key; passed as QDRANT_API_KEY by reference (latest version), never as a value in Terraform state. null = no key."
  type        = string
  default     = null
}

# --- GPU ------------------------------------------------------------------------------------------------

variable "gpu_type" {
  description = "null: CPU only. \"nvidia-l4\": one NVIDIA L4 per instance, for the service and the job (the CUDA image: deploy.sh cloudrun --gpu). Cloud Run then needs at least 4 vCPU and 16 GiB and CPU always allocated; DEVICE=cuda makes a GPU-less start fail loudly."
  type        = string
  default     = null
  validation {
    condition     = var.gpu_type == null ? true : contains(["nvidia-l4"], var.gpu_type)
    error_message = "gpu_type: null or \"nvidia-l4\" (the GPU Cloud Run offers)."
  }
}

variable "gpu_zonal_redundancy" {
  description = "With a GPU: reserve capacity in other zones for failover (Cloud Run's default). false is cheaper, best effort."
  type        = bool
  default     = true
}

variable "gpu_concurrency" {
  description = "Requests one GPU instance receives at once (used instead of concurrency when gpu_type is set): a GPU batch is cheap, so enough requests to fill it (and to keep its CPU decode threads busy)."
  type        = number
  default     = 32
  validation {
    condition     = floor(var.gpu_concurrency) == var.gpu_concurrency && var.gpu_concurrency >= 1 && var.gpu_concurrency <= 255
    error_message = "gpu_concurrency: a whole number from 1 to 255."
  }
}

variable "redis_enabled" {
  description = "Create a Memorystore for Redis instance (AUTH and in-transit encryption on, maxmemory-policy allkeys-lru) in the region and connect the service and the job to it through Direct VPC egress (private ranges only): the shared embedding and search cache (REDIS_URL)."
  type        = bool
  default     = false
}

variable "redis_tier" {
  description = "Memorystore tier: BASIC (one node; a failure empties the cache, which only costs speed) or STANDARD_HA (a replica)."
  type        = string
  default     = "BASIC"
  validation {
    condition     = contains(["BASIC", "STANDARD_HA"], var.redis_tier)
    error_message = "redis_tier: BASIC or STANDARD_HA."
  }
}

variable "redis_memory_size_gib" {
  description = "Memorystore capacity in GiB. A 512-d vector entry is about 2.2 KB with its key: 1 GiB holds about 450,000 text or image embeddings; allkeys-lru evicts the least used beyond that."
  type        = number
  default     = 1
  validation {
    condition     = var.redis_memory_size_gib >= 1 && var.redis_memory_size_gib <= 300
    error_message = "redis_memory_size_gib: 1 to 300."
  }
}

variable "vpc_network" {
  description = "The VPC network Memorystore is reachable in and the service and job egress to (redis_enabled)."
  type        = string
  default     = "default"
}

variable "vpc_subnetwork" {
  description = "The subnetwork of vpc_network in the region that Direct VPC egress takes addresses from (redis_enabled)."
  type        = string
  default     = "default"
}

# ---------------------------------------------------------------- canary releases (Cloud Run's traffic split)

variable "stable_revision" {
  description = "The revision that keeps the traffic a canary does not get (deploy.sh --canary records it). null: every request goes to the latest revision (no canary)."
  type        = string
  default     = null
  validation {
    condition     = var.stable_revision == null || can(regex("^[a-z][a-z0-9-]{0,62}$", var.stable_revision))
    error_message = "stable_revision: a Cloud Run revision name (lower-case letters, digits, '-')."
  }
}

variable "canary_percent" {
  description = "Percent of requests sent to the latest revision (tagged canary_tag, reachable at its own URL) while stable_revision keeps the rest. 0 with a stable_revision: the new revision is deployed and smoke-tested at its tagged URL with no traffic; --promote sets stable_revision null, --rollback sets this to 0."
  type        = number
  default     = 0
  validation {
    condition     = var.canary_percent >= 0 && var.canary_percent <= 100 && floor(var.canary_percent) == var.canary_percent
    error_message = "canary_percent: a whole number from 0 to 100."
  }
}

variable "canary_tag" {
  description = "The tag of the latest revision while a canary runs: its URL is https://TAG---SERVICE-HASH.REGION.run.app."
  type        = string
  default     = "canary"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,45}$", var.canary_tag))
    error_message = "canary_tag: lower-case letters, digits and '-', starting with a letter."
  }
}

# ---------------------------------------------------------------- tracing, dashboards, alerts

variable "tracing_enabled" {
  description = "OpenTelemetry traces to Cloud Trace (OTEL_ENABLED, OTEL_TRACES_EXPORTER=gcp_trace); grants the service account roles/cloudtrace.agent. Sampling: OTEL_TRACES_SAMPLER / _ARG in extra_env."
  type        = bool
  default     = false
}

variable "monitoring_enabled" {
  description = "Create the log-based metrics, the Cloud Monitoring dashboard and the alert policies (monitoring.tf)."
  type        = bool
  default     = true
}

variable "notification_channels" {
  description = "Cloud Monitoring notification channel ids (projects/P/notificationChannels/N) the alert policies notify; empty: the incidents only show in the console."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for c in var.notification_channels : can(regex("^projects/[^/]+/notificationChannels/[0-9]+$", c))])
    error_message = "notification_channels: ids of the form projects/PROJECT/notificationChannels/NUMBER."
  }
}

variable "latency_slo_s" {
  description = "The p99 latency SLO in seconds for the API routes: the latency alert fires when p99 stays above it for 10 minutes."
  type        = number
  default     = 2.5
  validation {
    condition     = var.latency_slo_s > 0 && var.latency_slo_s <= 600
    error_message = "latency_slo_s: more than 0, at most 600."
  }
}

variable "ingest_bucket" {
  description = "An existing bucket whose object events are indexed into the Qdrant collection (docs/ingest.md): Pub/Sub notifications, a push subscription with OIDC to /ingest/gcs, a dead-letter topic. Needs qdrant_url. null = no ingest."
  type        = string
  default     = null
  validation {
    condition     = var.ingest_bucket == null ? true : can(regex("^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$", var.ingest_bucket))
    error_message = "ingest_bucket: a bucket name (lowercase letters, digits, dots, dashes, underscores)."
  }
  validation {
    condition     = var.ingest_bucket == null || var.qdrant_url != null
    error_message = "ingest_bucket: ingest writes to a Qdrant collection; set qdrant_url too."
  }
}

variable "ingest_max_delivery_attempts" {
  description = "Pushes of one event before Pub/Sub moves it to the dead-letter topic (transient failures are retried with 10-600 s backoff until then)."
  type        = number
  default     = 20
  validation {
    condition     = var.ingest_max_delivery_attempts >= 5 && var.ingest_max_delivery_attempts <= 100
    error_message = "ingest_max_delivery_attempts: Pub/Sub allows 5 to 100."
  }
}
