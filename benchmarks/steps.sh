# Sourced by the GPU evidence scripts: `step NAME CMD...` runs CMD once into $out/NAME.log and leaves
# $out/NAME.done or $out/NAME.failed, so a script polled across device calls (or restarted on a fresh
# machine with the same folder) never runs a finished or failed step again.
step() {
  local name=$1; shift
  [ -e "$out/$name.done" ] || [ -e "$out/$name.failed" ] && return 0
  echo "### $(date +%T) $name: $*" | tee -a "$out/steps.log"
  if "$@" > "$out/$name.log" 2>&1; then touch "$out/$name.done"; else echo "$name failed: rc=$?" | tee -a "$out/steps.log"; touch "$out/$name.failed"; fi
}

# Pins the calling (sub)shell, and so everything it starts, to the first (0) or second (1) half of the
# CPU cores: two jobs on two GPU pairs each get their own cores (CPU Adam under offload is CPU-bound).
pin_half() {
  local half=$(( $(nproc) / 2 ))
  pin_cores "$(( $1 * half ))-$(( ($1 + 1) * half - 1 ))"
}

# Pins the calling (sub)shell, and so everything it starts, to the CPU cores $1 (a taskset list, e.g. 32-47).
pin_cores() { command -v taskset > /dev/null && taskset -pc "$1" "$BASHPID" > /dev/null; }

# `verify_copy NAME RESULTS_FOLDER [GPU]`: `autofit verify --steps ${VERIFY_STEPS:-30}` as step NAME on a copy of a committed
# run dir ($out/NAME, so results/ stays as committed; copied again only until the step is done), on GPU
# (an outer CUDA_VISIBLE_DEVICES, which verify honours) or the GPUs the run was searched on.
verify_copy() {
  [ -e "$out/$1.done" ] || { rm -rf "$out/$1"; cp -r "results/$2/search" "$out/$1"; }
  if [ -n "${3:-}" ]; then CUDA_VISIBLE_DEVICES=$3 step "$1" python3 -m autofit verify "$out/$1" --steps "${VERIFY_STEPS:-30}"
  else step "$1" python3 -m autofit verify "$out/$1" --steps "${VERIFY_STEPS:-30}"; fi
}
