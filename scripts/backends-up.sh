# Sourced by scripts/test.sh and scripts/faults.sh: installs and starts the
# test backends (Redis standalone, a Redis Cluster of 3 masters with a
# replica each, Cassandra 5.0, and a second Cassandra that wants a password
# and TLS) and exports where they answer. Backends this
# run starts are stopped at exit; ones already running (a developer's) are
# reused and left alone. A backend that does not come up fails the run here.
STARTED_BACKENDS=0
scripts/backends.sh running || STARTED_BACKENDS=1
stop_backends() {
  if [ "$STARTED_BACKENDS" = 1 ]; then
    scripts/backends.sh stop-cassandra || true
    scripts/backends.sh stop-cassandra-secure || true
    scripts/backends.sh stop-redis || true
  fi
}
trap stop_backends EXIT
scripts/backends.sh install
# The secure Cassandra (password + TLS) boots beside the rest.
scripts/backends.sh start-cassandra-secure &
SECURE_CASSANDRA=$!
scripts/backends.sh start-redis
scripts/backends.sh start-cassandra
wait "$SECURE_CASSANDRA"
eval "$(scripts/backends.sh env)"
