#!/usr/bin/env bash
# Redeploy this repo to a TPU VM (all workers of a pod slice) and launch training there.
# Every step is one `gcloud compute tpus tpu-vm ssh --worker=all` call, so the same command runs on every worker; PJRT then finds ranks and the coordinator by itself.
set -euo pipefail

# ---- settings (override from the environment) --------------------------------
TPU_NAME="${TPU_NAME:-}"                       # required
ZONE="${ZONE:-}"                               # empty: gcloud's configured compute/zone
PROJECT="${PROJECT:-}"                         # empty: gcloud's configured project
SCRIPT_DPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_URL="${REPO_URL:-$(git -C "$SCRIPT_DPATH" remote get-url origin 2>/dev/null || true)}"
BRANCH="${BRANCH:-main}"
REMOTE_DIR="${REMOTE_DIR:-tpu-train}"         # on the workers; relative paths are relative to the remote home
VENV_DIR="${VENV_DIR:-.venv}"                  # on the workers; relative paths are relative to REMOTE_DIR
PYTHON="${PYTHON:-}"                           # interpreter that creates the venv (requirements.txt needs Python >= 3.11); empty: python3 if it is >= 3.11, else python3.11, installed with apt-get where missing
TORCH_XLA_TPU="${TORCH_XLA_TPU:-torch_xla[tpu]==2.9.0}"   # adds libtpu on top of requirements.txt
RECIPE="${RECIPE:-}"                           # optional: passed to main.py as --config RECIPE
LAUNCH_CMD="${LAUNCH_CMD:-python main.py}"     # `python` is the venv's python; words are split on spaces
LOG_FILE="${LOG_FILE:-train.log}"              # background launch: log and pid file live in REMOTE_DIR
PID_FILE="${PID_FILE:-train.pid}"
DRY_RUN="${DRY_RUN:-0}"
STEP="${STEP:-all}"
FOREGROUND="${FOREGROUND:-0}"

usage() {
  cat <<USAGE
Usage: $(basename "$0") [--step clone|venv|launch|all] [--dry-run] [--foreground] [-- MAIN_ARGS...]

Redeploy to a TPU VM and launch training on all workers, each step one
'gcloud compute tpus tpu-vm ssh \$TPU_NAME --worker=all' call:
  clone   reclone REPO_URL into REMOTE_DIR, or fetch and hard-reset it to origin/BRANCH
  venv    recreate VENV_DIR (python -m venv --clear), pip install -r requirements.txt and '$TORCH_XLA_TPU';
          the interpreter is PYTHON, or python3 if it is >= 3.11, else python3.11 (on a worker that
          lacks it, e.g. Ubuntu 22.04: sudo apt-get install -y python3.11 python3.11-venv)
  launch  PJRT_DEVICE=TPU $LAUNCH_CMD [--config RECIPE] MAIN_ARGS, in the background with nohup
          (log: REMOTE_DIR/LOG_FILE, pid: REMOTE_DIR/PID_FILE), or in the foreground with --foreground

Options:
  --step S        run only step S (default: all = clone, venv, launch)
  --dry-run       print every gcloud command instead of running it (same as DRY_RUN=1)
  --foreground    run training attached to this terminal instead of nohup in the background
  -h, --help      show this help
  -- MAIN_ARGS    everything after -- is passed to main.py

Environment (current value):
  TPU_NAME=$TPU_NAME ZONE=$ZONE PROJECT=$PROJECT
  REPO_URL=$REPO_URL BRANCH=$BRANCH
  REMOTE_DIR=$REMOTE_DIR VENV_DIR=$VENV_DIR PYTHON=${PYTHON:-(auto: python3 if >= 3.11, else python3.11)}
  RECIPE=$RECIPE LAUNCH_CMD=$LAUNCH_CMD LOG_FILE=$LOG_FILE PID_FILE=$PID_FILE

Example:
  TPU_NAME=my-v4-32 ZONE=us-central2-b $(basename "$0") -- --config train/recipes/convnext.yaml
  TPU_NAME=my-v4-32 ZONE=us-central2-b $(basename "$0") --step launch --foreground -- --epochs 1

Notes: the workers must be able to clone REPO_URL (use an https URL for a public repo). A background run refuses to start while PID_FILE names a live process; stop it first (kill \$(cat PID_FILE) on every worker).
USAGE
}

die() {
  echo "error: $*" >&2
  exit 2
}

MAIN_ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --foreground) FOREGROUND=1; shift ;;
    --step) [[ $# -ge 2 ]] || die "--step needs a value: clone, venv, launch or all"; STEP="$2"; shift 2 ;;
    --step=*) STEP="${1#--step=}"; shift ;;
    --) shift; MAIN_ARGS=("$@"); break ;;
    *) die "unknown option '$1' (see --help; arguments for main.py go after --)" ;;
  esac
done

case "$STEP" in
  clone | venv | launch | all) ;;
  *) die "--step must be clone, venv, launch or all, got '$STEP'" ;;
esac
[[ -n "$TPU_NAME" ]] || die "TPU_NAME is not set (e.g. TPU_NAME=my-v4-32 $(basename "$0") ...)"
if [[ "$STEP" == clone || "$STEP" == all ]]; then
  [[ -n "$REPO_URL" ]] || die "REPO_URL is not set and this checkout has no 'origin' remote"
fi

# Quote one word for a POSIX shell, readably: as is when safe, else in single quotes (an embedded ' becomes '\'').
q() {
  if [[ "$1" =~ ^[A-Za-z0-9_./=:@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Quote every argument and join them with spaces.
q_join() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(q "$word")"
  done
  printf '%s' "$out"
}

# Run (or, with DRY_RUN=1, print) one command on every worker.
on_all_workers() {
  local remote_cmd="$1"
  local argv=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=all)
  if [[ -n "$ZONE" ]]; then argv+=(--zone "$ZONE"); fi
  if [[ -n "$PROJECT" ]]; then argv+=(--project "$PROJECT"); fi
  argv+=(--command "$remote_cmd")
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "$(q_join "${argv[@]}")"
    return 0
  fi
  command -v gcloud >/dev/null || die "gcloud not found on PATH; install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) or use --dry-run"
  "${argv[@]}"
}

D="$(q "$REMOTE_DIR")"
V="$(q "$VENV_DIR")"

step_clone() {
  echo "== clone: $REPO_URL ($BRANCH) -> $REMOTE_DIR on all workers of $TPU_NAME" >&2
  # checkout -f -B points the local branch at origin/BRANCH even when BRANCH changed since the last deploy; reset --hard then discards any local edit. Ignored files such as the venv survive.
  on_all_workers "if [ -d $D/.git ]; then git -C $D fetch --prune origin && git -C $D checkout -f -B $(q "$BRANCH") $(q "origin/$BRANCH") && git -C $D reset --hard $(q "origin/$BRANCH"); else rm -rf $D && git clone --branch $(q "$BRANCH") $(q "$REPO_URL") $D; fi"
}

# The apt-get commands that give an Ubuntu 22.04 worker (Python 3.10) a Python 3.11 from Ubuntu's universe repo; python3.11-venv holds ensurepip, without which `python3.11 -m venv` fails. The lock timeout waits for unattended-upgrades, which often holds the dpkg lock right after a TPU VM boots.
APT_GET="apt-get -o DPkg::Lock::Timeout=300"
APT_INSTALL_PY311="sudo -n env DEBIAN_FRONTEND=noninteractive $APT_GET install -y -q python3.11 python3.11-venv"

# Remote shell code that sets $py to the interpreter for the venv: PYTHON when the user set it (checked to be >= 3.11), else python3 when it is >= 3.11, else python3.11, which is installed with apt-get when it (or its ensurepip) is missing.
get_remote_py_setup() {
  if [[ -n "$PYTHON" ]]; then
    local py_check="import sys; sys.version_info >= (3, 11) or sys.exit(\"error: requirements.txt needs Python >= 3.11, PYTHON=$PYTHON is \" + sys.version.split()[0] + \"; point PYTHON at Python 3.11 or newer, or unset it to let run_commands.sh pick or install python3.11\")"
    printf '%s' "py=$(q "$PYTHON") && \"\$py\" -c $(q "$py_check")"
    return
  fi
  local fail="echo \"error: \$(hostname): could not install Python 3.11 (python3 is \$(python3 -V 2>&1)); requirements.txt needs Python >= 3.11: run 'sudo apt-get install -y python3.11 python3.11-venv' on every worker (Ubuntu 22.04: universe repo), or install Python >= 3.11 with its venv module another way and rerun with PYTHON=/path/to/python3.X\" >&2; exit 1"
  printf '%s' "if python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then py=python3; else py=python3.11; if ! python3.11 -c 'import ensurepip' 2>/dev/null; then echo \"\$(hostname): python3 is \$(python3 -V 2>&1), requirements.txt needs >= 3.11: installing python3.11 python3.11-venv with apt-get\" >&2; { sudo -n $APT_GET update -q && $APT_INSTALL_PY311; } || { $fail; }; fi; fi"
}

step_venv() {
  echo "== venv: recreate $REMOTE_DIR/$VENV_DIR with ${PYTHON:-python3 if >= 3.11, else python3.11 (apt-get installed where missing)} and install requirements + $TORCH_XLA_TPU" >&2
  on_all_workers "cd $D && $(get_remote_py_setup) && \"\$py\" -m venv --clear $V && $V/bin/python -m pip install --upgrade pip && $V/bin/python -m pip install -r requirements.txt && $V/bin/python -m pip install $(q "$TORCH_XLA_TPU")"
}

step_launch() {
  local -a launch_words
  read -r -a launch_words <<<"$LAUNCH_CMD"
  [[ ${#launch_words[@]} -gt 0 ]] || die "LAUNCH_CMD is empty"
  # `python` means the venv's interpreter, so the run does not depend on an activated venv.
  if [[ "${launch_words[0]}" == python ]]; then launch_words[0]="$VENV_DIR/bin/python"; fi
  local -a cmd=("${launch_words[@]}")
  if [[ -n "$RECIPE" ]]; then cmd+=(--config "$RECIPE"); fi
  cmd+=("${MAIN_ARGS[@]+"${MAIN_ARGS[@]}"}")
  local cmd_q
  cmd_q="$(q_join "${cmd[@]}")"
  if [[ "$FOREGROUND" == 1 ]]; then
    echo "== launch (foreground) on all workers: PJRT_DEVICE=TPU ${cmd[*]}" >&2
    on_all_workers "cd $D && PJRT_DEVICE=TPU $cmd_q"
    return
  fi
  echo "== launch (background) on all workers: PJRT_DEVICE=TPU ${cmd[*]} > $REMOTE_DIR/$LOG_FILE" >&2
  local log pid
  log="$(q "$LOG_FILE")"
  pid="$(q "$PID_FILE")"
  # Not an && chain: a trailing & would put the whole chain in the background. stdin/stdout/stderr are all redirected so ssh can return while training runs on.
  on_all_workers "cd $D || exit 1; if [ -f $pid ] && kill -0 \"\$(cat $pid)\" 2>/dev/null; then echo \"error: \$(hostname): a run is still going (pid \$(cat $pid)); stop it first\" >&2; exit 1; fi; PJRT_DEVICE=TPU nohup $cmd_q > $log 2>&1 < /dev/null & echo \$! > $pid; echo \"\$(hostname): started pid \$!, log \$(pwd)/$LOG_FILE\""
}

# set -e stops at the first step whose gcloud call fails, with gcloud's exit code.
if [[ "$STEP" == clone || "$STEP" == all ]]; then step_clone; fi
if [[ "$STEP" == venv || "$STEP" == all ]]; then step_venv; fi
if [[ "$STEP" == launch || "$STEP" == all ]]; then step_launch; fi
