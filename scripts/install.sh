#!/usr/bin/env bash
# Set up everything edgebuild needs on a Debian machine, idempotently:
# - mmdebstrap (builds the emulated aarch64 root filesystems), zstd (packs them for the remote
#   cache) and chromium (renders the HTML report in the tests) from the machine's own apt sources;
# - a virtual environment outside the repository, pinned by constraints.txt, reused while
#   pyproject.toml and constraints.txt are unchanged;
# - this checkout installed into it in editable mode (cheap; re-pointed at every call).
# - the OpenSSH client (boards over SSH, validate.boards).
# With --container, also podman and runc: `edgebuild target image` and validate.executor = "container"
# need them (the tests do; the default build does not), openssh-server (the tests start their own sshd
# on 127.0.0.1 as a board) and espeak-ng (the tests synthesize spoken keywords with it).
set -euo pipefail
cd "$(dirname "$0")/.."
container=0
[ "${1:-}" = "--container" ] && container=1

EDGEBUILD_HOME="${EDGEBUILD_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/edgebuild}"
VENV="${EDGEBUILD_VENV:-$EDGEBUILD_HOME/venv}"

need_apt=()
command -v mmdebstrap >/dev/null || need_apt+=(mmdebstrap)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v zstd >/dev/null || need_apt+=(zstd)  # packs target environments for cache.remote
command -v ssh >/dev/null || need_apt+=(openssh-client)  # real boards over SSH (validate.boards)
if [ "$container" -eq 1 ]; then
  command -v podman >/dev/null || need_apt+=(podman)
  command -v runc >/dev/null || need_apt+=(runc)
  [ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)  # the tests' own board: an sshd they start on 127.0.0.1
  command -v espeak-ng >/dev/null || need_apt+=(espeak-ng)  # the keyword-spotting tests' speech
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null 2>&1 \
    || { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null; }
fi

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo "edgebuild needs Python 3.11; $PYTHON is $("$PYTHON" --version). Set PYTHON=/path/to/python3.11." >&2; exit 3; }

# the venv is rebuilt when what it installs changes: the dependencies and their pins (not the rest
# of pyproject.toml, such as pytest settings or the package list, which the editable install reads)
stamp="$( { "$PYTHON" -c 'import json, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(json.dumps([p["requires-python"], p["dependencies"], p["optional-dependencies"]]))'; cat constraints.txt; } | sha256sum | cut -c1-16)"
if [ ! -f "$VENV/.edgebuild-$stamp" ]; then
  echo "creating the virtual environment $VENV (a few minutes the first time)" >&2
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  # (grep drops pip's notes about this machine's optional local package indexes)
  "$VENV/bin/pip" install -q --disable-pip-version-check -U "setuptools>=68" 2> >(grep -v "is ignored" >&2)
  "$VENV/bin/pip" install -q --disable-pip-version-check -c constraints.txt -e '.[test]' 2> >(grep -v "is ignored" >&2)
  "$VENV/bin/pip" check >/dev/null
  touch "$VENV/.edgebuild-$stamp"
else
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e . >/dev/null 2>&1
fi
echo "$VENV"
