#!/usr/bin/env bash
# Installs, starts and stops the real storage backends the backend tests talk
# to: Debian's redis-server and a single-node Apache Cassandra 5.0 (same CQL
# protocol as ScyllaDB). Everything lives under .cache/ in the repository.
#
#   scripts/backends.sh install          # idempotent; a second run does nothing
#   scripts/backends.sh running          # exit 0 when every backend answers
#   scripts/backends.sh start-cassandra  # reuses a running one; waits for CQL
#   scripts/backends.sh stop-cassandra
#   scripts/backends.sh start-cassandra-secure | stop-cassandra-secure
#                                        # a second node that wants a password
#                                        # (cassandra/cassandra) and TLS with a
#                                        # client certificate (CA, node and client
#                                        # certificates made with openssl)
#   scripts/backends.sh start-redis | stop-redis   # a standalone server and a
#                                        # cluster of 3 masters + 3 replicas (redis-cli --cluster create), all with AOF
#   eval "$(scripts/backends.sh env)"    # RECEIPTS_TEST_CASSANDRA, RECEIPTS_TEST_REDIS,
#                                        # RECEIPTS_TEST_REDIS_CLUSTER,
#                                        # RECEIPTS_TEST_CASSANDRA_SECURE (host:port)
#                                        # and its files, RECEIPTS_TEST_CASSANDRA_SECURE_TLS
#
# Cassandra 5.0 has no binary tarball on Maven Central, so `install` resolves
# cassandra-all and its runtime dependencies with Maven (scripts/cassandra/pom.xml
# pins the version) and `start-cassandra` runs CassandraDaemon from those jars
# with a generated cassandra.yaml (scripts/cassandra/cassandra.yaml.in).
#
# Environment: CASSANDRA_PORT (CQL, default 19042), CASSANDRA_STORAGE_PORT
# (default 17000), CASSANDRA_SECURE_PORT / CASSANDRA_SECURE_STORAGE_PORT (the
# secure node, default 19142 / 17100), CASSANDRA_START_TIMEOUT (seconds, default 180),
# REDIS_PORT (default 16379), REDIS_CLUSTER_PORTS (the three masters of the
# test Redis Cluster, default "16380 16381 16382").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=$ROOT/.cache
CASSANDRA_LIB=$CACHE/cassandra/lib
CASSANDRA_STAMP=$CACHE/cassandra/installed.stamp
CASSANDRA_RUN=$CACHE/run/cassandra
CASSANDRA_PID=$CASSANDRA_RUN/cassandra.pid
CASSANDRA_PORT=${CASSANDRA_PORT:-19042}
CASSANDRA_STORAGE_PORT=${CASSANDRA_STORAGE_PORT:-17000}
CASSANDRA_START_TIMEOUT=${CASSANDRA_START_TIMEOUT:-180}
CASSANDRA_SECURE_RUN=$CACHE/run/cassandra-secure
CASSANDRA_SECURE_PORT=${CASSANDRA_SECURE_PORT:-19142}
CASSANDRA_SECURE_TLS=$CASSANDRA_SECURE_RUN/tls
# The node start_cassandra starts: the plain one unless `secure` (below).
CASSANDRA_SECURE=0
secure() {
  CASSANDRA_SECURE=1
  CASSANDRA_RUN=$CASSANDRA_SECURE_RUN
  CASSANDRA_PID=$CASSANDRA_RUN/cassandra.pid
  CASSANDRA_PORT=$CASSANDRA_SECURE_PORT
  CASSANDRA_STORAGE_PORT=${CASSANDRA_SECURE_STORAGE_PORT:-17100}
}
REDIS_RUN=$CACHE/run/redis
REDIS_PORT=${REDIS_PORT:-16379}
REDIS_CLUSTER_PORTS=${REDIS_CLUSTER_PORTS:-16380 16381 16382}
# One replica per master (docs/storage.md asks for it in production, and the
# cluster behaviour suite acknowledges writes only once a replica has them).
REDIS_REPLICA_PORTS=${REDIS_REPLICA_PORTS:-16383 16384 16385}

log() { printf 'backends: %s\n' "$*" >&2; }
fail() { log "$*"; exit 1; }

# apt-get install, refreshing the package lists only when the install fails
# (a fresh container has empty lists).
apt_install() {
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  if ! "${sudo[@]}" apt-get install -y -q "$@" >/dev/null; then
    log "apt-get install failed; updating package lists and retrying"
    "${sudo[@]}" apt-get update -q >/dev/null
    "${sudo[@]}" apt-get install -y -q "$@" >/dev/null
  fi
}

install() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    log "installing redis-server redis-tools"
    apt_install redis-server redis-tools
  fi
  if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then
    log "installing a JDK and Maven"
    apt_install openjdk-17-jdk-headless maven
  fi
  local pom=$ROOT/scripts/cassandra/pom.xml
  # The stamp records the pom it was made from: changing the pinned version
  # re-resolves, anything else is a no-op.
  local want
  want=$(sha256sum "$pom" | cut -d' ' -f1)
  if [ -f "$CASSANDRA_STAMP" ] && [ "$(cat "$CASSANDRA_STAMP")" = "$want" ]; then
    return 0
  fi
  log "resolving Cassandra and its runtime dependencies with Maven (once)"
  mkdir -p "$CACHE/cassandra"
  rm -rf "$CASSANDRA_LIB.tmp"
  mkdir -p "$CASSANDRA_LIB.tmp"
  # copy-dependencies copies cassandra-all itself too: it is the pom's only
  # direct dependency.
  if ! mvn -q -B -f "$pom" dependency:copy-dependencies \
    -DoutputDirectory="$CASSANDRA_LIB.tmp" -DincludeScope=runtime \
    >"$CACHE/cassandra/mvn.log" 2>&1; then
    tail -n 40 "$CACHE/cassandra/mvn.log" >&2
    fail "Maven could not resolve Cassandra (log: $CACHE/cassandra/mvn.log)"
  fi
  ls "$CASSANDRA_LIB.tmp"/cassandra-all-*.jar >/dev/null 2>&1 \
    || fail "Maven did not produce cassandra-all in $CASSANDRA_LIB.tmp"
  rm -rf "$CASSANDRA_LIB"
  mv "$CASSANDRA_LIB.tmp" "$CASSANDRA_LIB"
  echo "$want" >"$CASSANDRA_STAMP"
  log "Cassandra installed: $(basename "$(ls "$CASSANDRA_LIB"/cassandra-all-*.jar)")"
}

# Succeeds when a CQL server answers an OPTIONS frame with SUPPORTED on
# 127.0.0.1:$1 (a real protocol handshake, not just a TCP connect); with $2,
# over TLS with the CA and client certificate in that directory.
cql_ready() {
  python3 - "$1" "${2:-}" <<'PY' 2>/dev/null
import socket, ssl, struct, sys
port, tls = int(sys.argv[1]), sys.argv[2]
try:
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    if tls:
        ctx = ssl.create_default_context(cafile=tls + "/ca.pem")
        ctx.load_cert_chain(tls + "/client.pem", tls + "/client.key")
        s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
    s.settimeout(3)
    # v4 request header: version, flags, stream, opcode OPTIONS (0x05), body length 0.
    s.sendall(struct.pack(">BBhBI", 0x04, 0, 1, 0x05, 0))
    head = b""
    while len(head) < 9:
        chunk = s.recv(9 - len(head))
        if not chunk:
            sys.exit(1)
        head += chunk
    version, _flags, _stream, opcode, _length = struct.unpack(">BBhBI", head)
    # A response frame (high bit set) with opcode SUPPORTED (0x06).
    sys.exit(0 if version & 0x80 and opcode == 0x06 else 1)
except (OSError, ssl.SSLError):
    sys.exit(1)
PY
}

# cql_ready for the node start_cassandra manages.
cassandra_ready() {
  if [ "$CASSANDRA_SECURE" = 1 ]; then
    cql_ready "$CASSANDRA_PORT" "$CASSANDRA_SECURE_TLS"
  else
    cql_ready "$CASSANDRA_PORT"
  fi
}

# A test CA, a node certificate for 127.0.0.1 and localhost, and a client
# certificate, made once into $CASSANDRA_SECURE_TLS.
make_secure_tls() {
  local d=$CASSANDRA_SECURE_TLS
  [ -f "$d/node-keystore.pem" ] && return 0
  rm -rf "$d.tmp"
  mkdir -p "$d.tmp"
  (
    cd "$d.tmp"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -keyout ca.key -out ca.pem \
      -subj "/CN=receipts test Cassandra CA" 2>/dev/null
    for who in node client; do
      use=serverAuth
      san="subjectAltName=IP:127.0.0.1,DNS:localhost"
      if [ "$who" = client ]; then
        use=clientAuth
        san="subjectAltName=DNS:receiptd"
      fi
      openssl req -newkey rsa:2048 -nodes -keyout "$who.key" -out "$who.csr" \
        -subj "/CN=receipts test $who" 2>/dev/null
      printf '%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=%s\n' \
        "$san" "$use" >"$who.ext"
      openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile "$who.ext" -out "$who.pem" 2>/dev/null
    done
    # Cassandra's PEM key store: the private key, then the certificate.
    cat node.key node.pem >node-keystore.pem
    rm -f ./*.csr ./*.ext ca.srl
  )
  rm -rf "$d"
  mv "$d.tmp" "$d"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_cassandra() {
  if cassandra_ready; then
    log "Cassandra already answering CQL on 127.0.0.1:$CASSANDRA_PORT; reusing it"
    return 0
  fi
  if pid_alive "$CASSANDRA_PID"; then
    log "Cassandra (pid $(cat "$CASSANDRA_PID")) is running but not answering yet; waiting"
  else
    [ -f "$CASSANDRA_STAMP" ] || install
    [ -f "$CASSANDRA_STAMP" ] || fail "Cassandra is not installed"
    mkdir -p "$CASSANDRA_RUN"/{data,commitlog,hints,saved_caches,cdc_raw,triggers}
    sed -e "s|@RUN@|$CASSANDRA_RUN|g" \
      -e "s|@CQL_PORT@|$CASSANDRA_PORT|g" \
      -e "s|@STORAGE_PORT@|$CASSANDRA_STORAGE_PORT|g" \
      "$ROOT/scripts/cassandra/cassandra.yaml.in" >"$CASSANDRA_RUN/cassandra.yaml"
    if [ "$CASSANDRA_SECURE" = 1 ]; then
      make_secure_tls
      # Passwords (the default superuser cassandra/cassandra) and TLS only,
      # with a client certificate from the test CA.
      sed -i 's/^authenticator: .*/authenticator: PasswordAuthenticator/' "$CASSANDRA_RUN/cassandra.yaml"
      cat >>"$CASSANDRA_RUN/cassandra.yaml" <<YAML

client_encryption_options:
  enabled: true
  optional: false
  require_client_auth: true
  ssl_context_factory:
    class_name: org.apache.cassandra.security.PEMBasedSslContextFactory
  keystore: $CASSANDRA_SECURE_TLS/node-keystore.pem
  truststore: $CASSANDRA_SECURE_TLS/ca.pem
YAML
    fi
    local jvm=(
      -Xms512m -Xmx1g -Xss512k
      -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1
      -XX:G1HeapRegionSize=16m -XX:+CrashOnOutOfMemoryError
      -XX:TieredStopAtLevel=1 # faster startup; a test node is never hot
      -XX:+UseCompressedOops -XX:-UsePerfData
      # Cassandra 5.0 on Java 17 (from its conf/jvm17-server.options).
      -Djdk.attach.allowAttachSelf=true
      --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
      --add-exports java.base/jdk.internal.ref=ALL-UNNAMED
      --add-exports java.base/sun.nio.ch=ALL-UNNAMED
      --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
      --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
      --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
      --add-exports java.sql/java.sql=ALL-UNNAMED
      --add-exports java.base/java.lang.ref=ALL-UNNAMED
      --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
      --add-opens java.base/java.lang.module=ALL-UNNAMED
      --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
      --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
      --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
      --add-opens java.base/jdk.internal.math=ALL-UNNAMED
      --add-opens java.base/jdk.internal.module=ALL-UNNAMED
      --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
      --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
      --add-opens java.base/sun.nio.ch=ALL-UNNAMED
      --add-opens java.base/java.io=ALL-UNNAMED
      --add-opens java.base/java.nio=ALL-UNNAMED
      --add-opens java.base/java.util.concurrent=ALL-UNNAMED
      --add-opens java.base/java.util.concurrent.atomic=ALL-UNNAMED
      --add-opens java.base/java.lang.reflect=ALL-UNNAMED
      --add-opens java.base/java.lang=ALL-UNNAMED
      --add-opens java.base/java.util=ALL-UNNAMED
      --add-opens java.base/java.math=ALL-UNNAMED
      --add-opens java.base/java.net=ALL-UNNAMED
      -Dio.netty.tryReflectionSetAccessible=true
      -Dio.netty.allocator.useCacheForAllThreads=true
      -Dio.netty.allocator.maxOrder=11
      # Paths, logging, and the settings that make a single node start fast.
      -Dcassandra-foreground=yes
      -Dcassandra.config="file://$CASSANDRA_RUN/cassandra.yaml"
      -Dcassandra.storagedir="$CASSANDRA_RUN"
      -Dcassandra.logdir="$CASSANDRA_RUN"
      -Dcassandra.triggers_dir="$CASSANDRA_RUN/triggers"
      -Dlogback.configurationFile="$ROOT/scripts/cassandra/logback.xml"
      -Dcassandra.skip_wait_for_gossip_to_settle=0
      -Dcassandra.ring_delay_ms=0
      -Dcassandra.superuser_setup_delay_ms=0
      -Dcassandra.load_ring_state=true
      -Djava.net.preferIPv4Stack=true
    )
    # jamm measures memtable sizes; Cassandra's own scripts load it as an agent.
    local jamm
    jamm=$(ls "$CASSANDRA_LIB"/jamm-*.jar 2>/dev/null | head -n1 || true)
    [ -n "$jamm" ] && jvm+=("-javaagent:$jamm")
    log "starting Cassandra (CQL 127.0.0.1:$CASSANDRA_PORT, log $CASSANDRA_RUN/system.log)"
    # No remote JMX: neither com.sun.management.jmxremote.port nor
    # cassandra.jmx.local.port is set, so Cassandra starts no JMX server.
    nohup setsid java "${jvm[@]}" -cp "$CASSANDRA_LIB/*" \
      org.apache.cassandra.service.CassandraDaemon \
      >"$CASSANDRA_RUN/stdout.log" 2>&1 </dev/null &
    echo $! >"$CASSANDRA_PID"
  fi
  local start=$SECONDS
  while ! cassandra_ready; do
    if ! pid_alive "$CASSANDRA_PID"; then
      tail -n 40 "$CASSANDRA_RUN/stdout.log" "$CASSANDRA_RUN/system.log" >&2 2>/dev/null || true
      fail "Cassandra exited during startup (logs above)"
    fi
    if ((SECONDS - start >= CASSANDRA_START_TIMEOUT)); then
      tail -n 40 "$CASSANDRA_RUN/system.log" "$CASSANDRA_RUN/stdout.log" >&2 2>/dev/null || true
      fail "Cassandra did not answer CQL within ${CASSANDRA_START_TIMEOUT}s (logs above; pid $(cat "$CASSANDRA_PID") left running)"
    fi
    sleep 1
  done
  log "Cassandra answers CQL on 127.0.0.1:$CASSANDRA_PORT after $((SECONDS - start))s"
}

# Sends SIGTERM to the process in pid file $1 and waits up to $2 seconds,
# then SIGKILL.
stop_pid() {
  local pidfile=$1 wait=$2 name=$3
  if ! pid_alive "$pidfile"; then
    rm -f "$pidfile"
    log "$name is not running"
    return 0
  fi
  local pid
  pid=$(cat "$pidfile")
  kill "$pid"
  for ((i = 0; i < wait * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) did not stop in ${wait}s; killing it"
    kill -9 "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$pidfile"
  log "$name stopped"
}

# Starts one redis-server on port $1 in directory $2, with extra arguments
# after those, persisting as docs/storage.md tells operators to (AOF, fsync
# every second; no RDB snapshots); waits until it answers PING.
redis_up() {
  local port=$1 dir=$2
  shift 2
  mkdir -p "$dir"
  if pid_alive "$dir/redis.pid" && redis-cli -p "$port" ping >/dev/null 2>&1; then
    return 0
  fi
  redis-server --port "$port" --bind 127.0.0.1 --daemonize yes \
    --pidfile "$dir/redis.pid" --dir "$dir" \
    --logfile "$dir/redis.log" --save "" --appendonly yes --appendfsync everysec "$@"
  for ((i = 0; i < 100; i++)); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  tail -n 20 "$dir/redis.log" >&2 || true
  fail "Redis did not answer on 127.0.0.1:$port"
}

start_redis() {
  command -v redis-server >/dev/null || install
  redis_up "$REDIS_PORT" "$REDIS_RUN"
  log "Redis answers on 127.0.0.1:$REDIS_PORT"
  local p nodes=()
  # Masters first: `--cluster create` makes the first three masters and
  # gives each one of the last three as its replica.
  for p in $REDIS_CLUSTER_PORTS $REDIS_REPLICA_PORTS; do
    redis_up "$p" "$REDIS_RUN/cluster-$p" --cluster-enabled yes \
      --cluster-config-file "$REDIS_RUN/cluster-$p/nodes.conf" --cluster-node-timeout 5000
    nodes+=("127.0.0.1:$p")
  done
  local first=${nodes[0]#*:}
  if ! redis-cli -p "$first" cluster info | grep -q 'cluster_state:ok'; then
    if [ "$(redis-cli -p "$first" cluster info | sed -n 's/^cluster_known_nodes:\([0-9]*\).*/\1/p')" = 1 ]; then
      redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$REDIS_RUN/cluster-create.log" 2>&1 \
        || { cat "$REDIS_RUN/cluster-create.log" >&2; fail "redis-cli --cluster create failed"; }
    fi
  fi
  # Ready means: every node sees the cluster ok, and every master has its
  # replica in sync (a write acknowledged with WAIT needs it).
  local ok=0
  for ((i = 0; i < 600; i++)); do
    ok=1
    for p in $REDIS_CLUSTER_PORTS $REDIS_REPLICA_PORTS; do
      redis-cli -p "$p" cluster info | grep -q 'cluster_state:ok' || ok=0
    done
    local masters=0 synced=0
    for p in $REDIS_CLUSTER_PORTS $REDIS_REPLICA_PORTS; do
      local info
      info=$(redis-cli -p "$p" info replication)
      if grep -q '^role:master' <<<"$info"; then
        masters=$((masters + 1))
        grep -q '^connected_slaves:1' <<<"$info" && grep -q 'state=online' <<<"$info" && synced=$((synced + 1))
      fi
    done
    [ "$masters" = 3 ] && [ "$synced" = 3 ] || ok=0
    [ "$ok" = 1 ] && break
    sleep 0.1
  done
  [ "$ok" = 1 ] || fail "the Redis Cluster on ports $REDIS_CLUSTER_PORTS $REDIS_REPLICA_PORTS did not reach cluster_state:ok with 3 masters, each with a replica in sync"
  log "Redis Cluster answers on ${nodes[*]} (3 masters, 3 replicas, AOF)"
}

stop_redis() {
  stop_pid "$REDIS_RUN/redis.pid" 10 Redis
  local p
  for p in $REDIS_CLUSTER_PORTS $REDIS_REPLICA_PORTS; do
    stop_pid "$REDIS_RUN/cluster-$p/redis.pid" 10 "Redis cluster node $p"
    # A stopped cluster forgets nothing (nodes.conf); start afresh next time.
    rm -rf "$REDIS_RUN/cluster-$p"
  done
}

case "${1:-}" in
install) install ;;
running)
  # Succeeds when Cassandra, the standalone Redis and the cluster all answer.
  cql_ready "$CASSANDRA_PORT" || exit 1
  cql_ready "$CASSANDRA_SECURE_PORT" "$CASSANDRA_SECURE_TLS" || exit 1
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 || exit 1
  for p in $REDIS_CLUSTER_PORTS $REDIS_REPLICA_PORTS; do
    redis-cli -p "$p" cluster info 2>/dev/null | grep -q cluster_state:ok || exit 1
  done
  ;;
start-cassandra) start_cassandra ;;
stop-cassandra) stop_pid "$CASSANDRA_PID" 60 Cassandra ;;
start-cassandra-secure) secure; start_cassandra ;;
stop-cassandra-secure) secure; stop_pid "$CASSANDRA_PID" 60 "Cassandra (secure)" ;;
start-redis) start_redis ;;
stop-redis) stop_redis ;;
env)
  echo "export RECEIPTS_TEST_CASSANDRA=127.0.0.1:$CASSANDRA_PORT"
  echo "export RECEIPTS_TEST_REDIS=redis://127.0.0.1:$REDIS_PORT"
  echo "export RECEIPTS_TEST_CASSANDRA_SECURE=127.0.0.1:$CASSANDRA_SECURE_PORT"
  echo "export RECEIPTS_TEST_CASSANDRA_SECURE_TLS=$CASSANDRA_SECURE_TLS"
  urls=()
  for p in $REDIS_CLUSTER_PORTS; do urls+=("redis://127.0.0.1:$p"); done
  echo "export RECEIPTS_TEST_REDIS_CLUSTER=$(IFS=,; echo "${urls[*]}")"
  ;;
*)
  echo "usage: $0 install|running|start-cassandra|stop-cassandra|start-cassandra-secure|stop-cassandra-secure|start-redis|stop-redis|env" >&2
  exit 64
  ;;
esac
