# Offline unit tests: `terraform test` with a mocked AWS provider (no credentials, no network).

mock_provider "aws" {
  mock_resource "aws_iam_role" {
    defaults = {
      arn = "arn:aws:iam::123456789012:role/clipserve-lambda"
    }
  }
  mock_resource "aws_cloudwatch_log_group" {
    defaults = {
      arn = "arn:aws:logs:us-east-1:123456789012:log-group:/aws/lambda/clipserve"
    }
  }
  mock_resource "aws_ecr_repository" {
    defaults = {
      repository_url = "123456789012.dkr.ecr.us-east-1.amazonaws.com/clipserve"
    }
  }
  mock_resource "aws_lambda_function_url" {
    defaults = {
      function_url = "https://abc123.lambda-url.us-east-1.on.aws/"
    }
  }
  mock_resource "aws_sqs_queue" {
    defaults = {
      arn = "arn:aws:sqs:us-east-1:123456789012:clipserve-ingest"
      url = "https://sqs.us-east-1.amazonaws.com/123456789012/clipserve-ingest-dead"
    }
  }
  mock_resource "aws_lambda_alias" {
    defaults = {
      arn = "arn:aws:lambda:us-east-1:123456789012:function:clipserve:live"
    }
  }
  mock_data "aws_s3_bucket" {
    defaults = {
      arn = "arn:aws:s3:::photos"
    }
  }
  mock_data "aws_iam_policy_document" {
    defaults = {
      json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}"
    }
  }
}

variables {
  image_tag = "test-1"
}

run "defaults_are_private_and_bounded" {
  command = apply # mocked: nothing leaves this machine

  assert {
    condition     = aws_lambda_function.service[0].package_type == "Image"
    error_message = "the function must run the container image"
  }
  assert {
    condition     = aws_lambda_function.service[0].memory_size == 3008 && aws_lambda_function.service[0].timeout == 60
    error_message = "english defaults: 3008 MB, 60 s"
  }
  assert {
    condition     = aws_lambda_function.service[0].reserved_concurrent_executions == 10
    error_message = "reserved concurrency must default to 10"
  }
  assert {
    condition     = aws_lambda_function.service[0].ephemeral_storage[0].size == 512
    error_message = "ephemeral storage must default to 512 MB"
  }
  assert {
    condition     = aws_lambda_function_url.live[0].authorization_type == "AWS_IAM" && aws_lambda_function_url.live[0].qualifier == "live"
    error_message = "the function URL must be IAM-authenticated by default and point at the live alias"
  }
  assert {
    condition     = length(aws_lambda_permission.public_url) == 0 && length(aws_lambda_permission.iam_invokers) == 0
    error_message = "no resource policy may open the function by default"
  }
  assert {
    condition     = length(aws_lambda_provisioned_concurrency_config.live) == 0
    error_message = "no provisioned (always billed) concurrency by default"
  }
  assert {
    condition = (
      aws_lambda_function.service[0].image_config[0].entry_point == tolist(["/opt/venv/bin/python", "-m", "awslambdaric"]) &&
      aws_lambda_function.service[0].image_config[0].command == tolist(["infra.lambda_handler.handler"])
    )
    error_message = "Lambda must run awslambdaric with infra.lambda_handler.handler"
  }
  assert {
    condition     = aws_lambda_function.service[0].image_uri == "123456789012.dkr.ecr.us-east-1.amazonaws.com/clipserve:test-1"
    error_message = "image URI must be the module's ECR repository with the given tag"
  }
  assert {
    condition     = aws_lambda_function.service[0].environment[0].variables["MODEL_VARIANT"] == "english"
    error_message = "MODEL_VARIANT must reach the function"
  }
  assert {
    condition     = aws_lambda_function.service[0].environment[0].variables["BATCH_MAX_WAIT_MS"] == "0"
    error_message = "one request per instance: the batcher must not wait for others"
  }
  assert {
    condition     = aws_cloudwatch_log_group.function.retention_in_days == 30
    error_message = "logs must expire (30 days by default)"
  }
  assert {
    condition     = jsondecode(aws_ecr_lifecycle_policy.images.policy).rules[0].selection.countNumber == 10
    error_message = "the ECR lifecycle policy must keep 10 images"
  }
  assert {
    condition     = output.url == "https://abc123.lambda-url.us-east-1.on.aws/"
    error_message = "the URL output must be the function URL"
  }
}

run "without_an_image_only_the_registry_exists" {
  command = apply # mocked: nothing leaves this machine
  variables {
    image_tag = null
  }
  assert {
    condition     = length(aws_lambda_function.service) == 0 && length(aws_lambda_function_url.live) == 0
    error_message = "before the first push there is no image for a function"
  }
  assert {
    condition     = aws_ecr_repository.images.name == "clipserve" && output.url == null
    error_message = "the first apply must create the repository and no URL"
  }
}

run "multilingual_gets_more_memory" {
  command = apply # mocked: nothing leaves this machine
  variables {
    model_variant = "multilingual"
  }
  assert {
    condition     = aws_lambda_function.service[0].memory_size == 6144
    error_message = "multilingual default memory must be 6144 MB"
  }
}

run "knobs_reach_the_function" {
  command = apply # mocked: nothing leaves this machine
  variables {
    memory_mb               = 10240
    timeout_s               = 900
    ephemeral_storage_mb    = 2048
    reserved_concurrency    = 4
    provisioned_concurrency = 2
  }
  assert {
    condition     = aws_lambda_function.service[0].memory_size == 10240 && aws_lambda_function.service[0].timeout == 900
    error_message = "memory and timeout must follow the variables"
  }
  assert {
    condition     = aws_lambda_function.service[0].reserved_concurrent_executions == 4
    error_message = "reserved concurrency must follow the variable"
  }
  assert {
    condition     = aws_lambda_provisioned_concurrency_config.live[0].provisioned_concurrent_executions == 2 && aws_lambda_provisioned_concurrency_config.live[0].qualifier == "live"
    error_message = "provisioned concurrency must be set on the live alias"
  }
}

run "public_only_when_asked" {
  command = apply # mocked: nothing leaves this machine
  variables {
    function_url_auth = "NONE"
  }
  assert {
    condition     = aws_lambda_function_url.live[0].authorization_type == "NONE"
    error_message = "auth NONE must reach the function URL"
  }
  assert {
    condition     = length(aws_lambda_permission.public_url) == 2 && alltrue([for p in aws_lambda_permission.public_url : p.principal == "*"])
    error_message = "a public URL needs InvokeFunctionUrl and InvokeFunction for everyone"
  }
}

run "named_invokers_get_both_actions" {
  command = apply # mocked: nothing leaves this machine
  variables {
    invoker_principals = ["arn:aws:iam::210987654321:role/caller"]
  }
  assert {
    condition     = length(aws_lambda_permission.iam_invokers) == 2 && alltrue([for p in aws_lambda_permission.iam_invokers : p.principal == "arn:aws:iam::210987654321:role/caller"])
    error_message = "each invoker needs InvokeFunctionUrl and InvokeFunction"
  }
}

run "memory_out_of_range_is_rejected" {
  command = plan
  variables {
    memory_mb = 20000
  }
  expect_failures = [var.memory_mb]
}

run "timeout_out_of_range_is_rejected" {
  command = plan
  variables {
    timeout_s = 901
  }
  expect_failures = [var.timeout_s]
}

run "provisioned_above_reserved_is_rejected" {
  command = plan
  variables {
    reserved_concurrency    = 2
    provisioned_concurrency = 3
  }
  expect_failures = [var.provisioned_concurrency]
}

run "unknown_auth_is_rejected" {
  command = plan
  variables {
    function_url_auth = "OPEN"
  }
  expect_failures = [var.function_url_auth]
}

run "unknown_variant_is_rejected" {
  command = plan
  variables {
    model_variant = "klingon"
  }
  expect_failures = [var.model_variant]
}

run "a_canary_keeps_live_on_the_stable_version_and_weights_the_new_one" {
  command = apply

  variables {
    stable_version = "7"
    canary_percent = 5
    otlp_endpoint  = "https://otel.example.com:4318"
  }

  assert {
    condition     = aws_lambda_alias.live[0].function_version == "7"
    error_message = "live must stay on the stable version during a canary"
  }
  assert {
    condition     = aws_lambda_alias.live[0].routing_config[0].additional_version_weights[aws_lambda_function.service[0].version] == 0.05
    error_message = "live must send canary_percent of invocations to the new version"
  }
  assert {
    condition     = aws_lambda_alias.canary[0].function_version == aws_lambda_function.service[0].version && aws_lambda_function_url.canary[0].qualifier == "canary"
    error_message = "the canary alias (and its URL, for the smoke test) must point at the new version alone"
  }
  assert {
    condition     = aws_lambda_function.service[0].environment[0].variables["OTEL_EXPORTER_OTLP_ENDPOINT"] == "https://otel.example.com:4318" && aws_lambda_function.service[0].environment[0].variables["OTEL_ENABLED"] == "true"
    error_message = "otlp_endpoint must turn tracing on with the OTLP exporter"
  }
}

run "promoted_or_no_canary_means_one_version_and_no_canary_alias" {
  command = apply

  assert {
    condition     = aws_lambda_alias.live[0].function_version == aws_lambda_function.service[0].version && length(aws_lambda_alias.live[0].routing_config) == 0
    error_message = "without a stable_version live serves the published version alone"
  }
  assert {
    condition     = length(aws_lambda_alias.canary) == 0 && length(aws_lambda_function_url.canary) == 0
    error_message = "no canary alias outside a canary"
  }
  assert {
    condition     = !contains(keys(aws_lambda_function.service[0].environment[0].variables), "OTEL_ENABLED")
    error_message = "tracing is off by default"
  }
}

run "ingest_is_off_by_default" {
  command = apply # mocked: nothing leaves this machine
  assert {
    condition     = length(aws_sqs_queue.ingest) == 0 && length(aws_lambda_event_source_mapping.ingest) == 0 && length(aws_s3_bucket_notification.ingest) == 0
    error_message = "no queue, mapping or bucket notification unless ingest_bucket is set"
  }
  assert {
    condition     = !contains(keys(aws_lambda_function.service[0].environment[0].variables), "INGEST_BUCKETS")
    error_message = "no INGEST_BUCKETS without ingest_bucket"
  }
}

run "ingest_wires_bucket_queue_dead_letters_and_the_mapping" {
  command = apply # mocked: nothing leaves this machine
  variables {
    ingest_bucket = "photos"
    qdrant_url    = "https://qdrant.example.com:6333"
  }
  assert {
    condition     = aws_lambda_event_source_mapping.ingest[0].function_response_types == toset(["ReportBatchItemFailures"])
    error_message = "the mapping must report batch item failures (one bad record retried alone)"
  }
  assert {
    condition     = aws_lambda_event_source_mapping.ingest[0].scaling_config[0].maximum_concurrency == 2 && aws_lambda_event_source_mapping.ingest[0].batch_size == 10
    error_message = "bounded concurrency (2) and batches of 10 by default"
  }
  assert {
    condition     = jsondecode(aws_sqs_queue.ingest[0].redrive_policy).maxReceiveCount == 10 && aws_sqs_queue.ingest[0].visibility_timeout_seconds == 360
    error_message = "a redrive policy after 10 receives, and a visibility timeout of 6 x the function timeout"
  }
  assert {
    condition     = aws_lambda_function.service[0].environment[0].variables["INGEST_BUCKETS"] == "s3://photos" && aws_lambda_function.service[0].environment[0].variables["INGEST_DEAD_LETTER"] == aws_sqs_queue.ingest_dead[0].url
    error_message = "the function is told its bucket and its dead-letter queue"
  }
  assert {
    condition     = toset([for q in aws_s3_bucket_notification.ingest[0].queue : q.queue_arn]) == toset([aws_sqs_queue.ingest[0].arn])
    error_message = "the bucket notifies the ingest queue"
  }
}

run "ingest_needs_qdrant" {
  command = plan
  variables {
    ingest_bucket = "photos"
  }
  expect_failures = [var.ingest_bucket]
}
