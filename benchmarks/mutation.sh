#!/usr/bin/env bash
# Mutation testing with cosmic-ray (the `dev` extra of pyproject.toml; not part of CI's default run).
#
#   benchmarks/mutation.sh [MODULE ...]       default: every module of the table below
#   e.g. nice -n 19 benchmarks/mutation.sh piad/model/weighting.py piad/run/checkpoint.py
#
# Each module is mutated in a throwaway copy of the working tree (cosmic-ray edits files in place), one mutant at a
# time, and only the test files that specify that module run against each mutant (pytest -x: the first failure
# kills it). A mutant that no test file kills "survives": kill it with a test, or, if it cannot change behaviour
# (an equivalent mutant), mark its line `# pragma: no mutate` with the reason and list it in tests/README.md.
#
# Writes benchmarks/measurements/mutation/<module>.txt (cr-report: every surviving mutant as a diff, then the
# totals) and prints one line per module: mutants, killed, survived, score. Run under `nice -n 19`.
# Environment: PYTHON (default .venv/bin/python, else python3), MUTATION_TIMEOUT (seconds per mutant's tests,
# default: the module's own value below), MUTATION_WORK (a folder kept after the run: a stopped run started again
# with the same folder resumes where it stopped, mutants already tested are not run again), MUTATION_TESTS (test
# files to use instead of the table's, for a cheaper partial run: say so wherever its score is quoted), MUTATION_JOBS
# (modules mutated at once, each in its own copy with one torch thread; default 1, 2 on an idle 2-core machine),
# MUTATION_SAMPLE (test a seeded sample of that many mutants per module instead of all: a score with an interval, for a
# run that fits a short budget; say so wherever it is quoted) and MUTATION_SEED (the sample's seed, default 0).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$repo/.venv/bin/python}
[ -x "$py" ] || py=$(command -v python3)
bin=$(dirname "$py")
for tool in cosmic-ray cr-report cr-filter-pragma; do
  if [ ! -x "$bin/$tool" ]; then
    echo "mutation.sh: $bin/$tool is missing; install the dev extra: pip install -e '.[dev]'" >&2
    exit 1
  fi
done

# module -> "timeout_seconds test files..." (the test files that specify the module; each must stay fast)
declare -A TESTS=(
  [piad/model/weighting.py]="120 tests/test_weighting.py"
  [piad/model/objective.py]="300 tests/test_adversarial.py tests/test_objective.py"
  [piad/model/networks.py]="300 tests/test_networks.py"
  [piad/model/perceptual.py]="300 tests/test_perceptual.py"
  [piad/model/vgg.py]="300 tests/test_vgg.py tests/test_perceptual.py tests/test_config.py"
  [piad/run/checkpoint.py]="600 tests/test_checkpoint.py tests/test_rundir.py tests/test_cli_faults.py tests/test_training.py tests/test_robustness.py"
  [piad/run/rundir.py]="300 tests/test_rundir.py tests/test_status.py tests/test_cli_faults.py"
  [piad/run/training.py]="600 tests/test_trainer_setup.py tests/test_objective.py tests/test_training.py"
  [piad/run/steps.py]="600 tests/test_steps.py tests/test_objective.py tests/test_training.py"
  [piad/run/fitloop.py]="600 tests/test_fitloop.py tests/test_training.py tests/test_robustness.py"
)
ORDER=(piad/model/weighting.py piad/model/objective.py piad/model/networks.py piad/model/perceptual.py
  piad/model/vgg.py piad/run/checkpoint.py piad/run/rundir.py piad/run/training.py piad/run/steps.py
  piad/run/fitloop.py)

modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=("${ORDER[@]}")
out_dir="$repo/benchmarks/measurements/mutation"
mkdir -p "$out_dir"
if [ -n "${MUTATION_WORK:-}" ]; then
  work=$MUTATION_WORK
  mkdir -p "$work"
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/piad-mutation.XXXXXX")
  trap 'rm -rf "$work"' EXIT
fi

for module in "${modules[@]}"; do  # refuse an unknown module before any work starts
  if [ -z "${TESTS[$module]:-}" ]; then echo "mutation.sh: no test files listed for $module" >&2; exit 1; fi
done

run_module() {
  local module=$1 spec timeout tests copy
  spec=${TESTS[$module]}
  read -r timeout tests <<<"$spec"
  tests=${MUTATION_TESTS:-$tests}
  timeout=${MUTATION_TIMEOUT:-$timeout}
  copy="$work/$(echo "$module" | tr / _)"
  if [ ! -f "$copy/session.sqlite" ]; then
    rm -rf "$copy"
    mkdir -p "$copy"
    (cd "$repo" && cp -r piad tests book _toc.yml pyproject.toml README.md "$copy"/)
  fi
  cat >"$copy/mutation.toml" <<EOF
[cosmic-ray]
module-path = "$module"
timeout = $timeout
excluded-modules = []
test-command = "$py -m pytest -x -q -p no:cacheprovider $tests"

[cosmic-ray.distributor]
name = "local"
EOF
  (
    cd "$copy"
    export PYTHONPATH="$copy" OMP_NUM_THREADS=1 PIAD_CACHE="$copy/.cache"
    export PIAD_ASSETS="${PIAD_ASSETS:-$(cd "$repo/.." && pwd)/shared/assets}"
    if [ ! -f session.sqlite ]; then
      # the unmutated module must pass its tests, or every mutant would count as killed
      if ! $py -m pytest -x -q -p no:cacheprovider $tests >baseline.log 2>&1; then
        echo "mutation.sh: the tests of $module fail without any mutation:" >&2
        tail -20 baseline.log >&2
        exit 1
      fi
      "$bin/cosmic-ray" init mutation.toml session.sqlite.new
      "$bin/cr-filter-pragma" session.sqlite.new # lines marked `# pragma: no mutate` (equivalent mutants): skipped
      # mutants inside annotations are equivalent by construction where the module defers them (`from __future__
      # import annotations`: never evaluated): skipped as such, not tested
      "$py" - "$module" <<'PY'
import ast
import sys

from cosmic_ray.work_db import use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult

tree = ast.parse(open(sys.argv[1]).read())
deferred = any(
    isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
    for n in tree.body
)
spans = []
for node in ast.walk(tree) if deferred else ():
    for ann in (
        [node.returns] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else
        [node.annotation] if isinstance(node, (ast.arg, ast.AnnAssign)) else []
    ):
        if ann is not None:
            spans.append(((ann.lineno, ann.col_offset), (ann.end_lineno, ann.end_col_offset)))
with use_db("session.sqlite.new") as db:
    done = {job_id for job_id, _ in db.results}
    inside = [
        i.job_id
        for i in db.work_items
        if i.job_id not in done
        and all(any(a <= tuple(m.start_pos) < b for a, b in spans) for m in i.mutations)
    ]
    db.set_multiple_results(inside, WorkResult(output="in an annotation", worker_outcome=WorkerOutcome.SKIPPED))
print(f"{len(inside)} mutants inside deferred annotations: skipped as equivalent")
PY
      if [ -n "${MUTATION_SAMPLE:-}" ]; then
        # a seeded sample of the remaining mutants; the others are marked "not in the sample". The order sampled from
        # is the mutants' place in the module (job ids are random at each init), so a seed always picks the same ones
        "$py" - "$MUTATION_SAMPLE" "${MUTATION_SEED:-0}" <<'PY'
import random
import sys

from cosmic_ray.work_db import use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult

n, seed = int(sys.argv[1]), int(sys.argv[2])
with use_db("session.sqlite.new") as db:
    done = {job_id for job_id, _ in db.results}
    items = sorted(
        (i for i in db.work_items if i.job_id not in done),
        key=lambda i: [(str(m.module_path), tuple(m.start_pos), tuple(m.end_pos), m.operator_name, m.occurrence)
                       for m in i.mutations],
    )
    keep = {i.job_id for i in random.Random(seed).sample(items, min(n, len(items)))}
    out = WorkResult(output="not in the sample", worker_outcome=WorkerOutcome.SKIPPED)
    db.set_multiple_results([i.job_id for i in items if i.job_id not in keep], out)
PY
      fi
      mv session.sqlite.new session.sqlite
    fi
    "$bin/cosmic-ray" exec mutation.toml session.sqlite
    "$bin/cr-report" --show-diff --surviving-only session.sqlite >report.txt || true
    "$py" - "$module" <<'PY' >>report.txt
import sqlite3, sys
db = sqlite3.connect("session.sqlite")
rows = db.execute("SELECT worker_outcome, test_outcome, COUNT(*) FROM work_results GROUP BY 1, 2").fetchall()
count = lambda pred: sum(c for w, t, c in rows if pred(str(w).upper(), str(t).upper()))
# a timeout counts as "killed" in cosmic-ray; here it is apart: a hang is a kill, but tests that only ran slower than
# the timeout (a busy machine) are not, so each timed-out mutant is reported (and must be judged) on its own
timeouts = [d for (d,) in db.execute("SELECT diff FROM work_results WHERE output = 'timeout'")]
for diff in timeouts:
    print(f"TIMED OUT (not counted as killed: a hang, or tests slower than the timeout?)\n{diff}\n============")
timed_out = len(timeouts)
killed = count(lambda w, t: t == "KILLED") - timed_out
survived = count(lambda w, t: t == "SURVIVED")
skipped = count(lambda w, t: w == "SKIPPED")
other = count(lambda w, t: True) - killed - survived - skipped - timed_out
pending = db.execute("SELECT COUNT(*) FROM work_items").fetchone()[0] - count(lambda w, t: True)
unsampled = db.execute("SELECT COUNT(*) FROM work_results WHERE output = 'not in the sample'").fetchone()[0]
annotated = db.execute("SELECT COUNT(*) FROM work_results WHERE output = 'in an annotation'").fetchone()[0]
score = 100 * killed / max(1, killed + survived)
line = (f"{sys.argv[1]}: {killed + survived} mutants tested, {killed} killed, {survived} survived, "
        f"{timed_out} timed out (apart, listed above), "
        f"{skipped - unsampled - annotated} skipped (pragma: no mutate), {annotated} in annotations (equivalent), "
        f"{other} incompetent, {pending} not run; score {score:.1f}%")
if unsampled:  # a sample's score is an estimate: its exact (Clopper-Pearson) 95% interval
    from scipy.stats import beta
    n = killed + survived
    low = beta.ppf(0.025, killed, survived + 1) if killed else 0.0
    high = beta.ppf(0.975, killed + 1, survived) if survived else 1.0
    line += f" (a seeded sample; {unsampled} not in it; 95% interval {100 * low:.1f}-{100 * high:.1f}%)"
print(line)
PY
  )
  cp "$copy/report.txt" "$out_dir/$(echo "$module" | tr / _).txt"
  tail -1 "$copy/report.txt"
  [ -n "${MUTATION_WORK:-}" ] || rm -rf "$copy"
}

# MUTATION_JOBS modules at a time, each in its own copy with one torch thread (default 1; 2 on an idle 2-core machine)
jobs_max=${MUTATION_JOBS:-1}
failed=0
for module in "${modules[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n || failed=1; done
  run_module "$module" &
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || failed=1; done
wait || failed=1
exit $failed
