#!/usr/bin/env bash
# Prints the Secrets vatic's manifests use, as YAML for `kubectl apply -f -`:
#   vatic-tls       the deployment's CA and the certificates of `vaticctl certs init`: the api's
#                   (for the Service's names), the workers', the api's client certificate
#   vatic-edge-tls  the Ingress' certificate for HOST (kubernetes.io/tls), from the same CA;
#                   replace it with your company's, or let cert-manager make it
#   vatic-db        PostgreSQL's password: $VATIC_DB_PASSWORD_FILE, else a new one (printed to
#                   stderr: give it to the database's role)
#   vatic-admin     the first admin key: $VATIC_ADMIN_KEY_FILE, else a new one (stderr)
#
#   deploy/k8s/secrets.sh NAMESPACE HOST [CA_DIR] > secrets.yaml && kubectl apply -f secrets.yaml
#
# The CA's certificate and key are left in CA_DIR (default ./vatic-ca-NAMESPACE): give ca.crt
# to clients, keep ca.key offline. It refuses to run when CA_DIR already holds a CA: new
# certificates for a running deployment are a rotation (docs/deployment.md, "Kubernetes").
# Values it makes are printed once, to stderr; write the output where only you can read it (the
# script's files are made with umask 077). Needs vaticctl on the PATH (or $VATICCTL).
set -euo pipefail
umask 077
namespace="${1:?usage: secrets.sh NAMESPACE HOST [CA_DIR]}"
host="${2:?usage: secrets.sh NAMESPACE HOST [CA_DIR]}"
ca_dir="${3:-./vatic-ca-$namespace}"
vaticctl="${VATICCTL:-vaticctl}"
if [ -e "$ca_dir/ca.key" ] || [ -e "$ca_dir/ca.crt" ]; then
  echo "secrets.sh: $ca_dir already holds a CA; move it away to make a new one" >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$vaticctl" certs init "$work/certs" \
  --nginx-names "$host" \
  --api-names "vatic-api,vatic-api.$namespace.svc,vatic-api.$namespace.svc.cluster.local" >&2

random() {
  od -An -N32 -tx1 /dev/urandom | tr -d ' \n'
}
value() {
  # The content of the file $1 names (one trailing newline dropped), else a new random value
  # reported on stderr as $2.
  if [ -n "${!1:-}" ]; then
    printf '%s' "$(cat "${!1}")"
  else
    local made
    made="$(random)"
    echo "secrets.sh: made $2: $made" >&2
    printf '%s' "$made"
  fi
}
b64() {
  base64 -w0 "$@"
}

db_password="$(value VATIC_DB_PASSWORD_FILE "the PostgreSQL password of role vatic")"
admin_key="$(value VATIC_ADMIN_KEY_FILE "the first admin key")"

echo "apiVersion: v1"
echo "kind: Secret"
echo "metadata: {name: vatic-tls, namespace: $namespace}"
echo "type: Opaque"
echo "data:"
for file in ca.crt api.crt api.key worker.crt worker.key api-client.crt api-client.key; do
  echo "  $file: $(b64 "$work/certs/$file")"
done
echo "---"
echo "apiVersion: v1"
echo "kind: Secret"
echo "metadata: {name: vatic-edge-tls, namespace: $namespace}"
echo "type: kubernetes.io/tls"
echo "data:"
echo "  tls.crt: $(b64 "$work/certs/nginx.crt")"
echo "  tls.key: $(b64 "$work/certs/nginx.key")"
echo "---"
echo "apiVersion: v1"
echo "kind: Secret"
echo "metadata: {name: vatic-db, namespace: $namespace}"
echo "type: Opaque"
echo "data:"
echo "  password: $(printf '%s' "$db_password" | b64)"
echo "---"
echo "apiVersion: v1"
echo "kind: Secret"
echo "metadata: {name: vatic-admin, namespace: $namespace}"
echo "type: Opaque"
echo "data:"
echo "  admin_key: $(printf '%s' "$admin_key" | b64)"

mkdir -p "$ca_dir"
cp "$work/certs/ca.crt" "$work/certs/ca.key" "$ca_dir/"
chmod 0600 "$ca_dir/ca.key"
chmod 0644 "$ca_dir/ca.crt"
echo "secrets.sh: the CA is in $ca_dir (ca.crt for clients; keep ca.key offline)" >&2
