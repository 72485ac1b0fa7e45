#!/usr/bin/env bash
# A lean MLflow tracking server for SpecialSAM sweeps: one process, one worker, no background
# job runner. See cluster/README.md ("MLflow tracking server") for where to run it.
#
#   cluster/mlflow-server.sh              # serve on 127.0.0.1:5000 (reach it via an SSH tunnel)
#   cluster/mlflow-server.sh --dry-run    # print the command instead of running it
#
# Settings (environment variables; the names are the ones `mlflow server` itself reads):
#   MLFLOW_HOST                   interface to bind            (default 127.0.0.1 = this machine only)
#   MLFLOW_PORT                   port                         (default 5000)
#   SPECIALSAM_SHARED             shared folder                (default /mnt/shared)
#   MLFLOW_BACKEND_STORE_URI      runs, params, metrics        (default sqlite:///$SPECIALSAM_SHARED/mlflow.db)
#   MLFLOW_ARTIFACTS_DESTINATION  plots, reports, checkpoints  (default $SPECIALSAM_SHARED/mlartifacts;
#                                                               s3://bucket/prefix works too)
#   MLFLOW_SERVER_ALLOWED_HOSTS   Host headers accepted        (mlflow's default: localhost + private IPs)
#
# SECURITY: the MLflow server has no authentication. Anyone who can reach the port can read and
# delete every run. Keep MLFLOW_HOST=127.0.0.1 and use `ssh -L 5000:localhost:5000 ...`, or bind
# only to a private address that your firewall / security group keeps inside the cluster.
set -euo pipefail

dry_run=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) dry_run=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "mlflow-server.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

shared="${SPECIALSAM_SHARED:-/mnt/shared}"
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
backend="${MLFLOW_BACKEND_STORE_URI:-sqlite:///${shared}/mlflow.db}"
artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-${shared}/mlartifacts}"

# MLflow 3 starts a Huey job runner (extra consumer processes) next to the server whenever the
# backend is a database. Sweeps never submit server-side jobs, so switch it off.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

cmd=(mlflow server
    --backend-store-uri "$backend"
    --artifacts-destination "$artifacts"
    --serve-artifacts
    --host "$host"
    --port "$port"
    --workers 1)

if [[ "$dry_run" == 1 ]]; then
    printf 'MLFLOW_SERVER_ENABLE_JOB_EXECUTION=%s' "$MLFLOW_SERVER_ENABLE_JOB_EXECUTION"
    printf ' %q' "${cmd[@]}"
    printf '\n'
    exit 0
fi

if [[ "$host" != "127.0.0.1" && "$host" != "localhost" ]]; then
    echo "mlflow-server.sh: WARNING: binding to $host; the server has no authentication." \
         "Make sure only cluster nodes can reach port $port." >&2
fi
case "$backend" in
    sqlite:///*) mkdir -p "$(dirname "${backend#sqlite:///}")" ;;
esac
case "$artifacts" in
    *://*) ;;
    *) mkdir -p "$artifacts" ;;
esac
exec "${cmd[@]}"
