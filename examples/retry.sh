#!/usr/bin/env bash
# Re-run a training command until it is done: again after a stop that committed a checkpoint (exit 75) and after
# the process was killed (exit 128+N: 137 for SIGKILL or the OOM killer, 143 for SIGTERM); stop on 0 (done), on 2
# (bad input or a refused resume: re-running cannot help) and on anything else (1 is an internal error: look first).
#
#   examples/retry.sh gptresume train examples/demo.yaml
#   examples/retry.sh python -m gptresume.launch --nproc_per_node 4 -m gptresume train examples/demo.yaml
#
# Under plain torchrun every failure, a stop included, exits 1; python -m gptresume.launch takes torchrun's options
# and exits with the workers' code, which this loop needs. A SIGTERM or SIGUSR1 sent to this script is passed on to
# the command and ends the loop once the command has saved and exited (a Ctrl-C reaches the command from the
# terminal directly, and also ends the loop). RETRY_MAX (default 100) bounds the runs, RETRY_DELAY (10 s) spaces them.
set -u
max_runs=${RETRY_MAX:-100}
delay=${RETRY_DELAY:-10}
stop=""
child=0

forward() {
    stop=$1
    if [ "$child" -ne 0 ]; then kill -s "$1" "$child" 2>/dev/null; fi
}
trap 'forward TERM' TERM
trap 'forward USR1' USR1
trap 'stop=INT' INT

for ((run = 1; run <= max_runs; run++)); do
    "$@" &
    child=$!
    wait "$child"
    code=$?
    while kill -0 "$child" 2>/dev/null; do  # wait was interrupted by a signal: the command is still saving
        wait "$child"
        code=$?
    done
    child=0
    if [ -n "$stop" ]; then
        echo "retry.sh: got SIG$stop; not running again (exit $code)" >&2
        exit "$code"
    fi
    if [ "$code" -eq 75 ] || { [ "$code" -gt 128 ] && [ "$code" -ne 130 ]; }; then
        echo "retry.sh: run $run exited $code; running the same command again in ${delay}s" >&2
        sleep "$delay" &
        wait $!
        [ -n "$stop" ] && exit "$code"
        continue
    fi
    [ "$code" -eq 0 ] && echo "retry.sh: done" >&2 || echo "retry.sh: exit $code; not retrying" >&2
    exit "$code"
done
echo "retry.sh: $max_runs runs, still not done" >&2
exit 75
