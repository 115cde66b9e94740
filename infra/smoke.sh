#!/usr/bin/env bash
# Smoke test of a running clipserve with curl only (no Python, no jq): every endpoint once,
# checking status codes and embedding dimensions. Stops at the first failure and shows the response.
#
#   infra/smoke.sh URL [--token TOKEN | --aws-sigv4 REGION] [--api-key KEY] [--expect-dim N]
#                      [--image-url URL] [--wait SECONDS] [--max-time SECONDS]
#
#   --token T          Cloud Run private service: an identity token (gcloud auth print-identity-token)
#   --api-key K        the service's own API key (API_KEYS), sent as Authorization: Bearer K; with --token
#                      the identity token then travels in X-Serverless-Authorization, as Cloud Run allows
#   --aws-sigv4 R      Lambda function URL with AWS_IAM auth: sign with SigV4 (service "lambda", region R)
#                      using AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY [/ AWS_SESSION_TOKEN] from the env
#   --expect-dim N     the dimension the deployed variant must have (english 512, multilingual 640);
#                      default: whatever GET / reports, and every endpoint must agree with it
#   --image-url URL    image the service downloads in the by-URL check (env SMOKE_IMAGE_URL)
#   --wait S           first poll /health for up to S seconds until it answers 200 (cold starts)
#   --max-time S       per-request limit (default 120)
#
# Exit codes: 0 all passed, 1 a check failed, 2 bad usage, 3 curl missing.
set -euo pipefail

DEFAULT_IMAGE_URL="https://www.google.com/images/branding/googlelogo/1x/googlelogo_color_272x92dp.png"
# An 8x8 RGB PNG (a colour gradient), as octal escapes for printf (no base64 tool needed), and the
# same bytes in base64 for the JSON checks.
# shellcheck disable=SC2016 # backticks here are PNG bytes, not expansions
PNG_OCTAL='\211PNG\015\012\032\012\000\000\000\015IHDR\000\000\000\010\000\000\000\010\010\002\000\000\000Km)\334\000\000\000\031IDATx\332cd`hP``\300D,\014\012\014X\301\340\224\000\000ho\002^v|c\227\000\000\000\000IEND\256B`\202'
PNG_BASE64='iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAGUlEQVR42mNkYGhQYGDARCwMCgxYweCUAABobwJednxjlwAAAABJRU5ErkJggg=='

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
die_usage() { echo "smoke: $*" >&2; echo "usage: infra/smoke.sh URL [--token T | --aws-sigv4 REGION] [--api-key K] [--expect-dim N] [--image-url URL] [--wait S]" >&2; exit 2; }

url="" token="" api_key="" sigv4_region="" expect_dim="" wait_s=0 max_time=120
image_url=${SMOKE_IMAGE_URL:-$DEFAULT_IMAGE_URL}
while [ $# -gt 0 ]; do
  case "$1" in
    --token) [ $# -ge 2 ] || die_usage "--token needs a value"; token=$2; shift 2 ;;
    --api-key) [ $# -ge 2 ] || die_usage "--api-key needs a value"; api_key=$2; shift 2 ;;
    --aws-sigv4) [ $# -ge 2 ] || die_usage "--aws-sigv4 needs a region"; sigv4_region=$2; shift 2 ;;
    --expect-dim) [ $# -ge 2 ] || die_usage "--expect-dim needs a number"; expect_dim=$2; shift 2 ;;
    --image-url) [ $# -ge 2 ] || die_usage "--image-url needs a URL"; image_url=$2; shift 2 ;;
    --wait) [ $# -ge 2 ] || die_usage "--wait needs seconds"; wait_s=$2; shift 2 ;;
    --max-time) [ $# -ge 2 ] || die_usage "--max-time needs seconds"; max_time=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) die_usage "unknown option $1" ;;
    *) [ -z "$url" ] || die_usage "one URL only"; url=$1; shift ;;
  esac
done
[ -n "$url" ] || die_usage "give the service URL"
[ -z "$token" ] || [ -z "$sigv4_region" ] || die_usage "--token and --aws-sigv4 exclude each other"
[ -z "$api_key" ] || [ -z "$sigv4_region" ] || die_usage "--api-key cannot travel with --aws-sigv4 (both need the Authorization header)"
for number in "$wait_s" "$max_time" ${expect_dim:+"$expect_dim"}; do
  [[ "$number" =~ ^[0-9]+$ ]] || die_usage "not a whole number: $number"
done
command -v curl >/dev/null 2>&1 || { echo "smoke: curl is required" >&2; exit 3; }
if [ -n "$sigv4_region" ] && { [ -z "${AWS_ACCESS_KEY_ID:-}" ] || [ -z "${AWS_SECRET_ACCESS_KEY:-}" ]; }; then
  echo "smoke: --aws-sigv4 needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment" >&2
  echo "       (e.g. eval \"\$(aws configure export-credentials --format env)\")" >&2
  exit 2
fi
url=${url%/}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# shellcheck disable=SC2059 # the escapes in the format are the point
printf "$PNG_OCTAL" > "$work/smoke.png"


# ---------------------------------------------------------------- HTTP
status="" body=""
# request METHOD PATH [curl args...]: sets $status and $body (the response text).
request() {
  local method=$1 path=$2
  shift 2
  local auth=()
  if [ -n "$token" ] && [ -n "$api_key" ]; then
    auth=(-H "X-Serverless-Authorization: Bearer $token" -H "Authorization: Bearer $api_key")
  elif [ -n "$token" ] || [ -n "$api_key" ]; then
    auth=(-H "Authorization: Bearer ${token:-$api_key}")
  elif [ -n "$sigv4_region" ]; then
    auth=(--aws-sigv4 "aws:amz:$sigv4_region:lambda" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY")
    [ -z "${AWS_SESSION_TOKEN:-}" ] || auth+=(-H "x-amz-security-token: $AWS_SESSION_TOKEN")
  fi
  status=$(curl -sS -X "$method" --max-time "$max_time" -o "$work/body" -w '%{http_code}' \
             ${auth[@]+"${auth[@]}"} "$@" "$url$path") || status="000"
  body=$(cat "$work/body" 2>/dev/null || true)
}

post_json() { # post_json PATH JSON
  printf '%s' "$2" > "$work/request.json"
  request POST "$1" -H "Content-Type: application/json" --data-binary "@$work/request.json"
}

# multipart body built by hand (not curl -F) so that SigV4 can hash it like any other body.
post_multipart() { # post_multipart PATH [field=value ...]
  local path=$1 boundary="clipserve-smoke-$$" field
  shift
  {
    for field in "$@"; do
      printf -- '--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' "$boundary" "${field%%=*}" "${field#*=}"
    done
    printf -- '--%s\r\nContent-Disposition: form-data; name="images"; filename="smoke.png"\r\nContent-Type: image/png\r\n\r\n' "$boundary"
    cat "$work/smoke.png"
    printf -- '\r\n--%s--\r\n' "$boundary"
  } > "$work/request.multipart"
  request POST "$path" -H "Content-Type: multipart/form-data; boundary=$boundary" \
    --data-binary "@$work/request.multipart"
}

# ---------------------------------------------------------------- JSON, the little we need (awk)
# vectors KEY: "COUNT LEN1,LEN2,..." for the list of vectors under KEY (null entries count as 0-length
# with a "null" length); "missing" when KEY is absent.
vectors() {
  printf '%s' "$body" | awk -v key="\"$1\"" '
    { text = text $0 }
    END {
      i = index(text, key); if (!i) { print "missing"; exit }
      s = substr(text, i + length(key)); sub(/^[[:space:]]*:[[:space:]]*\[/, "", s)
      n = 0; lens = ""
      while (1) {
        sub(/^[[:space:]]*,?[[:space:]]*/, "", s)
        c = substr(s, 1, 1)
        if (c == "]" || c == "") break
        if (substr(s, 1, 4) == "null") { len = "null"; s = substr(s, 5) }
        else if (c == "[") {
          j = index(s, "]"); v = substr(s, 2, j - 2); gsub(/[[:space:]]/, "", v)
          len = (v == "") ? 0 : gsub(/,/, ",", v) + 1; s = substr(s, j + 1)
        } else { len = "?"; j = match(s, /[],]/); s = (j ? substr(s, j) : "") }
        n++; lens = lens (n > 1 ? "," : "") len
      }
      print n " " lens
    }'
}

json_number() { # json_number KEY: the first "KEY": <integer> in the body
  printf '%s' "$body" | grep -oE "\"$1\"[[:space:]]*:[[:space:]]*[0-9]+" | head -n 1 | grep -oE '[0-9]+$' || true
}

# ---------------------------------------------------------------- checks
passed=0
fail() {
  echo "FAIL $1" >&2
  echo "     HTTP $status from $url" >&2
  echo "     response: $(printf '%s' "$body" | head -c 2000)" >&2
  exit 1
}
ok() { passed=$((passed + 1)); echo "ok   $1"; }
expect_status() { [ "$status" = "$1" ] || fail "$2: expected HTTP $1, got $status"; }

# expect_vectors NAME KEY COUNT: KEY holds COUNT vectors, each of the service's dimension.
expect_vectors() {
  local name=$1 key=$2 count=$3 summary want
  summary=$(vectors "$key")
  want="$count $(printf "$dim%.0s," $(seq 1 "$count"))"
  [ "$summary" = "${want%,}" ] || fail "$name: expected $count vector(s) of dimension $dim under \"$key\", got: $summary"
  [ "$(json_number dim)" = "$dim" ] || fail "$name: \"dim\" is $(json_number dim), expected $dim"
}

if [ "$wait_s" -gt 0 ]; then
  deadline=$((SECONDS + wait_s))
  while :; do
    request GET /health
    [ "$status" = 200 ] && break
    [ "$SECONDS" -lt "$deadline" ] || fail "health: not 200 within ${wait_s}s"
    sleep 2
  done
fi

request GET /health
expect_status 200 "health"
printf '%s' "$body" | grep -qE '"status"[[:space:]]*:[[:space:]]*"ok"' || fail "health: status is not ok"
ok "health"

request GET /
expect_status 200 "info"
dim=$(json_number dim)
[ -n "$dim" ] || fail "info: no model dimension (is the model loaded?)"
if [ -n "$expect_dim" ] && [ "$dim" != "$expect_dim" ]; then
  fail "info: the model has dimension $dim, expected $expect_dim (wrong variant deployed?)"
fi
ok "info (dimension $dim)"

post_json /embed/text '{"texts": ["a photo of a cat", "ein Foto von einem Hund"]}'
expect_status 200 "text"
expect_vectors "text" embeddings 2
ok "text"

post_json /embed/image "{\"images\": [\"$image_url\"]}"
expect_status 200 "image by URL ($image_url)"
expect_vectors "image by URL ($image_url)" embeddings 1
ok "image by URL"

post_json /embed/image "{\"images\": [\"$PNG_BASE64\"]}"
expect_status 200 "image by base64"
expect_vectors "image by base64" embeddings 1
ok "image by base64"

post_multipart /embed/image
expect_status 200 "image by multipart"
expect_vectors "image by multipart" embeddings 1
ok "image by multipart"

post_json /embed/mixed "{\"texts\": [\"a red square\"], \"images\": [\"data:image/png;base64,$PNG_BASE64\"]}"
expect_status 200 "mixed"
expect_vectors "mixed (texts)" text_embeddings 1
expect_vectors "mixed (images)" image_embeddings 1
ok "mixed"

post_multipart /score "texts=a red square" "texts=a blue circle"
expect_status 200 "score"
summary=$(vectors cosine)
[ "$summary" = "1 2" ] || fail "score: expected a 1x2 cosine matrix, got: $summary"
ok "score"

post_json /embed/text '{"texts": []}'
expect_status 400 "invalid request"
printf '%s' "$body" | grep -q '"error"' || fail "invalid request: no error object"
ok "invalid request answers 400"

echo "smoke: all $passed checks passed against $url"
