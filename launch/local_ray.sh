#!/usr/bin/env bash
# Start (or stop) a single-node Ray head bound to loopback only, for local runs and tests.
#   launch/local_ray.sh start     # head on 127.0.0.1:6379, dashboard / job API on http://127.0.0.1:8265
#   launch/local_ray.sh stop
set -euo pipefail
case "${1:-start}" in
  start)
    # Ray's single-machine mode: without it Ray's servers listen on every interface whatever the node address
    export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
    # token authentication, with the token in ~/.ray/auth_token (made once); clients need RAY_AUTH_MODE=token,
    # which launch/submit.sh sets when that file exists
    export RAY_AUTH_MODE=token
    ray get-auth-token --generate > /dev/null
    ray start --head --node-ip-address=127.0.0.1 --port="${RAY_PORT:-6379}" \
      --dashboard-host=127.0.0.1 --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" --disable-usage-stats
    echo "submit jobs with: ray job submit --address http://127.0.0.1:${RAY_DASHBOARD_PORT:-8265} ..."
    ;;
  stop)
    ray stop
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
