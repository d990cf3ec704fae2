# Certificates and kubeconfigs of the local cluster, made with openssl. Sourced by up.sh.
# shellcheck shell=bash

# sign NAME SUBJECT [SAN]: a key and a certificate signed by the cluster CA.
sign() {
  local name=$1 subj=$2 san=${3:-} ext
  ext=$(mktemp)
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [ -n "$san" ]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$san"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$ext"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -subj "$subj" \
    -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 365 -sha256 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$ext" "$PKI/$name.csr"
}

# Kept across restarts: a cluster that comes back keeps its identities (and pods
# keep trusting the CA). cluster-down removes the whole .cluster directory.
make_pki() {
  [ -f "$PKI/done" ] && return 0
  mkdir -p "$PKI"
  chmod 700 "$PKI"
  openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=articlesite-local-ca" \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
  local svc_ip
  svc_ip=$(first_service_ip)
  sign apiserver "/CN=kube-apiserver" \
    "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$svc_ip"
  sign admin "/O=system:masters/CN=admin"
  sign kube-controller-manager "/CN=system:kube-controller-manager"
  sign kube-scheduler "/CN=system:kube-scheduler"
  # kwok drives node and pod status for every simulated node: it acts cluster-wide.
  sign kwok "/O=system:masters/CN=kwok"
  # The API server's identity towards the real nodes' kubelets (exec, logs, port-forward:
  # the backup Jobs exec pgBackRest in the primary). The kubelets take clients of this CA.
  sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  touch "$PKI/done"
}

# The aggregation layer (metrics.k8s.io, served by metrics-server) and the serving
# certificates of what metrics-server dials. Its own marker, so a cluster whose PKI predates
# it gets these on its next start too.
make_aggregation_pki() {
  [ -f "$PKI/aggregation-done" ] && return 0
  # The API server proves the user of a proxied request with a client certificate of a CA
  # of its own (the requestheader CA); metrics-server trusts that CA for these headers only.
  openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=articlesite-front-proxy-ca" \
    -keyout "$PKI/front-proxy-ca.key" -out "$PKI/front-proxy-ca.crt" 2>/dev/null
  local ext
  ext=$(mktemp)
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >"$ext"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/front-proxy-client.key" \
    -subj "/CN=front-proxy-client" -out "$PKI/front-proxy-client.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/front-proxy-client.csr" -CA "$PKI/front-proxy-ca.crt" \
    -CAkey "$PKI/front-proxy-ca.key" -CAcreateserial -days 365 -sha256 -extfile "$ext" \
    -out "$PKI/front-proxy-client.crt" 2>/dev/null
  rm -f "$ext" "$PKI/front-proxy-client.csr"
  # metrics-server: its client identity (RBAC in metrics-server.yaml) and its serving
  # certificate, for the name the aggregator checks (<service>.<namespace>.svc).
  sign metrics-server "/CN=system:metrics-server"
  sign metrics-server-serving "/CN=metrics-server" \
    "DNS:metrics-server.kube-system.svc,DNS:localhost,IP:127.0.0.1"
  # kwok serves the simulated kubelets' /metrics/resource over TLS on 127.0.0.1.
  sign kwok-serving "/CN=kwok" "DNS:localhost,IP:127.0.0.1"
  touch "$PKI/aggregation-done"
}

# 10.96.0.0/16 -> 10.96.0.1, the address of the `kubernetes` Service.
first_service_ip() {
  local base=${SERVICE_CIDR%/*}
  echo "${base%.*}.$(( ${base##*.} + 1 ))"
}

# write_kubeconfig FILE USER: a kubeconfig with the certificates embedded.
write_kubeconfig() {
  local file=$1 user=$2
  cat >"$file" <<KC
apiVersion: v1
kind: Config
clusters:
- name: articlesite-local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$PKI/$user.crt")
    client-key-data: $(base64 -w0 <"$PKI/$user.key")
contexts:
- name: articlesite-local
  context:
    cluster: articlesite-local
    user: $user
current-context: articlesite-local
KC
  chmod 600 "$file"
}
