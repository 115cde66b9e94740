# Sourced by test.sh and serve.sh: create .venv and install what the project needs,
# re-installing only when a requirements file changed.
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
source .venv/bin/activate
stamp=.venv/.requirements.sha
want=$(cat requirements.txt requirements-dev.txt pyproject.toml clients/python/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # pip's and setuptools' own notices (an editable-install warning, index locations) go to a log, not the
  # console: they ask nothing of the person running this. A failure shows the log's end.
  echo "Installing clipserve's Python packages into .venv (first run, or requirements changed: a few minutes)..." >&2
  log=.venv/install.log
  if ! { python -m pip install --quiet --upgrade pip && python -m pip install --quiet -r requirements-dev.txt \
         && python -m pip install --quiet --no-deps -e . -e clients/python; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "Installing the packages failed; the whole log is $log." >&2
    return 1 2>/dev/null || exit 1
  fi
  echo "$want" > "$stamp"
fi
