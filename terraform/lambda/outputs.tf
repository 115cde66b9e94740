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
