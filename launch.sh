#!/usr/bin/env bash
# launch.sh: run a jaxdl experiment on a Cloud TPU VM (one host or a pod slice) with gcloud.
# `./launch.sh --help` explains every subcommand. `--dry-run` prints the exact gcloud command
# lines instead of running them (no gcloud and no network needed), which is how the tests run it.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: ./launch.sh SUBCOMMAND [OPTIONS] [--config=FILE[:PRESET]] [--config.KEY=VALUE ...]

Runs a jaxdl experiment on a Cloud TPU VM, single host or pod slice. Every worker of a pod
slice runs the same command; jaxdl calls jax.distributed.initialize() itself on a TPU VM.

Subcommands:
  create   Create the TPU VM (gcloud compute tpus tpu-vm create).
  setup    Copy this checkout (tracked and untracked, not ignored, files) to every worker and
           install it there: Python 3.12 through uv, jax[tpu], jaxdl with its gcs extra (gcsfs).
           Re-run it after changing the code.
  run      Start `python -m jaxdl.main --workdir=WORKDIR --config=... --config.k=v ...` on every
           worker, detached from ssh (setsid + nohup), so it survives a dropped connection.
           Each worker logs to ~/jaxdl-runs/RUN_NAME.log and records the pid next to it.
           --config and --config.* arguments (and anything after `--`) pass through unchanged,
           whatever spaces or quotes they hold. WORKDIR must be a gs:// path: every host
           writes its part of each checkpoint there. Re-running the same run resumes it.
           A second `run` with the same run name, or the same workdir (gs://b//r/ is
           gs://b/r), while the first is still running on a worker is refused (--force starts
           it anyway; jaxdl itself still refuses a second run on a workdir in use: its lease).
  logs     Follow a run's log (worker 0 by default; --worker=N or --worker=all).
  stop     End a run on every worker: SIGTERM to its process group, then wait up to
           --grace seconds for it to exit (jaxdl saves the current step on SIGTERM and
           exits), reporting for each worker whether it saved; SIGKILL only after the grace
           time. Orbax commits checkpoints atomically, so a stopped run resumes from its
           newest checkpoint when the same `run` is repeated.
  delete   Delete the TPU VM.

Options (each also from the environment variable in brackets):
  --name=NAME               TPU VM name [TPU_NAME]                          (required)
  --zone=ZONE               zone, e.g. us-central2-b [TPU_ZONE]             (required)
  --project=PROJECT         GCP project; gcloud's default if unset [TPU_PROJECT]
  --accelerator-type=TYPE   for create: v4-8, v4-32, v5litepod-8, ... [TPU_ACCELERATOR_TYPE]
                            (default v4-8)
  --version=VERSION         for create: TPU runtime version [TPU_RUNTIME_VERSION]
                            (default tpu-ubuntu2204-base)
  --spot                    for create: a Spot VM (cheaper, may be preempted)
  --workdir=gs://B/PATH     for run: the jaxdl workdir [JAXDL_WORKDIR]
  --run-name=NAME           for run/logs/stop: names the log and pid files (default: the
                            workdir's last path component) [JAXDL_RUN_NAME]
  --worker=N|all            for logs: which worker's log to follow (default 0)
  --grace=SECONDS           for stop: how long to wait for the SIGTERM save before SIGKILL;
                            for run: the job's own bound on that save (jaxdl's
                            --stop_timeout) [JAXDL_STOP_GRACE] (default 300)
  --force                   for run: start even if the run name or workdir is running
                            (a job that died without ending its process group, say)
  --dry-run                 print the gcloud command lines, run nothing
  -h, --help                this text

End to end, on a v4-32 pod slice (4 hosts):
  export TPU_NAME=jaxdl-v4 TPU_ZONE=us-central2-b TPU_ACCELERATOR_TYPE=v4-32
  ./launch.sh create
  ./launch.sh setup
  ./launch.sh run --workdir=gs://MY_BUCKET/runs/mnist --config=configs/mnist.py \
      --config.batch_size=256
  ./launch.sh logs --run-name=mnist
  ./launch.sh stop --run-name=mnist      # optional; `run` again resumes
  ./launch.sh delete
EOF
}

die() {
  echo "launch.sh: error: $*" >&2
  exit 1
}

# Shell-quotes one word the way Python's shlex.quote does: safe words stay as they are, the rest
# go in single quotes with each ' written as '"'"'. The result is valid POSIX sh and bash.
quote() {
  if [[ -n "$1" && "$1" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\"\'\"\'}"
  fi
}

# A command line with every word quoted: quote_all a 'b c' → a 'b c'.
quote_all() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(quote "$word")"
  done
  printf '%s' "$out"
}

# Prints (with --dry-run) or runs one command.
do_cmd() {
  if [[ "$DRY_RUN" == 1 ]]; then
    quote_all "$@"
    printf '\n'
  else
    "$@"
  fi
}

# --- Arguments: launch options anywhere, jaxdl's --config* arguments collected for `run`. ------
SUBCOMMAND=""
DRY_RUN=0
SPOT=0
FORCE=0
WORKER="0"
# stop's wait for the SIGTERM save. jaxdl saves at the end of the current step and waits for
# the write; on a pod every host writes its shard of the state to GCS. 300 s covers a step of
# tens of seconds plus a few GB written per host at GCS's ~50-100 MB/s per stream with room to
# spare (an estimate from those rates, not measured on a TPU pod); past it the job is killed
# and resumes from its previous checkpoint.
GRACE="${JAXDL_STOP_GRACE:-300}"
NAME="${TPU_NAME:-}"
ZONE="${TPU_ZONE:-}"
PROJECT="${TPU_PROJECT:-}"
ACCELERATOR_TYPE="${TPU_ACCELERATOR_TYPE:-v4-8}"
VERSION="${TPU_RUNTIME_VERSION:-tpu-ubuntu2204-base}"
WORKDIR="${JAXDL_WORKDIR:-}"
RUN_NAME="${JAXDL_RUN_NAME:-}"
JAXDL_ARGS=()

while [[ $# -gt 0 ]]; do
  arg="$1"
  shift
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --spot) SPOT=1 ;;
    --name=*) NAME="${arg#*=}" ;;
    --zone=*) ZONE="${arg#*=}" ;;
    --project=*) PROJECT="${arg#*=}" ;;
    --accelerator-type=*) ACCELERATOR_TYPE="${arg#*=}" ;;
    --version=*) VERSION="${arg#*=}" ;;
    --workdir=*) WORKDIR="${arg#*=}" ;;
    --run-name=*) RUN_NAME="${arg#*=}" ;;
    --worker=*) WORKER="${arg#*=}" ;;
    --grace=*) GRACE="${arg#*=}" ;;
    --force) FORCE=1 ;;
    --config|--config=*|--config.*) JAXDL_ARGS+=("$arg") ;;
    --) JAXDL_ARGS+=("$@"); break ;;
    create|setup|run|logs|stop|delete)
      [[ -z "$SUBCOMMAND" ]] || die "two subcommands: $SUBCOMMAND and $arg"
      SUBCOMMAND="$arg" ;;
    *)
      # `--config FILE` (two words) is jaxdl's other spelling; keep the pair together.
      if [[ ${#JAXDL_ARGS[@]} -gt 0 && "${JAXDL_ARGS[-1]}" == "--config" ]]; then
        JAXDL_ARGS+=("$arg")
      else
        die "unknown argument: $arg (see ./launch.sh --help)"
      fi ;;
  esac
done

[[ -n "$SUBCOMMAND" ]] || die "no subcommand; one of create, setup, run, logs, stop, delete (see --help)"
[[ -n "$NAME" ]] || die "no TPU name: pass --name=NAME or set TPU_NAME"
# GCP's rule for a TPU name; it also keeps the name safe in file names and remote commands.
[[ "$NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name=$NAME: a TPU name is lowercase letters, digits and -, starting with a letter"
# One spelling per workdir: gs://b//runs/r1/ is gs://b/runs/r1 (etils.epath, under jaxdl, reads
# both as one), so the check for a second job on it compares like with like.
if [[ "$WORKDIR" == gs://* ]]; then
  WORKDIR="gs://$(printf '%s' "${WORKDIR#gs://}" | tr -s /)"
  WORKDIR="${WORKDIR%/}"
fi
[[ -n "$ZONE" ]] || die "no zone: pass --zone=ZONE or set TPU_ZONE"
if [[ "$SUBCOMMAND" != run && ${#JAXDL_ARGS[@]} -gt 0 ]]; then
  die "$SUBCOMMAND takes no jaxdl arguments (got ${JAXDL_ARGS[0]})"
fi

# gcloud's common flags for one TPU VM.
TPU=(compute tpus tpu-vm)
WHERE=("--zone=$ZONE")
[[ -z "$PROJECT" ]] || WHERE+=("--project=$PROJECT")

# On the workers: the code, its virtual environment and the per-run logs live in $HOME.
REMOTE_SRC='~/jaxdl'
REMOTE_VENV='~/jaxdl-venv'
REMOTE_RUNS='~/jaxdl-runs'

ssh_all() {  # ssh_all WORKER COMMAND: one remote shell command on the given worker(s)
  do_cmd gcloud "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" "--worker=$1" "--command=$2"
}

run_name() {
  local name="${RUN_NAME:-${WORKDIR%/}}"
  name="${name##*/}"
  [[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] || die "run name '$name' must be letters, digits, . _ - (pass --run-name=NAME)"
  printf '%s' "$name"
}

case "$SUBCOMMAND" in
  create)
    cmd=(gcloud "${TPU[@]}" create "$NAME" "${WHERE[@]}" "--accelerator-type=$ACCELERATOR_TYPE"
         "--version=$VERSION")
    [[ "$SPOT" == 0 ]] || cmd+=(--spot)
    do_cmd "${cmd[@]}"
    ;;

  setup)
    # The working tree as the user sees it (git's tracked + untracked, minus ignored files).
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    # A file of this user's own, with an unpredictable name, removed however the script ends.
    if [[ "$DRY_RUN" == 1 ]]; then
      archive="${TMPDIR:-/tmp}/jaxdl-src-XXXXXX.tgz"
      echo "(cd $(quote "$repo") && git ls-files -z --cached --others --exclude-standard | tar --null -T - -czf $(quote "$archive"))"
    else
      archive="$(mktemp "${TMPDIR:-/tmp}/jaxdl-src-XXXXXX")" || die "cannot make a temporary file in ${TMPDIR:-/tmp}"
      trap 'rm -f "$archive"' EXIT
      (cd "$repo" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -czf "$archive")
    fi
    do_cmd gcloud "${TPU[@]}" scp "$archive" "$NAME:jaxdl-src.tgz" "${WHERE[@]}" --worker=all
    # TPU VM images ship Python 3.10; jaxdl needs >= 3.11, so uv fetches a 3.12. The install is
    # the tested set: constraints.txt pins every package to the newest set that passed CI.
    ssh_all all "set -e; rm -rf $REMOTE_SRC && mkdir -p $REMOTE_SRC && tar xzf ~/jaxdl-src.tgz -C $REMOTE_SRC && python3 -m pip install --user -q uv && ~/.local/bin/uv venv -q --allow-existing --python 3.12 $REMOTE_VENV && ~/.local/bin/uv pip install -q --python $REMOTE_VENV/bin/python -c $REMOTE_SRC/constraints.txt 'jax[tpu]' -e "$REMOTE_SRC[gcs]" && $REMOTE_VENV/bin/python -c 'import jax; print(jax.process_index(), jax.device_count(), jax.devices()[0].device_kind)'"
    ;;

  run)
    [[ -n "$WORKDIR" ]] || die "run needs --workdir=gs://BUCKET/PATH (or JAXDL_WORKDIR)"
    [[ "$WORKDIR" == gs://* ]] || die "--workdir=$WORKDIR: must be a gs:// path that every host can reach"
    [[ ${#JAXDL_ARGS[@]} -gt 0 ]] || die "run needs --config=FILE (e.g. --config=configs/mnist.py)"
    name="$(run_name)"
    log="$REMOTE_RUNS/$name.log"
    # The jaxdl command, each word quoted for the worker's shell; setsid gives it a process
    # group of its own (what `stop` signals) and nohup + redirections detach it from ssh.
    # Only the jaxdl command goes in the background (`a && b &` would background the whole
    # list, whose shell then holds ssh's output open and whose pid is not jaxdl's).
    [[ "$GRACE" =~ ^[0-9]+$ && "$GRACE" -ge 1 ]] || die "--grace=$GRACE: must be a whole number of seconds"
    # jaxdl's own deadline after SIGTERM is stop's wait: a job stuck on storage or in a
    # collective then ends by itself, saying where it waited, rather than by stop's SIGKILL.
    jaxdl="$REMOTE_VENV/bin/python $(quote_all -m jaxdl.main "--workdir=$WORKDIR" "--stop_timeout=$GRACE" "${JAXDL_ARGS[@]}")"
    # Refuse a second job under this run name or on this workdir (two jobs writing one
    # workdir corrupt each other's checkpoints and metrics), unless --force.
    check=""
    if [[ "$FORCE" == 0 ]]; then
      check="for f in $REMOTE_RUNS/*.workdir; do [ -e \"\$f\" ] || continue; other=\${f%.workdir}; pid=\$(cat \"\$other.pid\" 2>/dev/null); if [ -n \"\$pid\" ] && kill -0 -- -\$pid 2>/dev/null && { [ \"\$other\" = $REMOTE_RUNS/$name ] || [ \"\$(cat \"\$f\")\" = $(quote "$WORKDIR") ]; }; then echo \"worker \$(hostname): refused: run \$(basename \"\$other\") (pid \$pid) is running on \$(cat \"\$f\"); stop it first, or pass --force\" >&2; exit 3; fi; done; "
    fi
    ssh_all all "set -e; mkdir -p $REMOTE_RUNS; ${check}cd $REMOTE_SRC; printf '%s\n' $(quote "$WORKDIR") > $REMOTE_RUNS/$name.workdir; nohup setsid $jaxdl >> $log 2>&1 < /dev/null & echo \$! > $REMOTE_RUNS/$name.pid; echo \"worker \$(hostname): started pid \$(cat $REMOTE_RUNS/$name.pid), log $log\""
    ;;

  logs)
    name="$(run_name)"
    ssh_all "$WORKER" "tail -n 200 -F $REMOTE_RUNS/$name.log"
    ;;

  stop)
    name="$(run_name)"
    [[ "$GRACE" =~ ^[0-9]+$ ]] || die "--grace=$GRACE: must be a whole number of seconds"
    # SIGTERM, then wait: jaxdl saves the current step and exits 0 (a multi-host job agrees on
    # the step through JAX's preemption sync). SIGKILL only once the grace time has run out.
    log="$REMOTE_RUNS/$name.log"
    ssh_all all "pid=\$(cat $REMOTE_RUNS/$name.pid 2>/dev/null); from=\$(( \$( (wc -l < $log) 2>/dev/null || echo 0) + 1 )); if [ -n \"\$pid\" ] && kill -TERM -- -\$pid 2>/dev/null; then waited=0; while kill -0 -- -\$pid 2>/dev/null && [ \$waited -lt $GRACE ]; do sleep 1; waited=\$((waited + 1)); done; if kill -0 -- -\$pid 2>/dev/null; then kill -KILL -- -\$pid 2>/dev/null; echo \"worker \$(hostname): stopped \$pid: no exit within ${GRACE}s of SIGTERM, killed (it resumes from its previous checkpoint)\"; else saved=\$(tail -n +\$from $log 2>/dev/null | grep -o 'saved the checkpoint at step [0-9]*' | tail -n 1); echo \"worker \$(hostname): stopped \$pid after \${waited}s\${saved:+: \$saved}\"; fi; else echo \"worker \$(hostname): $name is not running\"; fi"
    ;;

  delete)
    do_cmd gcloud "${TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet
    ;;
esac
