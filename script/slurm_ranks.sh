# Sourced by script/*.sbatch (not run on its own): start one MPI rank per task of the
# Slurm allocation and make preemption, scancel and the time limit lose nothing.
#
#   run_ranks plot_surface.py --x=-1:1:51 ...    # runs "$PYTHON $REPO/plot_surface.py --mpi ..."
#
# Settings (environment variables; defaults in brackets):
#   LAUNCHER [srun]    srun: Slurm starts the ranks (needs an MPI that speaks srun's PMI,
#                      see SRUN_MPI); mpiexec: your MPI's own launcher, run once inside the
#                      allocation (MPICH/Intel MPI/Open MPI all read the node list from Slurm)
#   SRUN_MPI [pmi2]    srun --mpi=<plugin>: pmi2 for MPICH, Intel MPI, MVAPICH and the pip
#                      'mpich' wheel; pmix for Open MPI 5 (and Open MPI 4 built with PMIx).
#                      'srun --mpi=list' shows what your cluster offers. With the wrong plugin
#                      (or none) every rank starts as its own 1-rank world.
#   CUDA [1]           1: --cuda, every rank uses its node-local GPU (local rank from Slurm or
#                      MPI, modulo the GPUs it can see); 0: CPU only
#   PYTHON [python]    the interpreter of the environment with torch and mpi4py
#   REPO [$SLURM_SUBMIT_DIR]   the loss-landscape checkout (submit from its root, or set it)
#   REQUEUE_AT_LIMIT [1]       after the time-limit warning: save, then requeue this job
#
# Signals -- what happens, and why the script is written this way:
#   * scancel, preemption, the time limit itself: Slurm sends SIGTERM to every process of
#     the job (the ranks included), waits KillWait seconds (often 30), then SIGKILL. The
#     ranks save what is done and exit with status 143. This shell traps TERM only so
#     that it stays alive (and keeps the job alive) until the ranks have saved.
#     With '#SBATCH --requeue', a preempted job goes back to the queue and resumes.
#   * '#SBATCH --signal=B:USR1@120': about two minutes before the time limit Slurm sends
#     USR1 to this shell only. It then sends TERM to the ranks (scancel --signal=TERM on
#     the job: every job step, not this shell; never 'kill -TERM' srun, which answers
#     with SIGKILL to its tasks), waits for them to save, and requeues the job (unless
#     REQUEUE_AT_LIMIT=0): the rerun computes only the missing points.
#   * 'scancel --signal=TERM <job>' by hand does the same as the warning, without the
#     requeue: the job ends (FAILED, exit 143) and a resubmission resumes.

run_ranks() {
  local script=$1 rc pid stop_reason=""
  shift
  local repo=${REPO:-${SLURM_SUBMIT_DIR:-.}}
  local python=${PYTHON:-python}
  local -a launch flags=(--mpi)
  case ${LAUNCHER:-srun} in
    srun)
      # srun does not inherit --cpus-per-task from the batch script (Slurm >= 22.05).
      # --kill-on-bad-exit=0: a rank that exits 143 after a signal must not make srun
      # SIGKILL rank 0 while it saves (a rank that fails aborts the whole run itself);
      # --wait=60: but a rank that dies without MPI noticing (e.g. in MPI_Init) must not
      # leave the others hanging until the time limit (the ranks of a healthy run end
      # within seconds of each other: they all meet at the end of the grid)
      launch=(srun --mpi="${SRUN_MPI:-pmi2}" --kill-on-bad-exit=0 --wait=60
              ${SLURM_CPUS_PER_TASK:+--cpus-per-task="$SLURM_CPUS_PER_TASK"}) ;;
    mpiexec)
      launch=(mpiexec -n "${SLURM_NTASKS:?not inside a Slurm allocation}") ;;
    *)
      echo "error: LAUNCHER must be srun or mpiexec (got '$LAUNCHER')" >&2
      return 2 ;;
  esac
  case ${CUDA:-1} in
    1) flags+=(--cuda) ;;
    0) ;;
    *) echo "error: CUDA must be 1 or 0 (got '$CUDA')" >&2; return 2 ;;
  esac
  # one torch thread per allocated core (a flag in "$@" comes later and wins)
  [ -n "${SLURM_CPUS_PER_TASK:-}" ] && flags+=(--threads "$SLURM_CPUS_PER_TASK")

  echo "$(date '+%F %T') job ${SLURM_JOB_ID:-?}${SLURM_ARRAY_TASK_ID:+ (array task $SLURM_ARRAY_TASK_ID)}," \
       "start #$(( ${SLURM_RESTART_COUNT:-0} + 1 )): ${SLURM_NTASKS:-?} ranks on ${SLURM_JOB_NODELIST:-?}," \
       "${LAUNCHER:-srun}: $script $*"

  trap 'stop_reason=TERM' TERM           # Slurm signals the ranks itself; just outlive them
  trap 'stop_reason=USR1; scancel --signal=TERM "$SLURM_JOB_ID"' USR1
  "${launch[@]}" "$python" "$repo/$script" "${flags[@]}" "$@" &
  pid=$!
  # 'wait' returns early when a trapped signal arrives: wait again until the ranks are gone
  while :; do
    wait "$pid"
    rc=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  trap - TERM USR1

  if [ "$stop_reason" = USR1 ] && [ "$rc" -ne 0 ] && [ "${REQUEUE_AT_LIMIT:-1}" = 1 ]; then
    echo "$(date '+%F %T') time limit near: progress saved; requeueing job $SLURM_JOB_ID to resume"
    scontrol requeue "$SLURM_JOB_ID"
  elif [ "$rc" -ne 0 ]; then
    echo "$(date '+%F %T') ranks ended with status $rc${stop_reason:+ after SIG$stop_reason};" \
         "resubmit the same job to resume"
  fi
  return "$rc"
}
