#!/usr/bin/env bash
# Fills nginx/templates/*.template from the environment into OUT_DIR/*.conf, the way the
# official nginx image does at start (envsubst with only the variables that are set, so
# nginx's own $variables are kept), for nginx run outside that image: put the result in
# /etc/nginx/conf.d (Debian's nginx.conf includes it in its http block).
#
#   NGINX_HTTPS_LISTEN=443 NGINX_HTTP_LISTEN=80 ... nginx/render.sh /etc/nginx/conf.d
#
# Every ${NGINX_*} a template names must be set: an unset one is an error naming it, not an
# empty value in the config (NGINX_REDIRECT_PORT may be set to the empty string).
set -euo pipefail
out="${1:?usage: nginx/render.sh OUT_DIR}"
here="$(cd "$(dirname "$0")" && pwd)"
command -v envsubst >/dev/null || "$here/../scripts/need.sh" envsubst gettext-base
mkdir -p "$out"
for template in "$here"/templates/*.template; do
  names="$(grep -o '\${NGINX_[A-Z0-9_]*}' "$template" | sort -u)"
  for ref in $names; do
    name="${ref:2:-1}"
    if [ -z "${!name+set}" ]; then
      echo "nginx/render.sh: $name is not set ($(basename "$template") uses it)" >&2
      exit 1
    fi
  done
  base="$(basename "$template" .template)"
  envsubst "$(echo $names)" <"$template" >"$out/$base"
done
