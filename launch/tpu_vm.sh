#!/usr/bin/env bash
# Train on a Cloud TPU VM slice, one host or many: create the TPU VM (or a queued resource)
# unless it exists, copy this checkout to every worker and install it there, then run the
# same `flax-lm train` on all workers at once with the output streamed here. On a TPU VM the
# processes find each other without flags (flax_lm.parallel.distributed); only process 0 prints and
# writes logs, and every process writes its part of each checkpoint, so give --workdir a
# path all workers share: a bucket mounted at the same path on each (gcsfuse BUCKET /mnt/BUCKET),
# or a shared disk. A gs:// URL is refused (the workdir is a local path).
#
# Usage: launch/tpu_vm.sh --name NAME --zone ZONE [--type ACCELERATOR] [--version RUNTIME]
#            [--project PROJECT] [--queued] [--spot] [--git URL [--git-ref REF]] [--delete] [--dry-run]
#            [-- TRAIN_ARGS: --config CONFIG --workdir /mnt/BUCKET/RUN [--config.key=value ...]]
#   --type     accelerator type (default v5litepod-8), e.g. v5litepod-16, v5p-32, v6e-16, v4-32
#   --version  TPU software version; by default the one Cloud TPU documents for the type
#   --queued   ask through a queued resource (waits until it is ACTIVE) instead of creating at once
#   --git      install `git clone URL` (at --git-ref) on the workers instead of a copy of this checkout
#   --delete   delete the TPU VM when the run ends, fails or is interrupted; with no TRAIN_ARGS,
#              only delete it
#   --dry-run  print every command (one a line, shell-quoted) and run none
# Example:
#   launch/tpu_vm.sh --name lm --zone us-west4-a --type v5litepod-16 --delete -- \
#       --config gpt2_small --workdir /mnt/my-bucket/gpt2_small --config.train.batch_size=256
set -euo pipefail

usage() { sed -n '/^# Usage:/,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
fail() { echo "launch/tpu_vm.sh: error: $*" >&2; exit 2; }

name="" zone="" type="v5litepod-8" version="" project="" queued=false spot=false git_url="" git_ref=""
delete=false dry_run=false
train_args=()
while (($#)); do
  case "$1" in
    --name) name=${2:?--name needs a value}; shift 2 ;;
    --zone) zone=${2:?--zone needs a value}; shift 2 ;;
    --type) type=${2:?--type needs a value}; shift 2 ;;
    --version) version=${2:?--version needs a value}; shift 2 ;;
    --project) project=${2:?--project needs a value}; shift 2 ;;
    --git) git_url=${2:?--git needs a URL}; shift 2 ;;
    --git-ref) git_ref=${2:?--git-ref needs a value}; shift 2 ;;
    --queued) queued=true; shift ;;
    --spot) spot=true; shift ;;
    --delete) delete=true; shift ;;
    --dry-run) dry_run=true; shift ;;
    -h|--help) usage ;;
    --) shift; train_args=("$@"); break ;;
    *) fail "unknown argument '$1' (flax-lm train arguments go after --)" ;;
  esac
done
[[ -n $name && -n $zone ]] || fail "--name and --zone are required (see --help)"
((${#train_args[@]})) || $delete || fail "nothing to do: give flax-lm train arguments after --, or --delete"
if [[ -z $version ]]; then
  case "$type" in  # https://cloud.google.com/tpu/docs/runtimes
    v6e-*) version=v2-alpha-tpuv6e ;;
    v5p-*) version=v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) version=v2-alpha-tpuv5-lite ;;
    *) version=tpu-ubuntu2204-base ;;
  esac
fi

gcloud_flags=(--zone="$zone")
[[ -n $project ]] && gcloud_flags+=(--project="$project")
tpu=(gcloud compute tpus tpu-vm)
queue=(gcloud compute tpus queued-resources)

# Runs a command, or with --dry-run prints it shell-quoted (the whole output is then the plan).
run() {
  if $dry_run; then printf '%q ' "$@" | sed 's/ $//'; echo; else "$@"; fi
}

ensure_tpu() {
  if ! $dry_run && "${tpu[@]}" describe "$name" "${gcloud_flags[@]}" >/dev/null 2>&1; then
    echo "reusing the TPU VM $name" >&2
    return
  fi
  $dry_run && run "${tpu[@]}" describe "$name" "${gcloud_flags[@]}"  # the reuse check (assumed absent)
  local extra=()
  $spot && extra+=(--spot)
  if $queued; then
    run "${queue[@]}" create "$name" --node-id="$name" --accelerator-type="$type" --runtime-version="$version" \
      "${extra[@]}" "${gcloud_flags[@]}"
    run "${queue[@]}" describe "$name" "${gcloud_flags[@]}" --format='value(state.state)'
    $dry_run && return
    local state
    while state=$("${queue[@]}" describe "$name" "${gcloud_flags[@]}" --format='value(state.state)'); do
      case "$state" in
        ACTIVE) return ;;
        FAILED|SUSPENDED) fail "queued resource $name is $state" ;;
        *) echo "queued resource $name: $state; waiting" >&2; sleep 30 ;;
      esac
    done
    fail "cannot describe queued resource $name"
  else
    run "${tpu[@]}" create "$name" --accelerator-type="$type" --version="$version" "${extra[@]}" "${gcloud_flags[@]}"
  fi
}

delete_tpu() {
  if $queued; then
    run "${queue[@]}" delete "$name" --force --quiet "${gcloud_flags[@]}"  # --force: its TPU VM too
  else
    run "${tpu[@]}" delete "$name" --quiet "${gcloud_flags[@]}"
  fi
}

on_all_workers() { run "${tpu[@]}" ssh "$name" --worker=all "${gcloud_flags[@]}" --command="$1"; }

install_everywhere() {
  # ~/flax_lm on each worker holds the source (so recipes in configs/ resolve by name), installed
  # editable with the tpu extra (jax[tpu]).
  local fetch
  if [[ -n $git_url ]]; then
    fetch="rm -rf \$HOME/flax_lm && git clone -q $(printf %q "$git_url") \$HOME/flax_lm"
    [[ -n $git_ref ]] && fetch+=" && git -C \$HOME/flax_lm checkout -q $(printf %q "$git_ref")"
  else
    local root package
    root=$(cd "$(dirname "$0")/.." && pwd)
    package=${TMPDIR:-/tmp}/flax_lm_$name.tgz
    # the checkout's files as git sees them: tracked and untracked, without ignored ones (runs, caches)
    if $dry_run; then
      echo "git -C $(printf %q "$root") ls-files -z --cached --others --exclude-standard |" \
           "tar --null --ignore-failed-read -czf $(printf %q "$package") -C $(printf %q "$root") -T -"
    else
      git -C "$root" ls-files -z --cached --others --exclude-standard \
        | tar --null --ignore-failed-read -czf "$package" -C "$root" -T -
    fi
    run "${tpu[@]}" scp "$package" "$name:flax_lm.tgz" --worker=all "${gcloud_flags[@]}"
    fetch="rm -rf \$HOME/flax_lm && mkdir -p \$HOME/flax_lm && tar -xzf \$HOME/flax_lm.tgz -C \$HOME/flax_lm"
  fi
  on_all_workers "$fetch && python3 -m pip install -q -e \"\$HOME/flax_lm[tpu]\""
}

if ((${#train_args[@]} == 0)); then
  delete_tpu
  exit 0
fi
$delete && trap delete_tpu EXIT
ensure_tpu
install_everywhere
# The same command on every worker; each also keeps its output in ~/flax_lm_train.log.
quoted=$(printf '%q ' "${train_args[@]}")
on_all_workers "cd \$HOME/flax_lm && python3 -m flax_lm.cli train ${quoted% } 2>&1 | tee -a \$HOME/flax_lm_train.log; \
exit \${PIPESTATUS[0]}"
