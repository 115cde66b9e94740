# Dashboards and alerts in Cloud Monitoring (monitoring_enabled), over Cloud Run's built-in metrics and
# log-based metrics made from the service's one JSON line per request: no sidecar, nothing scraped. Queries are
# PromQL, like monitoring/prometheus/alerts.yml. The metrics and policies are data in locals.tf (log_metrics,
# alerts), so tests/deploy/test_monitoring_tf.py evaluates them offline and checks that every query names a
# Cloud Run metric or a log-based metric defined here, read from fields the request line really has.

resource "google_logging_metric" "service" {
  for_each = local.monitor ? local.log_metrics : {}
  name     = each.key
  filter   = each.value.filter

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = each.value.kind == "distribution" ? "DISTRIBUTION" : "INT64"
    unit        = each.value.unit
    dynamic "labels" {
      for_each = each.value.labels
      content {
        key        = labels.key
        value_type = "STRING"
      }
    }
  }
  value_extractor  = each.value.value
  label_extractors = each.value.labels

  dynamic "bucket_options" {
    for_each = each.value.kind == "distribution" ? [1] : []
    content {
      exponential_buckets {
        num_finite_buckets = 40
        growth_factor      = 1.4
        scale              = 1
      }
    }
  }
}

resource "google_monitoring_dashboard" "service" {
  count          = local.monitor ? 1 : 0
  dashboard_json = templatefile("${path.module}/monitoring/dashboard.json.tftpl", { service = var.name })
  depends_on     = [google_logging_metric.service]
}

resource "google_monitoring_alert_policy" "service" {
  for_each              = local.monitor ? local.alerts : {}
  display_name          = "${var.name}: ${each.key}"
  combiner              = "OR"
  notification_channels = var.notification_channels
  severity              = startswith(each.key, "5xx") || startswith(each.key, "model") || startswith(each.key, "search") ? "CRITICAL" : "WARNING"

  conditions {
    display_name = each.key
    condition_prometheus_query_language {
      query               = each.value[0]
      duration            = "${each.value[1]}s"
      evaluation_interval = "60s"
    }
  }

  documentation {
    content   = each.value[2]
    mime_type = "text/markdown"
  }

  depends_on = [google_logging_metric.service]
}
