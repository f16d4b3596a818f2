"""Hyper-parameter search: a train task with `hpTuning` runs as a study of trials.

A trainer action on such a task is one *study*; the executor that claims it runs this
controller instead of the task itself. The controller asks optuna for configurations, runs each
as a *trial* (one run of the task's command with the configuration handed over the two ways
Myelin does: argv `--config_id ID --budget B --NAME VALUE` and env `HPO_PARAMS`, base64 JSON
`{"config-id", "budget", "hpo-conf"}`, plus `LOSS_METRIC`), reads the trial's loss from the
metrics it reported, and tells optuna. The study's own lifecycle is the action's: Running when
it starts, Succeeded (with the best trial's version and metrics) or Failed once, when it ends,
so a `Lifecycle Succeeded` trigger on the task fires once per study, never per trial.

Optimisers (optuna samplers; the budget schedule is ours):
- RandomSearch: `numIteration` configurations from `RandomSampler`, each run at `maxBudget`
  (or with no budget when none is given);
- HyperBand: HpBandSter's schedule: `numIteration` successive-halving brackets over budgets
  minBudget..maxBudget (factor 3); each bracket samples its configurations at its smallest
  budget and promotes the best third to the next budget, up to maxBudget;
- BOHB: the same brackets, configurations from optuna's `TPESampler` (a model-based sampler
  fitted on the trials so far) instead of random sampling.
optuna's `HyperbandPruner` is not used: it prunes one long-running trial by its intermediate
reports, whereas a Myelin trial is a separate process run to completion at a given budget; a
promotion is a new run of the same configuration at a larger budget, which the schedule does.

Crash safety: the study's state lives on the bus. optuna keeps it in a `JournalStorage` whose
journal is one `ranvier_runs` key written with compare-and-set after every change, before the
controller acts on it; each trial run is claimed exactly once like any action (a KV create on
the claim of its own idempotency key, `<study key>/trial/<n>/<attempt>`), and its result is
recorded under that key before optuna is told. An executor that restarts mid-study resumes it
from the journal: configurations and slots already asked for are reused, finished trials are
read back, never run again, and a trial whose run was lost with the executor is run again as
a new attempt of the same configuration. So the study ends with exactly the trials planned.
A failed trial (a non-zero exit, no loss reported) is recorded with its reason and the study
goes on; the study fails only when no trial produced a loss.

The modules, one concern each:
- `params`: how a trial gets its configuration (argv, env), and which requests are studies;
- `plan`: the budget schedule, the search space, who is promoted (pure);
- `records`: the study and trial records people read from `ranvier_runs`;
- `journal`: optuna's journal on the bus;
- `trials`: running one trial exactly once and judging its result;
- `study`: the controller that drives optuna through the plan.
"""

from executors.hpo.errors import StudyError, StudyInterrupted
from executors.hpo.journal import BusJournal
from executors.hpo.params import HPO_PARAM, handover, is_study, trial_argv, trial_env
from executors.hpo.plan import Stage, defaults, distributions, pick, planned_trials, schedule
from executors.hpo.records import StudyRecord, TrialRecord, read_study, study_key
from executors.hpo.study import Study, StudyOutcome

__all__ = [
    "HPO_PARAM",
    "BusJournal",
    "Stage",
    "Study",
    "StudyError",
    "StudyInterrupted",
    "StudyOutcome",
    "StudyRecord",
    "TrialRecord",
    "defaults",
    "distributions",
    "handover",
    "is_study",
    "pick",
    "planned_trials",
    "read_study",
    "schedule",
    "study_key",
    "trial_argv",
    "trial_env",
]
