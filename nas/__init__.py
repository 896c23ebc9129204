"""The search and everything a user drives: run a search, read its results, draw its front, retrain winners.

Commands live in `nas.commands` (one module each, reached through `nas.cli`); nothing imports them.
"""
from qkvnas_core.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "SearchSettings": "search", "run_search": "search", "resume_search": "search",
    "SearchResult": "search", "BudgetedSearcher": "searcher", "render_trials": "searcher", "Budget": "budget",
    "check_feasible": "budget", "Run": "results", "read_run": "results", "load_trials": "results",
    "find_run": "results", "pareto_front": "pareto", "write_pareto": "pareto", "plot_front": "pareto",
    "Progress": "progress", "RetrainRequest": "retrain", "retrain_run": "retrain",
})
