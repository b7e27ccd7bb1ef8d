#!/usr/bin/env bash
# Regenerate docker/constraints.txt: the versions pip resolves today (from PyPI, for Linux x86_64 and
# CPython 3.11 as in the image) for the package and bids-validator-deno. The image build installs with
# these as pip constraints, so rebuilds get the same dependency versions. torch and its CUDA wheels are
# left out (torch is pinned by setup.cfg; it pins its own nvidia-*/triton versions).
#
#   docker/update_constraints.sh      # needs pip >= 22.2 and PyPI; run it after changing install_requires
set -euo pipefail
cd "$(dirname "$0")/.."
report=$(mktemp)
trap 'rm -f "$report"' EXIT
python3 -m pip install --isolated --index-url "${PIP_INDEX_URL:-https://pypi.org/simple}" --dry-run \
    --ignore-installed --quiet --report "$report" . bids-validator-deno
python3 - "$report" > docker/constraints.txt <<'PY'
import json, re, sys
skip = re.compile(r"^(bhd-app|torch|triton|nvidia-.*|cuda-.*)$")
pins = sorted((i["metadata"]["name"], i["metadata"]["version"]) for i in json.load(open(sys.argv[1]))["install"])
print("# pip constraints for the image build; regenerate with docker/update_constraints.sh")
for name, version in sorted(pins, key=lambda p: p[0].lower()):
    if not skip.match(name.lower()):
        print(f"{name}=={version}")
PY
echo "docker/constraints.txt: $(grep -vc '^#' docker/constraints.txt) pins"
