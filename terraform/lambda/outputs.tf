output "url" {
  description = "HTTPS URL of the service (the 'live' alias' function URL)."
  value       = local.deploy_app ? aws_lambda_function_url.live[0].function_url : null
}

output "url_auth" {
  description = "AWS_IAM: sign requests with SigV4 (service 'lambda'); NONE: public."
  value       = var.function_url_auth
}

output "function_name" {
  value = local.deploy_app ? aws_lambda_function.service[0].function_name : null
}

output "ecr_repository_url" {
  description = "Push images here (deploy.sh does)."
  value       = aws_ecr_repository.images.repository_url
}

output "image_uri" {
  value = local.image_uri
}

output "memory_mb" {
  value = local.memory_mb
}

output "version" {
  description = "The version this apply published (deploy.sh --canary records the previous one as stable_version)."
  value       = local.deploy_app ? aws_lambda_function.service[0].version : null
}

output "live_version" {
  description = "The version the 'live' alias serves (the stable one while a canary runs)."
  value       = local.deploy_app ? aws_lambda_alias.live[0].function_version : null
}

output "canary_url" {
  description = "The 'canary' alias' function URL: the new version alone (null unless a canary runs)."
  value       = local.deploy_app && var.stable_version != null ? aws_lambda_function_url.canary[0].function_url : null
}
