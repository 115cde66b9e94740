terraform {
  required_version = ">= 1.9" # cross-variable validation
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.60, < 6.0"
    }
  }
}

# offline_checks switches the provider to dummy credentials and skips every AWS API call that
# init/validate/plan would otherwise make, so CI can check this module without an account.
# aws_endpoint_url points every service at one endpoint (moto on loopback in tests).
provider "aws" {
  region                      = var.region
  access_key                  = var.offline_checks ? "offline-checks" : null
  secret_key                  = var.offline_checks ? "offline-checks" : null
  skip_credentials_validation = var.offline_checks
  skip_requesting_account_id  = var.offline_checks
  skip_metadata_api_check     = var.offline_checks
  skip_region_validation      = var.offline_checks

  dynamic "endpoints" {
    for_each = var.aws_endpoint_url == null ? [] : [var.aws_endpoint_url]
    content {
      cloudwatchlogs = endpoints.value
      ecr            = endpoints.value
      iam            = endpoints.value
      lambda         = endpoints.value
      sts            = endpoints.value
    }
  }

  default_tags {
    tags = { app = "clipserve" }
  }
}
