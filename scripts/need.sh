#!/usr/bin/env bash
# scripts/need.sh COMMAND PACKAGE: installs Debian's PACKAGE (with apt-get, as root or through
# sudo) when COMMAND is not on the PATH. The test scripts use it for the tools they check with.
set -euo pipefail
command_name="$1" package="$2"
if command -v "$command_name" >/dev/null 2>&1; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo="sudo"
  else
    echo "$command_name is missing: install the $package package (apt-get install $package)" >&2
    exit 1
  fi
fi
echo "installing $command_name (Debian's $package package)"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$package" >/dev/null
