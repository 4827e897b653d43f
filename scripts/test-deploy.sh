#!/usr/bin/env bash
# Checks what deploy/ ships without a cluster or a container engine: the Helm chart
# (helm lint --strict, helm template for several value sets, with the facts each rendering
# must hold, and the value sets it must refuse) and the compose file (loaded the way
# `docker compose config` loads it).
#
# Installs what it needs into .cache/ (idempotent, reused by the next run): helm from the Go
# module proxy, pinned below; deploy/compose-check (compose-go, the loader of the docker
# compose CLI) when the docker compose plugin is missing; PyYAML for the assertions if the
# python3 on PATH lacks it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=$ROOT/.cache
mkdir -p "$CACHE"
HELM_VERSION=v3.22.0
# kubeVersion in Chart.yaml is >=1.30 (native gRPC probes, the preStop sleep action); render
# for the oldest version it accepts.
KUBE_VERSION=1.30.0
CHART=deploy/helm/receipts
COMPOSE=deploy/compose.yaml

step() { printf '\n==> [%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "ok    $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL  $*" >&2; }
# Counts the lines a checker wrote: `ok <fact>` passes, anything else (`FAIL <fact>`, a
# traceback) fails.
count_checks() { # prefix file
  while IFS= read -r line; do
    case $line in
      "ok "*) pass "$1${line#ok }" ;;
      *) fail "$1${line#FAIL }" ;;
    esac
  done < "$2"
}

# A built receiptd, if there is one, checks the configuration each rendering sets
# (`receiptd config` validates without connecting anywhere). This script builds nothing.
RECEIPTD=${RECEIPTD:-}
for candidate in target/release/receiptd target/debug/receiptd; do
  if [ -z "$RECEIPTD" ] && [ -x "$candidate" ]; then RECEIPTD=$ROOT/$candidate; fi
done
if [ -n "$RECEIPTD" ] && [ ! -x "$RECEIPTD" ]; then
  echo "RECEIPTD=$RECEIPTD is not an executable" >&2
  exit 1
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

step "helm $HELM_VERSION (go install into .cache/go-bin, once)"
export GOBIN=$CACHE/go-bin
HELM=$GOBIN/helm
# `go version -m` names the module version a binary was built from: reinstall only when the pin moves.
if ! go version -m "$HELM" 2>/dev/null | grep -qE "^[[:space:]]+mod[[:space:]]+helm.sh/helm/v3[[:space:]]+$HELM_VERSION([[:space:]]|$)"; then
  GOFLAGS=-mod=mod go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi
"$HELM" version --short

step "python3 with PyYAML (for the assertions)"
# (A copy installed by an earlier run is reused; the version is pinned.)
export PYTHONPATH=$CACHE/pylib${PYTHONPATH:+:$PYTHONPATH}
if ! python3 -c 'import yaml' 2>/dev/null; then
  python3 -m pip install --quiet --target "$CACHE/pylib" pyyaml==6.0.2
fi
python3 -c 'import yaml; print("PyYAML", yaml.__version__)'

# Value sets. Secrets here are placeholders for rendering, not real ones.
SECRET=(--set secrets.jwtSecret=render-only-0123456789 --set secrets.redisPassword=render-only)
cat > "$WORK/values-numbers.yaml" <<'EOF'
# Large integers from a values file arrive as floats in Helm: they must render without an exponent.
config:
  log-retention: 1000000
  cors-origins: [https://app.example, https://admin.example]
  redis-cluster: true
EOF

# name | extra arguments
CASES=(
  "default|${SECRET[*]}"
  "tls|${SECRET[*]} --set tls.enabled=true --set tls.secretName=receipts-tls --set tls.clientCA.enabled=true"
  "grace|${SECRET[*]} --set shutdownGraceMs=45500"
  "embedded|${SECRET[*]} --set config.store=embedded --set replicaCount=1"
  "existing-secret|--set secrets.existingSecret=receipts-secrets"
  "monitoring|${SECRET[*]} --set metrics.serviceMonitor.enabled=true --set service.headless=true"
  "numbers|${SECRET[*]} -f $WORK/values-numbers.yaml"
)

step "helm lint --strict"
for case in "${CASES[@]}"; do
  name=${case%%|*}
  # shellcheck disable=SC2086 # the arguments are words on purpose
  if out=$("$HELM" lint --strict "$CHART" ${case#*|} 2>&1); then
    pass "helm lint --strict ($name)"
  else
    echo "$out" >&2
    fail "helm lint --strict ($name)"
  fi
done

# helm template does not render NOTES.txt (only install does): a copy of the chart renders it
# as a template, so that an error in it shows here rather than at the end of an install.
NOTES_CHART=$WORK/notes-chart
cp -r "$CHART" "$NOTES_CHART"
mv "$NOTES_CHART/templates/NOTES.txt" "$NOTES_CHART/notes.txt"
printf 'kind: NotesCheck\nnotes: {{ tpl (.Files.Get "notes.txt") . | toJson }}\n' > "$NOTES_CHART/templates/notes-check.yaml"

step "helm template: what each value set must render${RECEIPTD:+ (and $RECEIPTD config accepts)}"
for case in "${CASES[@]}"; do
  name=${case%%|*}
  # shellcheck disable=SC2086
  if "$HELM" template receipts "$CHART" --namespace receipts --kube-version "$KUBE_VERSION" \
    ${case#*|} > "$WORK/$name.yaml" 2> "$WORK/$name.err"; then
    pass "helm template ($name)"
  else
    cat "$WORK/$name.err" >&2
    fail "helm template ($name)"
    continue
  fi
  # shellcheck disable=SC2086
  notes=$("$HELM" template receipts "$NOTES_CHART" --namespace receipts --kube-version "$KUBE_VERSION" \
    ${case#*|} --show-only templates/notes-check.yaml 2>&1 || true)
  if grep -q 'rollout status deployment/receipts' <<< "$notes"; then
    pass "$name: NOTES.txt renders"
  else
    echo "$notes" >&2
    fail "$name: NOTES.txt renders"
  fi
  if ! python3 - "$name" "$WORK/$name.yaml" docs/configuration.md "$RECEIPTD" > "$WORK/$name.checks" 2>&1 <<'PY'
import os, re, subprocess, sys, yaml

case, path, config_doc, receiptd = sys.argv[1:5]
docs = [d for d in yaml.safe_load_all(open(path)) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)

def check(fact, cond):
    print(("ok " if cond else "FAIL ") + fact)

def one(kind):
    items = by_kind.get(kind, [])
    return items[0] if len(items) == 1 else None

dep = one("Deployment")
check("one Deployment", dep is not None)
if dep is None:
    sys.exit()
pod = dep["spec"]["template"]["spec"]
c = pod["containers"][0]
env = {e["name"]: e.get("value") for e in c.get("env", [])}
grace_ms = int(env.get("RECEIPTS_SHUTDOWN_GRACE_MS", "-1"))
tgps = pod.get("terminationGracePeriodSeconds", 0)
pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
labels = dep["spec"]["template"]["metadata"]["labels"]

# Every rendering: non-root, locked down, draining in time, probed, labelled.
check("pod and container runAsNonRoot as 65532",
      pod["securityContext"].get("runAsNonRoot") is True and c["securityContext"].get("runAsNonRoot") is True
      and c["securityContext"].get("runAsUser") == 65532 and c["securityContext"].get("runAsGroup") == 65532)
check("readOnlyRootFilesystem, no privilege escalation, all capabilities dropped",
      c["securityContext"].get("readOnlyRootFilesystem") is True
      and c["securityContext"].get("allowPrivilegeEscalation") is False
      and c["securityContext"].get("capabilities", {}).get("drop") == ["ALL"])
check("service account token not mounted", pod.get("automountServiceAccountToken") is False)
check(f"terminationGracePeriodSeconds ({tgps}) > preStop sleep ({pre_stop}) + shutdown grace ({grace_ms} ms)",
      grace_ms >= 0 and tgps > pre_stop + grace_ms / 1000)
check("preStop is the kubelet's sleep action (the image has no shell)", pre_stop > 0 and "exec" not in c["lifecycle"]["preStop"])
check("startup, readiness and liveness probes present",
      all(p in c for p in ("startupProbe", "readinessProbe", "livenessProbe")))
check("liveness only checks the port (a Redis outage must not restart nodes)", "tcpSocket" in c["livenessProbe"])
check("app.kubernetes.io/name, instance, version, managed-by labels",
      all(f"app.kubernetes.io/{k}" in labels for k in ("name", "instance", "version", "managed-by")))
check("selector matches the pod labels",
      all(labels.get(k) == v for k, v in dep["spec"]["selector"]["matchLabels"].items()))
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
check("container ports grpc 50051 and metrics 9464", ports == {"grpc": 50051, "metrics": 9464})
check("listens on all interfaces, metrics on", env.get("RECEIPTS_LISTEN") == "0.0.0.0:50051"
      and env.get("RECEIPTS_METRICS_LISTEN") == "0.0.0.0:9464")
svc = [s for s in by_kind.get("Service", []) if s["spec"].get("clusterIP") != "None"]
svc_ports = {p["name"]: p for p in svc[0]["spec"]["ports"]} if len(svc) == 1 else {}
check("Service: grpc 50051 with appProtocol, metrics 9464",
      svc_ports.get("grpc", {}).get("port") == 50051 and svc_ports["grpc"].get("appProtocol")
      and svc_ports.get("metrics", {}).get("port") == 9464)

# Every RECEIPTS_* variable the chart sets is a setting receiptd has (docs/configuration.md),
# or one of the Scylla credentials being added with this chart.
block = open(config_doc).read().split("<!-- keys:start -->")[1].split("<!-- keys:end -->")[0]
known = {"RECEIPTS_" + k.upper().replace("-", "_") for k in re.findall(r"^\| `([a-z0-9-]+)`", block, re.M)}
known |= {"RECEIPTS_SCYLLA_" + k for k in ("USERNAME", "PASSWORD", "TLS_CA", "TLS_CERT", "TLS_KEY")}
unknown = sorted(n for n in env if n.startswith("RECEIPTS_") and n not in known)
check(f"every RECEIPTS_* variable is a known setting {unknown or ''}".rstrip(), not unknown)

def grpc_probe(p):
    return p.get("grpc", {}).get("port") == 50051 and p["grpc"].get("service")

def exec_health(p):
    return p.get("exec", {}).get("command", [])[:2] == ["/usr/local/bin/receiptd", "health"]

def secret_keys():
    s = one("Secret")
    return set((s or {}).get("stringData", {}))

embedded = env.get("RECEIPTS_STORE") == "embedded"
mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
volumes = {v["name"]: v for v in pod.get("volumes", [])}

if not embedded:
    check("production tier: RECEIPTS_STORE=redis-scylla", env.get("RECEIPTS_STORE") == "redis-scylla")
    pdb = one("PodDisruptionBudget")
    check("PodDisruptionBudget selects the pods",
          pdb is not None and all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items()))
    check("rolling update never goes below the replica count",
          dep["spec"]["strategy"]["type"] == "RollingUpdate" and dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0)
    check("no /data volume without the embedded store", "data" not in mounts and "RECEIPTS_DATA_DIR" not in env)

if case == "default":
    check("2 replicas", dep["spec"]["replicas"] == 2)
    check("startup and readiness are kubelet grpc probes on grpc.health.v1",
          grpc_probe(c["startupProbe"]) and grpc_probe(c["readinessProbe"]))
    check("shutdown grace 10000 ms, terminationGracePeriodSeconds 25 (5 + 10 + 10)",
          grace_ms == 10000 and tgps == 25)
    check("chart-created Secret with the JWT secret and Redis password, loaded with envFrom",
          secret_keys() == {"RECEIPTS_JWT_SECRET", "RECEIPTS_REDIS_PASSWORD"}
          and c.get("envFrom", [{}])[0].get("secretRef", {}).get("name") == one("Secret")["metadata"]["name"])
    check("no secret value in the container's env", not {"RECEIPTS_JWT_SECRET", "RECEIPTS_REDIS_PASSWORD"} & set(env))
    check("prometheus scrape annotations", dep["spec"]["template"]["metadata"]["annotations"].get("prometheus.io/port") == "9464")
    check("pods roll when the Secret changes", "checksum/secrets" in dep["spec"]["template"]["metadata"]["annotations"])

if case == "tls":
    check("with TLS, startup and readiness exec `receiptd health` (kubelet grpc probes speak no TLS)",
          exec_health(c["startupProbe"]) and exec_health(c["readinessProbe"]))
    check("RECEIPTS_TLS_CERT/KEY/CLIENT_CA point into the mounted Secrets",
          env.get("RECEIPTS_TLS_CERT") == "/etc/receipts/tls/tls.crt"
          and env.get("RECEIPTS_TLS_KEY") == "/etc/receipts/tls/tls.key"
          and env.get("RECEIPTS_TLS_CLIENT_CA") == "/etc/receipts/client-ca/ca.crt"
          and mounts.get("tls", {}).get("mountPath") == "/etc/receipts/tls"
          and volumes.get("tls", {}).get("secret", {}).get("secretName") == "receipts-tls")
    cmd = c["readinessProbe"]["exec"]["command"]
    check("with mutual TLS the probe presents a client certificate from a mounted Secret, and asks receipts.v1.ReceiptService",
          "--client-cert=/etc/receipts/probe-client/tls.crt" in cmd and "--client-key=/etc/receipts/probe-client/tls.key" in cmd
          and "--service=receipts.v1.ReceiptService" in cmd
          and mounts.get("probe-client", {}).get("mountPath") == "/etc/receipts/probe-client"
          and volumes.get("probe-client", {}).get("secret", {}).get("secretName") == "receipts-tls")
    check("the probe command gives up before the kubelet does", "--timeout-ms=2500" in cmd and c["readinessProbe"]["timeoutSeconds"] == 3)
    check("TLS Secret mounted as a directory (no subPath), so renewals reach the files",
          all("subPath" not in m for m in mounts.values()))

if case == "grace":
    check("shutdownGraceMs 45500: RECEIPTS_SHUTDOWN_GRACE_MS 45500, terminationGracePeriodSeconds 61 (5 + 46 + 10)",
          grace_ms == 45500 and tgps == 61)

if case == "embedded":
    check("embedded: one replica, Recreate (one process owns /data)",
          dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate")
    pvc = one("PersistentVolumeClaim")
    check("embedded: /data on a PersistentVolumeClaim",
          env.get("RECEIPTS_DATA_DIR") == "/data" and mounts.get("data", {}).get("mountPath") == "/data"
          and pvc is not None and volumes["data"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"])
    check("embedded: no PodDisruptionBudget", one("PodDisruptionBudget") is None)

if case == "existing-secret":
    check("existing Secret: none created, loaded with envFrom",
          one("Secret") is None and c.get("envFrom", [{}])[0].get("secretRef", {}).get("name") == "receipts-secrets")

if case == "monitoring":
    sm = one("ServiceMonitor")
    check("ServiceMonitor scrapes the metrics port", sm is not None and sm["spec"]["endpoints"][0]["port"] == "metrics")
    check("headless Service for client-side balancing",
          any(s["spec"].get("clusterIP") == "None" for s in by_kind.get("Service", [])))

# What receiptd itself says of the environment the pod gets (the Secret's keys included; an
# existing Secret is outside the chart, so a placeholder stands for it). The TLS case is left
# out: its files exist only in the pod.
if receiptd and case != "tls":
    pod_env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIPTS_")}
    pod_env.update({k: v for k, v in env.items() if v is not None})
    pod_env.update((one("Secret") or {}).get("stringData", {}))
    if case == "existing-secret":
        pod_env["RECEIPTS_JWT_SECRET"] = "render-only-0123456789"
    r = subprocess.run([receiptd, "config"], env=pod_env, capture_output=True, text=True)
    check("`receiptd config` accepts the pod's environment" + (f": {r.stderr.strip()}" if r.returncode else ""),
          r.returncode == 0)

if case == "numbers":
    check("integers render without an exponent, lists joined with commas, booleans as true",
          env.get("RECEIPTS_LOG_RETENTION") == "1000000"
          and env.get("RECEIPTS_CORS_ORIGINS") == "https://app.example,https://admin.example"
          and env.get("RECEIPTS_REDIS_CLUSTER") == "true")
PY
  then
    fail "$name: the checker itself failed"
  fi
  count_checks "$name: " "$WORK/$name.checks"
done

step "helm template: what the chart must refuse"
# name | expected message (grep -E) | arguments
REFUSED=(
  "embedded store with 2 replicas|exactly one replica|${SECRET[*]} --set config.store=embedded --set replicaCount=2"
  "no way to verify tokens|verifies bearer tokens|"
  "a secret in config|config.jwt-secret is set by the chart|${SECRET[*]} --set config.jwt-secret=render-only-0123456789"
  "a setting receiptd does not have|redis-url|${SECRET[*]} --set config.redis-url=redis://x:6379"
  "dev mode|dev mode|${SECRET[*]} --set config.dev-mode=true"
  "TLS without a Secret|tls.secretName|${SECRET[*]} --set tls.enabled=true"
  "an unknown store|embedded.*redis-scylla|${SECRET[*]} --set config.store=memory"
)
for case in "${REFUSED[@]}"; do
  name=${case%%|*}
  rest=${case#*|}
  want=${rest%%|*}
  # shellcheck disable=SC2086
  if out=$("$HELM" template receipts "$CHART" --kube-version "$KUBE_VERSION" ${rest#*|} 2>&1); then
    fail "refused: $name (it rendered)"
  elif grep -qE -- "$want" <<< "$out"; then
    pass "refused: $name"
  else
    echo "$out" >&2
    fail "refused: $name (without saying '$want')"
  fi
done

step "values.schema.json accepts every setting of docs/configuration.md"
missing=$(python3 - <<'PY'
import json, re
block = open("docs/configuration.md").read().split("<!-- keys:start -->")[1].split("<!-- keys:end -->")[0]
keys = re.findall(r"^\| `([a-z0-9-]+)`", block, re.M)
allowed = set(json.load(open("deploy/helm/receipts/values.schema.json"))["properties"]["config"]["propertyNames"]["enum"])
print(" ".join(k for k in keys if k not in allowed))
PY
)
if [ -z "$missing" ]; then pass "schema knows every documented key"; else fail "schema lacks: $missing"; fi

step "compose file: $COMPOSE"
# Placeholders, for rendering only.
export RECEIPTS_JWT_SECRET=render-only-0123456789 REDIS_PASSWORD=render-only
if docker compose version >/dev/null 2>&1; then
  COMPOSE_CONFIG=(docker compose -f "$COMPOSE" config)
  echo "with the docker compose plugin"
else
  # The docker CLI here has no compose plugin (and docker/compose cannot be `go install`ed: its
  # go.mod has exclude directives). compose-go's LoadProject is what `docker compose config` runs.
  (cd deploy/compose-check && go build -o "$GOBIN/compose-check" .)
  COMPOSE_CONFIG=("$GOBIN/compose-check" "$COMPOSE")
  echo "docker compose plugin missing: loading with deploy/compose-check (compose-go, the docker compose CLI's loader)"
fi
if "${COMPOSE_CONFIG[@]}" > "$WORK/compose.yaml" 2> "$WORK/compose.err"; then
  pass "compose config"
else
  cat "$WORK/compose.err" >&2
  fail "compose config"
fi
if env -u RECEIPTS_JWT_SECRET -u REDIS_PASSWORD "${COMPOSE_CONFIG[@]}" > /dev/null 2> "$WORK/compose-nosecret.err"; then
  fail "compose config refuses to run without RECEIPTS_JWT_SECRET and REDIS_PASSWORD"
elif grep -q 'RECEIPTS_JWT_SECRET' "$WORK/compose-nosecret.err"; then
  pass "compose config refuses to run without RECEIPTS_JWT_SECRET and REDIS_PASSWORD"
else
  cat "$WORK/compose-nosecret.err" >&2
  fail "compose config without secrets failed for another reason"
fi
if ! python3 - "$WORK/compose.yaml" "$RECEIPTD" > "$WORK/compose.checks" 2>&1 <<'PY'
import os, re, subprocess, sys, yaml

services = yaml.safe_load(open(sys.argv[1]))["services"]
receiptd = sys.argv[2]

def check(fact, cond):
    print(("ok " if cond else "FAIL ") + fact)

def seconds(d):
    # compose prints durations like 25s or 1m0s
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", str(d))
    return int(m.group(1) or 0) * 60 + float(m.group(2) or 0) if m else -1

nodes = {n: s for n, s in services.items() if s.get("environment", {}).get("RECEIPTS_STORE") == "redis-scylla"}
check("two receiptd nodes of the production tier", len(nodes) == 2)
envs = [s["environment"] for s in nodes.values()]
check("both nodes on the same Redis and Scylla",
      len({(e.get("RECEIPTS_REDIS_URLS"), e.get("RECEIPTS_SCYLLA_NODES")) for e in envs}) == 1)
for name, s in sorted(nodes.items()):
    grace = int(s["environment"].get("RECEIPTS_SHUTDOWN_GRACE_MS", "10000")) / 1000
    check(f"{name}: health check is `receiptd health`",
          s.get("healthcheck", {}).get("test") == ["CMD", "/usr/local/bin/receiptd", "health"])
    check(f"{name}: stop_grace_period {s.get('stop_grace_period')} > shutdown grace {grace:g} s",
          seconds(s.get("stop_grace_period", "10s")) > grace)
    deps = s.get("depends_on", {})
    check(f"{name}: waits for healthy Redis and Scylla",
          all(deps.get(d, {}).get("condition") == "service_healthy" for d in ("redis", "scylla")))
    check(f"{name}: read-only root, all capabilities dropped", s.get("read_only") is True and s.get("cap_drop") == ["ALL"])
    if receiptd:
        node_env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIPTS_")}
        node_env.update(s["environment"])
        r = subprocess.run([receiptd, "config"], env=node_env, capture_output=True, text=True)
        check(f"{name}: `receiptd config` accepts its environment" + (f": {r.stderr.strip()}" if r.returncode else ""),
              r.returncode == 0)
redis = services.get("redis", {})
cmd = " ".join(redis.get("command", []))
check("Redis with AOF (appendonly yes, appendfsync everysec) and noeviction",
      "--appendonly yes" in cmd and "--appendfsync everysec" in cmd and "--maxmemory-policy noeviction" in cmd)
check("Redis data on a volume", any(v.get("target") == "/data" and v.get("type") == "volume" for v in redis.get("volumes", [])))
check("Scylla data on a volume", any(v.get("type") == "volume" for v in services.get("scylla", {}).get("volumes", [])))
check("Redis and Scylla have health checks", all("healthcheck" in services.get(n, {}) for n in ("redis", "scylla")))
PY
then
  fail "compose: the checker itself failed"
fi
count_checks "compose: " "$WORK/compose.checks"

echo
echo "deploy checks: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
