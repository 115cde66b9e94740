# Ingest from bucket events (docs/ingest.md), off unless ingest_bucket names a bucket: S3 notifies an SQS queue
# of created and removed objects; an event source mapping hands the function batches of up to ingest_batch_size
# with ReportBatchItemFailures (only the records it names are retried), at most ingest_max_concurrency at once;
# after ingest_max_receive_count receives the queue's redrive policy moves a record to the dead-letter queue.
# The function reads objects with its own role and forwards what can never succeed to that queue once.
# Note: aws_s3_bucket_notification owns the bucket's whole notification configuration.

locals {
  ingest = var.ingest_bucket != null && local.deploy_app
  ingest_env = local.ingest ? {
    INGEST_BUCKETS     = "s3://${var.ingest_bucket}"
    INGEST_DEAD_LETTER = aws_sqs_queue.ingest_dead[0].url
  } : {}
}

data "aws_s3_bucket" "ingest" {
  count  = local.ingest ? 1 : 0
  bucket = var.ingest_bucket
}

resource "aws_sqs_queue" "ingest_dead" {
  count                     = local.ingest ? 1 : 0
  name                      = "${var.name}-ingest-dead"
  message_retention_seconds = 1209600 # 14 days to look at what failed and redrive it
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue" "ingest" {
  count                   = local.ingest ? 1 : 0
  name                    = "${var.name}-ingest"
  sqs_managed_sse_enabled = true
  # AWS: at least six times the function's timeout, so a batch in flight is not handed out again.
  visibility_timeout_seconds = 6 * var.timeout_s
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.ingest_dead[0].arn
    maxReceiveCount     = var.ingest_max_receive_count
  })
}

data "aws_iam_policy_document" "s3_sends" {
  count = local.ingest ? 1 : 0
  statement {
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.ingest[0].arn]
    principals {
      type        = "Service"
      identifiers = ["s3.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [data.aws_s3_bucket.ingest[0].arn]
    }
  }
}

resource "aws_sqs_queue_policy" "s3_sends" {
  count     = local.ingest ? 1 : 0
  queue_url = aws_sqs_queue.ingest[0].id
  policy    = data.aws_iam_policy_document.s3_sends[0].json
}

resource "aws_s3_bucket_notification" "ingest" {
  count  = local.ingest ? 1 : 0
  bucket = var.ingest_bucket
  queue {
    queue_arn = aws_sqs_queue.ingest[0].arn
    events    = ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]
  }
  depends_on = [aws_sqs_queue_policy.s3_sends]
}

# The function reads the bucket (backfills list it), takes from the queue and forwards to the dead-letter queue.
data "aws_iam_policy_document" "ingest" {
  count = local.ingest ? 1 : 0
  statement {
    actions   = ["s3:GetObject"]
    resources = ["${data.aws_s3_bucket.ingest[0].arn}/*"]
  }
  statement {
    actions   = ["s3:ListBucket"]
    resources = [data.aws_s3_bucket.ingest[0].arn]
  }
  statement {
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility"]
    resources = [aws_sqs_queue.ingest[0].arn]
  }
  statement {
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.ingest_dead[0].arn]
  }
}

resource "aws_iam_role_policy" "ingest" {
  count  = local.ingest ? 1 : 0
  name   = "ingest-from-bucket-events"
  role   = aws_iam_role.function.id
  policy = data.aws_iam_policy_document.ingest[0].json
}

resource "aws_lambda_event_source_mapping" "ingest" {
  count                   = local.ingest ? 1 : 0
  event_source_arn        = aws_sqs_queue.ingest[0].arn
  function_name           = aws_lambda_alias.live[0].arn
  batch_size              = var.ingest_batch_size
  function_response_types = ["ReportBatchItemFailures"]
  scaling_config {
    maximum_concurrency = var.ingest_max_concurrency
  }
  depends_on = [aws_iam_role_policy.ingest]
}
