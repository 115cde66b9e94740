# Every scaling and concurrency knob is a variable with the range AWS accepts.

variable "name" {
  description = "Name of the function, ECR repository, role and log group."
  type        = string
  default     = "clipserve"
  validation {
    condition     = can(regex("^[a-zA-Z0-9-_]{1,56}$", var.name))
    error_message = "name: 1-56 letters, digits, '-' or '_' (Lambda allows 64; suffixes need the rest)."
  }
}

variable "region" {
  description = "AWS region."
  type        = string
  default     = "us-east-1"
}

variable "image_tag" {
  description = "Tag of the image in this module's ECR repository (deploy.sh pushes a fresh tag per deploy). null (with image_uri null) before the first push: only the repository is created (deploy.sh applies it alone first)."
  type        = string
  default     = null
  validation {
    condition     = var.image_tag == null ? true : can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag))
    error_message = "image_tag: a valid OCI tag (letters, digits, '_', '.', '-'; at most 128)."
  }
}

variable "image_uri" {
  description = "Full image URI; overrides the ECR repository + image_tag (must still be a private ECR image in this account and region)."
  type        = string
  default     = null
}

variable "model_variant" {
  description = "Baked model variant the function serves (the image must contain it)."
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

variable "memory_mb" {
  description = "Function memory in MB; vCPUs follow memory (1769 MB = 1 vCPU, 6 vCPUs from about 8.8 GB). null picks the variant's default: english 3008 (~1.7 vCPU), multilingual 6144 (~3.5 vCPU)."
  type        = number
  default     = null
  validation {
    condition     = var.memory_mb == null ? true : (floor(var.memory_mb) == var.memory_mb && var.memory_mb >= 128 && var.memory_mb <= 10240)
    error_message = "memory_mb: a whole number from 128 to 10240."
  }
}

variable "index_mib" {
  description = "Size in MiB of a search index baked into the image (deploy.sh --index sets it; 0 = none). The memory default grows by 1.25 x this: the index is held in memory beside the model."
  type        = number
  default     = 0
  validation {
    condition     = var.index_mib >= 0 && var.index_mib <= 8192
    error_message = "index_mib: from 0 to 8192 (Lambda has at most 10240 MB in all)."
  }
}

variable "timeout_s" {
  description = "Invocation timeout in seconds (also bounds a model load that overran the 10 s init phase and is retried inside the first invoke)."
  type        = number
  default     = 60
  validation {
    condition     = floor(var.timeout_s) == var.timeout_s && var.timeout_s >= 1 && var.timeout_s <= 900
    error_message = "timeout_s: a whole number from 1 to 900."
  }
}

variable "ephemeral_storage_mb" {
  description = "Size of /tmp in MB (the only writable path on Lambda; the service needs little)."
  type        = number
  default     = 512
  validation {
    condition     = floor(var.ephemeral_storage_mb) == var.ephemeral_storage_mb && var.ephemeral_storage_mb >= 512 && var.ephemeral_storage_mb <= 10240
    error_message = "ephemeral_storage_mb: a whole number from 512 to 10240."
  }
}

variable "reserved_concurrency" {
  description = "Reserved concurrent executions: the most instances that may run at once (each serves one request at a time). -1 leaves the function unreserved; 0 stops all invocations."
  type        = number
  default     = 10
  validation {
    condition     = floor(var.reserved_concurrency) == var.reserved_concurrency && var.reserved_concurrency >= -1 && var.reserved_concurrency <= 1000
    error_message = "reserved_concurrency: a whole number from -1 (unreserved) to 1000 (the default account limit)."
  }
}

variable "provisioned_concurrency" {
  description = "Pre-initialised (always warm, always billed) instances on the 'live' alias; 0 = none, scale from zero."
  type        = number
  default     = 0
  validation {
    condition     = floor(var.provisioned_concurrency) == var.provisioned_concurrency && var.provisioned_concurrency >= 0 && var.provisioned_concurrency <= 1000
    error_message = "provisioned_concurrency: a whole number from 0 to 1000."
  }
  validation {
    condition     = var.reserved_concurrency < 0 || var.provisioned_concurrency <= var.reserved_concurrency
    error_message = "provisioned_concurrency cannot exceed reserved_concurrency."
  }
}

variable "function_url_auth" {
  description = "Function URL auth: AWS_IAM (default: callers sign with SigV4) or NONE (public; anyone can spend your money)."
  type        = string
  default     = "AWS_IAM"
  validation {
    condition     = contains(["AWS_IAM", "NONE"], var.function_url_auth)
    error_message = "function_url_auth: AWS_IAM or NONE."
  }
}

variable "invoker_principals" {
  description = "Extra principals (account IDs or IAM ARNs) allowed to call the AWS_IAM function URL; identities in this account can also be granted lambda:InvokeFunctionUrl by their own policies."
  type        = list(string)
  default     = []
}

variable "log_retention_days" {
  description = "CloudWatch log retention."
  type        = number
  default     = 30
  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days: one of the values CloudWatch accepts (1, 3, 5, 7, 14, 30, 60, 90, ... 3653)."
  }
}

variable "ecr_keep_images" {
  description = "How many images the ECR lifecycle policy keeps (older ones expire)."
  type        = number
  default     = 10
  validation {
    condition     = floor(var.ecr_keep_images) == var.ecr_keep_images && var.ecr_keep_images >= 1 && var.ecr_keep_images <= 1000
    error_message = "ecr_keep_images: a whole number from 1 to 1000."
  }
}

variable "architecture" {
  description = "Instruction set of the image: x86_64 or arm64 (must match the pushed image)."
  type        = string
  default     = "x86_64"
  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture: x86_64 or arm64."
  }
}

variable "extra_env" {
  description = "Extra environment variables for the function (see the README's configuration section)."
  type        = map(string)
  default     = {}
}

variable "offline_checks" {
  description = "Dummy credentials and no AWS API calls during plan: only for offline CI checks, never for a real deploy."
  type        = bool
  default     = false
}

variable "aws_endpoint_url" {
  description = "Send every AWS API call to this endpoint (a local moto server in tests). null = the real AWS."
  type        = string
  default     = null
}

variable "qdrant_url" {
  description = "A Qdrant server for search and writes (QDRANT_URL); null = none (or an index baked in with deploy.sh --index)."
  type        = string
  default     = null
  validation {
    condition     = var.qdrant_url == null ? true : can(regex("^https?://[^/]+", var.qdrant_url))
    error_message = "qdrant_url: an http(s) URL."
  }
}

variable "qdrant_collection" {
  description = "The Qdrant collection the function serves (QDRANT_COLLECTION)."
  type        = string
  default     = "clipserve"
}

variable "qdrant_api_key_secret_arn" {
  description = "ARN of a Secrets Manager secret holding the Qdrant API key (a plain string). The function reads it once at init; the role may read that secret only. null = no key."
  type        = string
  default     = null
  validation {
    condition     = var.qdrant_api_key_secret_arn == null ? true : can(regex("^arn:aws[a-z-]*:secretsmanager:", var.qdrant_api_key_secret_arn))
    error_message = "qdrant_api_key_secret_arn: a Secrets Manager secret ARN."
  }
}

variable "gpu_type" {
  description = "Lambda has no GPUs: must stay null (GPU serving: terraform/cloudrun with gpu_type)."
  type        = string
  default     = null
  validation {
    condition     = var.gpu_type == null
    error_message = "Lambda has no GPUs: leave gpu_type unset here; for a GPU deploy to Cloud Run (terraform/cloudrun gpu_type = \"nvidia-l4\", ./deploy.sh cloudrun --gpu)."
  }
}

variable "redis_url" {
  description = "The shared cache (REDIS_URL, without a password: rediss://HOST:PORT/0). This module creates no ElastiCache and no VPC attachment: a function in a VPC reaches the internet (image URLs) only through a NAT gateway, so point it at a Redis it can reach as it is (e.g. a managed Redis with TLS and AUTH), or add vpc_config, the NAT and an ElastiCache yourself. null = none."
  type        = string
  default     = null
  validation {
    condition     = var.redis_url == null ? true : can(regex("^rediss?://[^@]+$", var.redis_url))
    error_message = "redis_url: redis:// or rediss:// without a password in it (use redis_password_secret_arn)."
  }
}

variable "redis_password_secret_arn" {
  description = "ARN of a Secrets Manager secret holding the Redis AUTH password; read once at init as REDIS_PASSWORD, the role may read that secret only. null = no password."
  type        = string
  default     = null
  validation {
    condition     = var.redis_password_secret_arn == null ? true : can(regex("^arn:aws[a-z-]*:secretsmanager:", var.redis_password_secret_arn))
    error_message = "redis_password_secret_arn: a Secrets Manager secret ARN."
  }
}

variable "stable_version" {
  description = "Canary releases: the published version the 'live' alias keeps for the traffic the canary does not get (deploy.sh --canary records it). null: 'live' points at the version this apply publishes."
  type        = string
  default     = null
  validation {
    condition     = var.stable_version == null || can(regex("^[0-9]+$", var.stable_version))
    error_message = "stable_version: a published version number."
  }
}

variable "canary_percent" {
  description = "Percent of the 'live' alias' invocations routed to the newly published version (weighted alias routing) while stable_version keeps the rest; the new version is also reachable alone at the 'canary' alias' function URL."
  type        = number
  default     = 0
  validation {
    condition     = var.canary_percent >= 0 && var.canary_percent < 100 && floor(var.canary_percent) == var.canary_percent
    error_message = "canary_percent: a whole number from 0 to 99 (100 is --promote: stable_version = null)."
  }
}

variable "otlp_endpoint" {
  description = "OpenTelemetry traces over OTLP/HTTP to this collector (OTEL_EXPORTER_OTLP_ENDPOINT, e.g. https://otel.example.com:4318); spans are flushed at the end of each invocation. null: tracing off. Headers (an API key) go in extra_env as OTEL_EXPORTER_OTLP_HEADERS."
  type        = string
  default     = null
  validation {
    condition     = var.otlp_endpoint == null || can(regex("^https?://", var.otlp_endpoint))
    error_message = "otlp_endpoint: an http(s) URL."
  }
}

variable "ingest_bucket" {
  description = "An existing S3 bucket whose object events are indexed into the Qdrant collection (docs/ingest.md): S3 notifications into an SQS queue with a dead-letter queue, an event source mapping with ReportBatchItemFailures. Needs qdrant_url. null = no ingest."
  type        = string
  default     = null
  validation {
    condition     = var.ingest_bucket == null ? true : can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.ingest_bucket))
    error_message = "ingest_bucket: an S3 bucket name."
  }
  validation {
    condition     = var.ingest_bucket == null || var.qdrant_url != null
    error_message = "ingest_bucket: ingest writes to a Qdrant collection; set qdrant_url too."
  }
}

variable "ingest_batch_size" {
  description = "SQS records per invocation: their images are embedded in one model call."
  type        = number
  default     = 10
  validation {
    condition     = var.ingest_batch_size >= 1 && var.ingest_batch_size <= 10
    error_message = "ingest_batch_size: 1 to 10 (larger batches need a batching window)."
  }
}

variable "ingest_max_concurrency" {
  description = "Most concurrent invocations the queue drives (the rest of reserved_concurrency keeps serving HTTP)."
  type        = number
  default     = 2
  validation {
    condition     = var.ingest_max_concurrency >= 2 && var.ingest_max_concurrency <= 1000
    error_message = "ingest_max_concurrency: Lambda allows 2 to 1000."
  }
}

variable "ingest_max_receive_count" {
  description = "Receives of one record before the queue's redrive policy moves it to the dead-letter queue."
  type        = number
  default     = 10
  validation {
    condition     = var.ingest_max_receive_count >= 1 && var.ingest_max_receive_count <= 1000
    error_message = "ingest_max_receive_count: 1 to 1000."
  }
}
