locals {
  # Memory when memory_mb is null: the process (runtime libraries, a batch of images) + each model once used
  # (bench/RESULTS.md "Model variants"); english alone stays at 3008 and multilingual at 6144, as measured before.
  base_memory_mb = 1536
  model_memory_mb = {
    english          = 1472
    multilingual     = 4608
    "siglip2-b32"    = 2560
    "siglip2-b16"    = 2560
    "siglip2-so400m" = 7168
  }
  models = var.models != null ? var.models : [var.model_variant]
  # A baked search index (deploy.sh --index) is read at start: the models' memory plus 1.25 x its size.
  memory_mb = coalesce(var.memory_mb, min(10240, local.base_memory_mb + sum([for m in local.models : local.model_memory_mb[m]]) + ceil(1.25 * var.index_mib)))
  model_env = length(local.models) > 1 ? { MODELS = join(",", local.models) } : { MODEL_VARIANT = local.models[0] }
  image_uri = (var.image_uri != null ? var.image_uri
  : var.image_tag != null ? "${aws_ecr_repository.images.repository_url}:${var.image_tag}" : null)
  deploy_app = var.image_uri != null || var.image_tag != null # known at plan time, unlike image_uri
  log_group  = "/aws/lambda/${var.name}"
}

resource "aws_ecr_repository" "images" {
  name                 = var.name
  image_tag_mutability = "IMMUTABLE" # deploy.sh pushes a new tag per deploy; a tag never changes meaning
  force_delete         = false

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
  }
}

resource "aws_ecr_lifecycle_policy" "images" {
  repository = aws_ecr_repository.images.name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "keep the newest ${var.ecr_keep_images} images"
      selection = {
        tagStatus   = "any"
        countType   = "imageCountMoreThan"
        countNumber = var.ecr_keep_images
      }
      action = { type = "expire" }
    }]
  })
}

resource "aws_cloudwatch_log_group" "function" {
  #checkov:skip=CKV_AWS_158:logs carry request metadata, never bodies or keys; CloudWatch encrypts them at rest by default
  #checkov:skip=CKV_AWS_338:retention is the log_retention_days variable (30 days by default, for cost); set 365 where policy needs it
  name              = local.log_group
  retention_in_days = var.log_retention_days
}

data "aws_iam_policy_document" "assume_by_lambda" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

# Least privilege: the function only writes its own logs. Image pulls from a same-account
# repository are granted by Lambda on the repository itself at create time, not through this role.
data "aws_iam_policy_document" "write_own_logs" {
  statement {
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.function.arn}:*"]
  }
}

resource "aws_iam_role" "function" {
  name               = "${var.name}-lambda"
  assume_role_policy = data.aws_iam_policy_document.assume_by_lambda.json
}

resource "aws_iam_role_policy" "write_own_logs" {
  name   = "write-own-logs"
  role   = aws_iam_role.function.id
  policy = data.aws_iam_policy_document.write_own_logs.json
}

# The Qdrant API key and the Redis password: read once at init from Secrets Manager (Lambda has no secret references in its
# environment), so the value never enters the Terraform state or the function's configuration.
data "aws_iam_policy_document" "read_secrets" {
  count = length(local.secret_arns) == 0 ? 0 : 1
  statement {
    actions   = ["secretsmanager:GetSecretValue"]
    resources = local.secret_arns
  }
}

locals {
  # The secrets the function reads at init (the Qdrant key, the Redis password): the role may read these only.
  secret_arns = compact([var.qdrant_api_key_secret_arn, var.redis_password_secret_arn])
}

resource "aws_iam_role_policy" "read_secrets" {
  count  = length(local.secret_arns) == 0 ? 0 : 1
  name   = "read-init-secrets"
  role   = aws_iam_role.function.id
  policy = data.aws_iam_policy_document.read_secrets[0].json
}

resource "aws_lambda_function" "service" {
  #checkov:skip=CKV_AWS_116:invoked synchronously through the function URL; a dead-letter queue only receives async events
  #checkov:skip=CKV_AWS_117:it fetches image URLs from the internet; a VPC would need a NAT gateway and it reaches no private resource
  #checkov:skip=CKV_AWS_272:Lambda code signing covers .zip packages only, not container images (ECR scan on push is on instead)
  #checkov:skip=CKV_AWS_173:environment holds no secrets (variant, limits; put API keys in API_KEYS_FILE, not extra_env); AWS encrypts it at rest
  #checkov:skip=CKV_AWS_50:X-Ray costs per trace and needs more role permissions; the JSON request logs carry latency per request
  count         = local.deploy_app ? 1 : 0
  function_name = var.name
  role          = aws_iam_role.function.arn
  package_type  = "Image"
  image_uri     = local.image_uri
  architectures = [var.architecture]
  publish       = true # the 'live' alias (and provisioned concurrency) needs a numbered version

  memory_size                    = local.memory_mb
  timeout                        = var.timeout_s
  reserved_concurrent_executions = var.reserved_concurrency

  ephemeral_storage {
    size = var.ephemeral_storage_mb
  }

  # The image's CMD starts gunicorn for Cloud Run; on Lambda the runtime interface client
  # drives the same Flask app through infra/lambda_handler.py.
  image_config {
    entry_point       = ["/opt/venv/bin/python", "-m", "awslambdaric"]
    command           = ["infra.lambda_handler.handler"]
    working_directory = "/app"
  }

  environment {
    variables = merge(
      # Lambda refuses synchronous payloads over 6 MB before the handler runs; say so in our own 413.
      # One request per instance at a time: a batch can never gain items from other requests, so
      # the batcher should not wait for them. Responses are capped at 6 MB too: 512 vectors of 640
      # floats fit as JSON numbers, 2048 (OpenAI's limit) do not.
      { MAX_BODY_BYTES = "6291456", BATCH_MAX_WAIT_MS = "0", OPENAI_MAX_INPUTS = "512" },
      var.extra_env,
      local.model_env,
      var.qdrant_url == null ? {} : { QDRANT_URL = var.qdrant_url, QDRANT_COLLECTION = var.qdrant_collection },
      var.qdrant_api_key_secret_arn == null ? {} : { QDRANT_API_KEY_SECRET_ARN = var.qdrant_api_key_secret_arn },
      var.redis_url == null ? {} : { REDIS_URL = var.redis_url },
      var.redis_password_secret_arn == null ? {} : { REDIS_PASSWORD_SECRET_ARN = var.redis_password_secret_arn },
      var.otlp_endpoint == null ? {} : { OTEL_ENABLED = "true", OTEL_TRACES_EXPORTER = "otlp", OTEL_EXPORTER_OTLP_ENDPOINT = var.otlp_endpoint },
      local.ingest_env,
    )
  }

  logging_config {
    log_format = "Text" # the app already writes one JSON object per line
    log_group  = aws_cloudwatch_log_group.function.name
  }

  depends_on = [aws_iam_role_policy.write_own_logs]
}

# Canary releases on Lambda's own weighted alias routing: with a stable_version, 'live' stays on it and sends
# canary_percent of invocations to the version this apply published; 'canary' points at that version alone.
resource "aws_lambda_alias" "live" {
  count            = local.deploy_app ? 1 : 0
  name             = "live"
  function_name    = aws_lambda_function.service[0].function_name
  function_version = coalesce(var.stable_version, aws_lambda_function.service[0].version)

  dynamic "routing_config" {
    for_each = var.stable_version != null && var.canary_percent > 0 ? [1] : []
    content {
      additional_version_weights = { (aws_lambda_function.service[0].version) = var.canary_percent / 100 }
    }
  }
}

resource "aws_lambda_alias" "canary" {
  count            = local.deploy_app && var.stable_version != null ? 1 : 0
  name             = "canary"
  function_name    = aws_lambda_function.service[0].function_name
  function_version = aws_lambda_function.service[0].version
}

resource "aws_lambda_function_url" "canary" {
  count              = local.deploy_app && var.stable_version != null ? 1 : 0
  function_name      = aws_lambda_alias.canary[0].function_name
  qualifier          = aws_lambda_alias.canary[0].name
  authorization_type = var.function_url_auth
  invoke_mode        = "BUFFERED"
}

resource "aws_lambda_provisioned_concurrency_config" "live" {
  count                             = local.deploy_app && var.provisioned_concurrency > 0 ? 1 : 0
  function_name                     = aws_lambda_alias.live[0].function_name
  qualifier                         = aws_lambda_alias.live[0].name
  provisioned_concurrent_executions = var.provisioned_concurrency
}

resource "aws_lambda_function_url" "live" {
  count              = local.deploy_app ? 1 : 0
  function_name      = aws_lambda_alias.live[0].function_name
  qualifier          = aws_lambda_alias.live[0].name
  authorization_type = var.function_url_auth
  invoke_mode        = "BUFFERED"
}

# Since October 2025 a function URL needs both lambda:InvokeFunctionUrl and lambda:InvokeFunction
# in the resource policy. Provider 5.x cannot add the lambda:InvokedViaFunctionUrl condition to
# the second one; with auth NONE that adds nothing an attacker lacks (the URL is already public).
locals {
  url_invoke_actions = ["lambda:InvokeFunctionUrl", "lambda:InvokeFunction"]
  iam_invoker_grants = {
    for pair in setproduct(var.invoker_principals, local.url_invoke_actions) :
    "${pair[0]} ${pair[1]}" => { principal = pair[0], action = pair[1] }
  }
}

resource "aws_lambda_permission" "public_url" {
  #checkov:skip=CKV_AWS_301:exists only when function_url_auth = NONE, an explicit opt-in to a public URL
  for_each               = local.deploy_app && var.function_url_auth == "NONE" ? toset(local.url_invoke_actions) : toset([])
  statement_id           = "public-${replace(each.value, ":", "-")}"
  action                 = each.value
  function_name          = aws_lambda_alias.live[0].function_name
  qualifier              = aws_lambda_alias.live[0].name
  principal              = "*"
  function_url_auth_type = each.value == "lambda:InvokeFunctionUrl" ? "NONE" : null
}

resource "aws_lambda_permission" "iam_invokers" {
  for_each               = local.deploy_app ? local.iam_invoker_grants : {}
  statement_id           = "invoker-${substr(sha256(each.key), 0, 16)}"
  action                 = each.value.action
  function_name          = aws_lambda_alias.live[0].function_name
  qualifier              = aws_lambda_alias.live[0].name
  principal              = each.value.principal
  function_url_auth_type = each.value.action == "lambda:InvokeFunctionUrl" ? "AWS_IAM" : null
}

resource "aws_lambda_permission" "public_canary_url" {
  #checkov:skip=CKV_AWS_301:exists only while a canary runs with function_url_auth = NONE, like public_url
  for_each               = local.deploy_app && var.stable_version != null && var.function_url_auth == "NONE" ? toset(local.url_invoke_actions) : toset([])
  statement_id           = "public-canary-${replace(each.value, ":", "-")}"
  action                 = each.value
  function_name          = aws_lambda_alias.canary[0].function_name
  qualifier              = aws_lambda_alias.canary[0].name
  principal              = "*"
  function_url_auth_type = each.value == "lambda:InvokeFunctionUrl" ? "NONE" : null
}
