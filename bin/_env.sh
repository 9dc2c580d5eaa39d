# Sourced by bin/serve and bin/test: makes .venv from the lock files when it is missing or stale.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"

ensure_venv() {  # $1: the lock file to install
  local lock="$1" stamp=".venv/.installed-$(basename "$1")"
  if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
  fi
  if [ ! -f "$stamp" ] || ! cmp -s "$lock" "$stamp" || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$lock"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
    cp "$lock" "$stamp"
  fi
}
