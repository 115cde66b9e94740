#!/usr/bin/env bash
# Deploy clipserve to Google Cloud Run or AWS Lambda: build and push the image, apply Terraform,
# then smoke-test the new URL with infra/smoke.sh.
#
#   ./deploy.sh cloudrun|lambda [--variant V[,V2...]] [--project ID] [--region R] [--dry-run]
#   ./deploy.sh cloudrun|lambda --canary PERCENT [...]     a new revision / version with PERCENT of the traffic
#   ./deploy.sh cloudrun|lambda --promote | --rollback     all traffic to the canary / back to the stable one
#
#   --variant V      model variant to serve (default english), or several, comma-separated, the first the
#                    default (MODELS=english,siglip2-b16: one deployment, each request picks by `model`)
#   --bake B         variants baked into the image, comma-separated (they must include --variant's): clip
#                    (default: english,multilingual; switch MODEL_VARIANT later without a rebuild), all (every
#                    variant, SigLIP 2 included: 1.6-11 GB each), or a list (smaller image, faster cold starts)
#   --project ID     Cloud Run: Google Cloud project (default: GOOGLE_CLOUD_PROJECT, then gcloud config)
#   --region R       Cloud Run default us-central1; Lambda default AWS_REGION, then us-east-1
#   --name N         service / function name (default clipserve)
#   --tag T          image tag (default: git commit + UTC time; tags are immutable)
#   --builder B      Cloud Run only: cloudbuild (default, no local Docker needed) or buildx (local Docker)
#   --public         no authentication (Cloud Run allUsers invoker; Lambda function URL auth NONE)
#   --gpu            Cloud Run only: one NVIDIA L4 per instance (the CUDA build of torch in the image,
#                    TF gpu_type=nvidia-l4: 4 vCPU, 16 GiB, CPU always allocated); Lambda has no GPUs
#   --index DIR      bake the search index version folder DIR into the image (INDEX_DIR=/index); for Lambda,
#                    which has no bucket mounts (Cloud Run: TF_VAR_index_bucket/TF_VAR_index_path instead)
#   --allow-unpinned bake weights that models/registry.py does not pin (a new registry entry; the
#                    shipped ones are all pinned); the bundle manifest records what was fetched
#   --skip-build     deploy an image already pushed under --tag
#   --skip-smoke     do not run infra/smoke.sh afterwards
#   --canary P       deploy the new image as a canary: a new revision (Cloud Run: tagged, at its own URL) or
#                    version (Lambda: the 'canary' alias' URL) is smoke-tested there with no traffic, then gets
#                    P% (1-99) of the traffic on the platform's own split while the current one keeps the rest
#   --promote        send all traffic to the canary (gcloud run services update-traffic / aws lambda update-alias)
#   --rollback       send all traffic back to the stable revision / version (the canary stays, at 0%)
#   --dry-run        print every command, run none
#
# Other Terraform variables (min/max instances, concurrency, memory, ...) come from the environment
# as TF_VAR_<name>, e.g. TF_VAR_min_instances=1 ./deploy.sh cloudrun. See terraform/*/variables.tf.
#
# Exit codes: 0 deployed and smoke-tested, 2 bad usage, 3 a required tool is missing,
# 4 credentials / project / account problem, 5 image build or push failed, 6 terraform failed,
# 7 the smoke test failed (the deployment is live: inspect it).
set -euo pipefail

EXIT_USAGE=2 EXIT_TOOL=3 EXIT_CREDENTIALS=4 EXIT_BUILD=5 EXIT_TERRAFORM=6 EXIT_SMOKE=7
ROOT=$(cd "$(dirname "$0")" && pwd)

usage() { sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; }
fail() { local code=$1; shift; echo "deploy: $*" >&2; exit "$code"; }
usage_error() { echo "deploy: $*" >&2; echo "usage: ./deploy.sh cloudrun|lambda [--variant V] [--project ID] [--region R] [--dry-run] (see --help)" >&2; exit "$EXIT_USAGE"; }

# ---------------------------------------------------------------- arguments
# models/registry.py's variants (tests/deploy/test_deploy_script.py keeps this list equal to the registry's).
VARIANTS="english multilingual siglip2-b32 siglip2-b16 siglip2-so400m"
target="" variant=english bake=clip project=${GOOGLE_CLOUD_PROJECT:-} region="" name=clipserve tag=""
builder="" public=false allow_unpinned=false skip_build=false skip_smoke=false dry_run=false index="" gpu=false
canary="" release=""
need_value() { [ "$2" -ge 2 ] && [[ "${3:-}" != --* ]] || usage_error "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    cloudrun|lambda) [ -z "$target" ] || usage_error "one target only"; target=$1; shift ;;
    --variant) need_value "$1" $# "${2:-}"; variant=$2; shift 2 ;;
    --bake) need_value "$1" $# "${2:-}"; bake=$2; shift 2 ;;
    --project) need_value "$1" $# "${2:-}"; project=$2; shift 2 ;;
    --region) need_value "$1" $# "${2:-}"; region=$2; shift 2 ;;
    --name) need_value "$1" $# "${2:-}"; name=$2; shift 2 ;;
    --tag) need_value "$1" $# "${2:-}"; tag=$2; shift 2 ;;
    --builder) need_value "$1" $# "${2:-}"; builder=$2; shift 2 ;;
    --public) public=true; shift ;;
    --allow-unpinned) allow_unpinned=true; shift ;;
    --index) need_value "$1" $# "${2:-}"; index=$2; shift 2 ;;
    --gpu) gpu=true; shift ;;
    --skip-build) skip_build=true; shift ;;
    --skip-smoke) skip_smoke=true; shift ;;
    --dry-run) dry_run=true; shift ;;
    --canary) need_value "$1" $# "${2:-}"; canary=$2; shift 2 ;;
    --promote|--rollback) [ -z "$release" ] || usage_error "--promote and --rollback: one at a time"; release=${1#--}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage_error "unknown argument '$1'" ;;
  esac
done
[ -n "$target" ] || usage_error "say where: cloudrun or lambda"
if [ -n "$canary" ]; then
  [[ "$canary" =~ ^[1-9][0-9]?$ ]] || usage_error "--canary: a percent from 1 to 99 (100 is --promote)"
  [ -z "$release" ] || usage_error "--canary deploys; --$release moves the traffic of a canary already deployed"
fi
is_variant() { [[ " $VARIANTS " == *" $1 "* ]]; }
served=${variant//,/ }
for v in $served; do is_variant "$v" || usage_error "--variant: '$v' is not a variant ($VARIANTS)"; done
[ "$(echo "$served" | tr ' ' '\n' | sort | uniq -d)" = "" ] || usage_error "--variant: a variant is listed twice"
case "$bake" in
  clip) baked="english multilingual" ;;
  all) baked=$VARIANTS ;;
  *) baked=${bake//,/ }; for v in $baked; do is_variant "$v" || usage_error "--bake: '$v' is not a variant ($VARIANTS)"; done ;;
esac
for v in $served; do [[ " $baked " == *" $v "* ]] || usage_error "--variant $v is not in --bake $bake"; done
default_variant=${served%% *}
case "$target:$builder" in
  cloudrun:) builder=cloudbuild ;;
  cloudrun:cloudbuild|cloudrun:buildx|lambda:|lambda:buildx) ;;
  lambda:*) usage_error "Lambda images are built with docker buildx (--builder buildx)" ;;
  *) usage_error "--builder must be cloudbuild or buildx" ;;
esac
[[ "$name" =~ ^[a-z][a-z0-9-]{0,22}[a-z0-9]$ ]] || usage_error "--name: 2-24 lower-case letters, digits or '-'"
if [ -z "$tag" ]; then
  commit=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo nogit)
  tag="$commit-$(date -u +%Y%m%d%H%M%S)"
fi
[[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || usage_error "--tag: letters, digits, '_', '.', '-' (at most 128)"
if [ "$target" = cloudrun ]; then region=${region:-us-central1}; else region=${region:-${AWS_REGION:-us-east-1}}; fi

build_args=(--build-arg "MODEL_VARIANTS=$baked" --build-arg "MODEL_VARIANT=$default_variant")
# Several models: Terraform's models list (MODELS); one: model_variant as before.
model_vars=(-var "model_variant=$default_variant")
if [[ "$variant" == *,* ]]; then
  model_vars+=(-var "models=[\"${variant//,/\",\"}\"]")
fi
"$allow_unpinned" && build_args+=(--build-arg "BAKE_FLAGS=--allow-unpinned")
if "$gpu"; then
  [ "$target" = cloudrun ] || usage_error "--gpu: Lambda has no GPUs; GPU serving runs on Cloud Run (./deploy.sh cloudrun --gpu)"
  build_args+=(--build-arg "TORCH_INDEX=https://download.pytorch.org/whl/cu126")
fi
index_mib=0 index_var=()
if [ -n "$index" ]; then
  [ -f "$index/manifest.json" ] || usage_error "--index $index: not an index version folder (no manifest.json)"
  "$skip_build" && usage_error "--index needs a build (it goes into the image); drop --skip-build"
  built=$(sed -n 's/.*"variant": "\([^"]*\)".*/\1/p' "$index/manifest.json" | head -1)
  [[ " $served " == *" $built "* ]] \
    || usage_error "--index $index was not built with variant $variant (its manifest.json says ${built:-none})"
  [ "$builder" != cloudbuild ] \
    || usage_error "--index needs --builder buildx (Cloud Build gets the repository only; on Cloud Run serve the index from a bucket: TF_VAR_index_bucket/TF_VAR_index_path)"
  # The Dockerfile's empty search-index stage, replaced by the folder itself (a BuildKit named context): nothing
  # is copied into the repository.
  build_args+=(--build-arg "INDEX_DIR=/index" --build-context "search-index=$index")
  index_mib=$(( ($(du -sb "$index" | cut -f1) + 1048575) / 1048576 ))
  index_var=(-var "$([ "$target" = lambda ] && echo index_mib || echo baked_index_mib)=$index_mib")
fi
gpu_var=()
"$gpu" && gpu_var=(-var "gpu_type=nvidia-l4")

# Dimension the default variant must report (checked by the smoke test): a wrong one means a wrong deploy.
case "$default_variant" in english) dim=512 ;; multilingual) dim=640 ;; siglip2-so400m) dim=1152 ;; *) dim=768 ;; esac

# ---------------------------------------------------------------- running (or printing) commands
# show CMD...: print a command as it would be typed (placeholders like <url> left readable).
show() {
  local arg out="+"
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@,+%\<\>|-]+$ ]]; then out+=" $arg"; else out+=" '${arg//\'/\'\\\'\'}'"; fi
  done
  printf '%s\n' "$out"
}

# run EXIT_CODE CMD...: run the command (dry run: print it); on failure exit with EXIT_CODE.
run() {
  local code=$1; shift
  show "$@"
  "$dry_run" && return 0
  "$@" || fail "$code" "failed (exit $?): $*"
}

# capture VAR EXIT_CODE CMD...: VAR=$(CMD); in a dry run VAR becomes the placeholder <VAR>.
capture() {
  local var=$1 code=$2 value; shift 2
  show "$@"
  if "$dry_run"; then printf -v "$var" '<%s>' "$var"; return 0; fi
  value=$("$@") || fail "$code" "failed (exit $?): $*"
  printf -v "$var" '%s' "$value"
}

require_tools() { # require_tools TOOL... (a dry run only lists them)
  local tool missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  if "$dry_run"; then echo "# needs: $*${missing[*]:+ (missing here: ${missing[*]})}"; return 0; fi
  [ ${#missing[@]} -eq 0 ] || fail "$EXIT_TOOL" "missing tools: ${missing[*]} (see the README's deploy section)"
}

terraform_in() { # terraform_in DIR ARGS...
  local dir=$1; shift
  run "$EXIT_TERRAFORM" terraform -chdir="$dir" "$@"
}

smoke() { # smoke URL [auth args...]
  local url=$1; shift
  if "$skip_smoke"; then echo "deploy: --skip-smoke: not testing $url"; return 0; fi
  local shown=("$@")
  [ "${shown[0]:-}" != --token ] || shown[1]="<identity-token>"  # never print a credential
  show "$ROOT/infra/smoke.sh" "$url" "${shown[@]}" --expect-dim "$dim" --wait 300
  "$dry_run" && return 0
  "$ROOT/infra/smoke.sh" "$url" "$@" --expect-dim "$dim" --wait 300 \
    || fail "$EXIT_SMOKE" "the smoke test failed against $url (the deployment is live; see above)"
}

canary_done() { # canary_done URL STABLE: how to go on
  echo "deploy: canary: $canary% of $target traffic to the new one, at $1 alone; the rest stays on $2"
  echo "deploy: compare them on the dashboard (revision label), then: ./deploy.sh $target --promote | --rollback"
}

# ---------------------------------------------------------------- Cloud Run
gcloud_project() { # the project: --project, else gcloud's configuration
  if [ -z "$project" ]; then
    capture project "$EXIT_CREDENTIALS" gcloud config get-value project
    [ -n "$project" ] || fail "$EXIT_CREDENTIALS" "no project: pass --project or run 'gcloud config set project ID'"
  fi
}

release_cloudrun() { # --promote / --rollback: Cloud Run's own traffic split
  local tf="$ROOT/terraform/cloudrun" where
  require_tools gcloud terraform
  gcloud_project
  where=(--region "$region" --project "$project")
  if [ "$release" = promote ]; then
    run "$EXIT_CREDENTIALS" gcloud run services update-traffic "$name" "${where[@]}" --to-latest
    run "$EXIT_CREDENTIALS" gcloud run services update-traffic "$name" "${where[@]}" --remove-tags stable
  else
    local stable
    capture stable "$EXIT_TERRAFORM" terraform -chdir="$tf" output -raw stable_revision
    [ -n "$stable" ] || fail "$EXIT_USAGE" "no canary is running (terraform output stable_revision is empty)"
    run "$EXIT_CREDENTIALS" gcloud run services update-traffic "$name" "${where[@]}" --to-revisions "$stable=100"
  fi
}

deploy_cloudrun() {
  local tf="$ROOT/terraform/cloudrun" tools=(gcloud terraform curl)
  [ "$builder" = buildx ] && tools+=(docker)
  require_tools "${tools[@]}"

  # Credentials: gcloud for the build and the identity token, ADC for Terraform's google provider.
  if ! "$dry_run"; then
    gcloud auth print-access-token >/dev/null 2>&1 \
      || fail "$EXIT_CREDENTIALS" "gcloud has no credentials: run 'gcloud auth login'"
    gcloud auth application-default print-access-token >/dev/null 2>&1 \
      || fail "$EXIT_CREDENTIALS" "Terraform needs application-default credentials: run 'gcloud auth application-default login'"
  else
    show gcloud auth print-access-token
    show gcloud auth application-default print-access-token
  fi
  gcloud_project

  local tfvars=(-var "project_id=$project" -var "region=$region" -var "name=$name")
  local registry="$region-docker.pkg.dev/$project/$name"
  local image="$registry/clipserve:$tag"

  run "$EXIT_CREDENTIALS" gcloud services enable run.googleapis.com artifactregistry.googleapis.com \
    cloudbuild.googleapis.com iam.googleapis.com --project "$project"
  terraform_in "$tf" init -input=false
  # The repository must exist before the push; -target leaves a running service untouched.
  terraform_in "$tf" apply -input=false -auto-approve -target=google_artifact_registry_repository.images "${tfvars[@]}"

  if ! "$skip_build"; then
    if [ "$builder" = cloudbuild ]; then
      local config
      config=$(cloudbuild_config "$image")
      printf '# cloudbuild.yaml:\n#   %s\n' "${config//$'\n'/$'\n'#   }"
      if "$dry_run"; then
        show gcloud builds submit "$ROOT" --project "$project" --region "$region" --config cloudbuild.yaml
      else
        local dir; dir=$(mktemp -d); printf '%s\n' "$config" > "$dir/cloudbuild.yaml"
        run "$EXIT_BUILD" gcloud builds submit "$ROOT" --project "$project" --region "$region" \
          --config "$dir/cloudbuild.yaml"
        rm -rf "$dir"
      fi
    else
      run "$EXIT_CREDENTIALS" gcloud auth configure-docker "$region-docker.pkg.dev" --quiet
      run "$EXIT_BUILD" docker buildx build "$ROOT" --platform linux/amd64 --provenance=false \
        "${build_args[@]}" --tag "$image" --push
    fi
  fi

  local public_var=false
  "$public" && public_var=true
  local app_vars=("${tfvars[@]}" -var "image=$image" "${model_vars[@]}" -var "allow_unauthenticated=$public_var"
    ${index_var[@]+"${index_var[@]}"} ${gpu_var[@]+"${gpu_var[@]}"})
  local stable=""
  if [ -n "$canary" ]; then
    # The new revision first takes no traffic: tagged, it is smoke-tested at its own URL before any request moves.
    capture stable "$EXIT_TERRAFORM" terraform -chdir="$tf" output -raw revision
    [ -n "$stable" ] || fail "$EXIT_USAGE" "--canary: nothing is deployed yet to keep the rest of the traffic; deploy once without it"
    terraform_in "$tf" apply -input=false -auto-approve "${app_vars[@]}" -var "stable_revision=$stable" -var canary_percent=0
    local canary_url
    capture canary_url "$EXIT_TERRAFORM" terraform -chdir="$tf" output -raw canary_url
    cloudrun_smoke "$canary_url"
    terraform_in "$tf" apply -input=false -auto-approve "${app_vars[@]}" -var "stable_revision=$stable" \
      -var "canary_percent=$canary"
    canary_done "$canary_url" "$stable"
    return 0
  fi
  terraform_in "$tf" apply -input=false -auto-approve "${app_vars[@]}"
  local url
  capture url "$EXIT_TERRAFORM" terraform -chdir="$tf" output -raw url
  echo "deploy: Cloud Run service $name serves $variant at $url"
  cloudrun_smoke "$url"
}

cloudrun_smoke() { # cloudrun_smoke URL: with an identity token unless the service is public
  if "$public"; then
    smoke "$1"
  else
    local token
    capture token "$EXIT_CREDENTIALS" gcloud auth print-identity-token
    smoke "$1" --token "$token"
  fi
}

yaml_list() { # yaml_list ITEM...: "a", "b" (items hold no quotes or backslashes)
  local item out=""
  for item in "$@"; do out+="${out:+, }\"$item\""; done
  printf '%s' "$out"
}

cloudbuild_config() { # the Cloud Build steps: BuildKit (cache mounts) and the bake build args
  cat <<EOF
steps:
  - name: gcr.io/cloud-builders/docker
    env: ["DOCKER_BUILDKIT=1"]
    args: [$(yaml_list "build" "${build_args[@]}" "--tag" "$1" ".")]
images: ["$1"]
timeout: 3600s
options:
  machineType: E2_HIGHCPU_8
  diskSizeGb: 100
EOF
}

# ---------------------------------------------------------------- Lambda
deploy_lambda() {
  local tf="$ROOT/terraform/lambda"
  require_tools aws docker terraform curl

  local account
  capture account "$EXIT_CREDENTIALS" aws sts get-caller-identity --query Account --output text
  if ! "$dry_run"; then
    docker info >/dev/null 2>&1 || fail "$EXIT_TOOL" "docker is installed but its daemon is not reachable"
    docker buildx version >/dev/null 2>&1 || fail "$EXIT_TOOL" "docker buildx is missing (needed for --platform)"
  else
    show docker info
    show docker buildx version
  fi

  local tfvars=(-var "region=$region" -var "name=$name")
  local registry="$account.dkr.ecr.$region.amazonaws.com"
  local image="$registry/$name:$tag"

  terraform_in "$tf" init -input=false
  # The repository must exist before the push; -target leaves a running function untouched.
  terraform_in "$tf" apply -input=false -auto-approve -target=aws_ecr_repository.images \
    -target=aws_ecr_lifecycle_policy.images "${tfvars[@]}"

  if ! "$skip_build"; then
    show aws ecr get-login-password --region "$region" "|" docker login --username AWS --password-stdin "$registry"
    if ! "$dry_run"; then
      aws ecr get-login-password --region "$region" | docker login --username AWS --password-stdin "$registry" \
        || fail "$EXIT_CREDENTIALS" "could not log in to ECR $registry"
    fi
    # --provenance=false: Lambda accepts a single-platform image manifest, not an index with attestations.
    run "$EXIT_BUILD" docker buildx build "$ROOT" --platform linux/amd64 --provenance=false \
      "${build_args[@]}" --tag "$image" --push
  fi

  local auth=AWS_IAM
  "$public" && auth=NONE
  local app_vars=("${tfvars[@]}" -var "image_tag=$tag" "${model_vars[@]}" -var "function_url_auth=$auth"
    ${index_var[@]+"${index_var[@]}"})
  local signed=()
  "$public" || signed=(--aws-sigv4 "$region")
  if [ -n "$canary" ]; then
    # Publish the new version behind the 'canary' alias (its own URL) with no traffic, smoke-test it, then weight 'live'.
    local stable canary_url
    capture stable "$EXIT_TERRAFORM" terraform -chdir="$tf" output -raw live_version
    [ -n "$stable" ] || fail "$EXIT_USAGE" "--canary: nothing is deployed yet to keep the rest of the traffic; deploy once without it"
    terraform_in "$tf" apply -input=false -auto-approve "${app_vars[@]}" -var "stable_version=$stable" -var canary_percent=0
    capture canary_url "$EXIT_TERRAFORM" terraform -chdir="$tf" output -raw canary_url
    "$public" || lambda_credentials
    smoke "$canary_url" ${signed[@]+"${signed[@]}"}
    terraform_in "$tf" apply -input=false -auto-approve "${app_vars[@]}" -var "stable_version=$stable" \
      -var "canary_percent=$canary"
    canary_done "$canary_url" "version $stable"
    return 0
  fi
  terraform_in "$tf" apply -input=false -auto-approve "${app_vars[@]}"
  local url
  capture url "$EXIT_TERRAFORM" terraform -chdir="$tf" output -raw url
  echo "deploy: Lambda function $name serves $variant at $url"
  "$public" || lambda_credentials
  smoke "$url" ${signed[@]+"${signed[@]}"}
}

release_lambda() { # --promote / --rollback: weighted alias routing, undone or completed
  local tf="$ROOT/terraform/lambda" version
  require_tools aws terraform
  if [ "$release" = promote ]; then
    capture version "$EXIT_TERRAFORM" terraform -chdir="$tf" output -raw version
  else
    capture version "$EXIT_TERRAFORM" terraform -chdir="$tf" output -raw live_version
  fi
  [ -n "$version" ] || fail "$EXIT_USAGE" "no version deployed (terraform output is empty)"
  run "$EXIT_CREDENTIALS" aws lambda update-alias --function-name "$name" --name live --function-version "$version" \
    --routing-config "AdditionalVersionWeights={}" --region "$region"
}

lambda_credentials() { # smoke.sh signs with env credentials; take the CLI's if the env has none
  [ -n "${AWS_ACCESS_KEY_ID:-}" ] && return 0
  show aws configure export-credentials --format env
  "$dry_run" && return 0
  local exports
  exports=$(aws configure export-credentials --format env 2>/dev/null) \
    || fail "$EXIT_CREDENTIALS" "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or use AWS CLI v2) for the signed smoke test"
  eval "$exports"
}

"$dry_run" && echo "# dry run: nothing below is executed"
if [ -n "$release" ]; then
  echo "deploy: $target --$release, $name in $region"
else
  echo "deploy: $target, variant $variant (baked: $baked), region $region, tag $tag${canary:+, canary $canary%}"
fi
case "$target:$release" in
  cloudrun:) deploy_cloudrun ;;
  lambda:) deploy_lambda ;;
  cloudrun:*) release_cloudrun ;;
  lambda:*) release_lambda ;;
esac
"$dry_run" || echo "deploy: done"
