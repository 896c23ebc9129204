"""The search and everything a user drives: run a search, read its results, draw its front, retrain winners.

From Python (nas/api.py, docs/notebook.md): `nas.search(budget="3.1M", ...)`, `nas.resume(run)`,
`nas.load_run(run)`, `nas.pareto(run)`, `nas.retrain(run, top=1)`. Commands live in `nas.commands` (one module
each, reached through `nas.cli`); nothing imports them.

The package's top level is the front door (the API, the commands, their flags, settings and config); the rooms
below hold the work by its job: `engine` (a search session, the searcher, the scheduler, the budget), `runs` (a
run's results and fronts), `runtime` (Ray, the trackers) and `winners` (retrain and export).
"""
from qkvnas_core.lazy import lazy_exports

API = ("search", "search_settings", "resume", "load_run", "pareto", "retrain", "SearchRun")

__getattr__, __all__ = lazy_exports(__name__, {
    **dict.fromkeys(API, "api"),
    "SearchSettings": "settings", "RetrainRequest": "settings", "run_search": "engine.search",
    "resume_search": "engine.search", "SearchResult": "engine.search", "BudgetedSearcher": "engine.searcher",
    "render_trials": "engine.searcher", "Budget": "engine.budget", "check_feasible": "engine.budget",
    "Run": "runs.results", "RunFolder": "runs.results", "read_run": "runs.results", "load_trials": "runs.results",
    "find_run": "runs.results", "pareto_front": "runs.pareto", "write_pareto": "runs.pareto",
    "plot_front": "runs.pareto", "Progress": "engine.progress", "retrain_run": "winners.retrain",
})
