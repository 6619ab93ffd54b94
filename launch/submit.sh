#!/usr/bin/env bash
# Submit `rlvr train CONFIG [key=value ...]` to any Ray cluster as a job (`ray job submit`).
#   RAY_ADDRESS=http://127.0.0.1:8265 launch/submit.sh configs/smoke.yaml steps=2 output_dir=/tmp/runs
# The repository is uploaded as the job's working dir (without .venv, runs, .git and model weights); the job
# builds it into the working dir (`pip install --no-deps --target`, no change to the cluster's Python) and
# runs that copy with the cluster's Python, which must have rlvr's dependencies installed (the cluster
# image: `pip install ".[vllm]"` or the same requirements). Extra runtime-env JSON can be
# given in RLVR_RUNTIME_ENV (merged over the defaults below). The job's id and status are printed;
# follow it with `ray job logs --follow ID`, stop it with `ray job stop ID` (with RAY_AUTH_MODE=token when
# the cluster uses token authentication).
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 CONFIG [key=value ...]" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
# a cluster with token authentication (launch/local_ray.sh, Ray's default for new local clusters) wants the
# client to send the token: it is read from RAY_AUTH_TOKEN or ~/.ray/auth_token
if [ -z "${RAY_AUTH_MODE:-}" ] && { [ -n "${RAY_AUTH_TOKEN:-}" ] || [ -f "$HOME/.ray/auth_token" ]; }; then
  export RAY_AUTH_MODE=token
fi
ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
RUNTIME_ENV=$(python3 - "${RLVR_RUNTIME_ENV:-{\}}" <<'PY'
import json, sys
env = {"excludes": [".venv", "runs", ".git", "*.safetensors", "*.gguf"],
       # the job's own build of the uploaded checkout comes first: it runs this code, not an installed copy
       "env_vars": {"PYTHONPATH": ".rlvr-build", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}}
extra = json.loads(sys.argv[1])
env["env_vars"].update(extra.pop("env_vars", {}))
env.update(extra)
print(json.dumps(env))
PY
)
exec ray job submit --address "$ADDRESS" --working-dir . --runtime-env-json "$RUNTIME_ENV" \
  -- bash -c "python -m pip install -q --no-deps --no-build-isolation --target .rlvr-build . && python -m rlvr.cli train $(printf '%q ' "$@")"
